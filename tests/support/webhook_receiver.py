"""A real HTTP receiver of webhooks that verifies every message with `standardwebhooks`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    webhook_id: str
    timestamp: str
    signatures: list[str]
    body: dict[str, Any]
    verified_by: list[str]  # which known secrets verify one of the signatures


# What to answer: (status, seconds to wait first, extra headers); decided per request.
Behaviour = Callable[["Receiver", str, int], tuple[int, float, dict[str, str]]]


def always_ok(_: Receiver, __: str, ___: int) -> tuple[int, float, dict[str, str]]:
    return 204, 0.0, {}


@dataclass
class Receiver:
    url: str = ""
    secrets: list[str] = field(default_factory=list)
    behaviour: Behaviour = always_ok
    received: list[Received] = field(default_factory=list)  # every verified request
    unverified: list[str] = field(default_factory=list)  # anything that failed verification
    # Requests whose body ended before its content-length: the sender hung up mid-request (its
    # deadline passed, or it was killed). A server never hands such a request to its app.
    incomplete: list[str] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)  # requests per path
    seen: dict[str, int] = field(default_factory=dict)  # requests per webhook-id
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> dict[str, Received]:
        """The last verified copy of each webhook-id answered with a 2xx."""
        with self.lock:
            return {r.webhook_id: r for r in self.received}

    def types(self) -> list[str]:
        with self.lock:
            return [r.body["type"] for r in self.received]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            data = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            webhook_id = headers.get("webhook-id", "")
            if len(data) < length:
                with receiver.lock:
                    receiver.incomplete.append(webhook_id)
                self.close_connection = True
                return
            raw = data.decode()
            with receiver.lock:
                receiver.in_flight += 1
                receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                receiver.hits[self.path] = receiver.hits.get(self.path, 0) + 1
                n = receiver.seen[webhook_id] = receiver.seen.get(webhook_id, 0) + 1
                secrets = list(receiver.secrets)
            status, delay, extra = receiver.behaviour(receiver, webhook_id, n)
            verified_by = []
            for secret in secrets:
                try:
                    Webhook(secret).verify(raw, headers)
                    verified_by.append(secret)
                except WebhookVerificationError:
                    pass
            if delay:
                time.sleep(delay)
            with receiver.lock:
                receiver.in_flight -= 1
                if not verified_by or headers.get("content-type") != "application/json":
                    receiver.unverified.append(webhook_id)
                elif 200 <= status < 300:
                    receiver.received.append(
                        Received(
                            self.path,
                            webhook_id,
                            headers["webhook-timestamp"],
                            headers["webhook-signature"].split(" "),
                            json.loads(raw),
                            verified_by,
                        )
                    )
            # One request per connection, as the sender makes them.
            self.close_connection = True
            try:
                self.send_response(status)
                self.send_header("connection", "close")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the sender hung up (it timed out): that is the point of a slow answer

    return Handler


@contextmanager
def running_receiver(behaviour: Behaviour = always_ok) -> Iterator[Receiver]:
    """A receiver on a free loopback port, stopped on exit."""
    receiver = Receiver(behaviour=behaviour)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
