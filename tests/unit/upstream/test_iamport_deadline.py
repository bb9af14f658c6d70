"""The client's total deadline, against a real local server that answers one byte at a time."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.upstream.iamport import CallRecord, IamportClient, NotSent, OutcomeUnknown

BODY = (
    b'{"code": 0, "message": null, "response": {"imp_uid": "imps_1", "status": "ready", '
    b'"amount": 1000, "cancel_amount": 0}}'
)
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(
    BODY
)


class Tokens:
    """A token source that never calls out."""

    def get(self, observer: Any = None) -> str:
        return "t"

    def invalidate(self, stale: str, observer: Any = None) -> str:
        return "t"


class Recorder:
    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def before_send(self, call: str) -> None:
        pass

    def after_call(self, record: CallRecord) -> None:
        self.records.append(record)


class Trickle(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str, interval: float) -> None:
        self.mode = mode
        self.interval = interval
        self.stop = threading.Event()
        self.connections = 0
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(socketserver.BaseRequestHandler):
    server: Trickle

    def handle(self) -> None:
        sock: socket.socket = self.request
        self.server.connections += 1
        data = b""
        while True:  # one request after another on the same connection (keep-alive)
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
            data = data.split(b"\r\n\r\n", 1)[1]  # GET and DELETE here carry no body
            if not self._answer(sock):
                return

    def _answer(self, sock: socket.socket) -> bool:
        mode, interval = self.server.mode, self.server.interval
        if mode == "fast":
            sock.sendall(HEAD + BODY)
            return True
        rest = BODY if mode == "body" else HEAD + BODY  # "head": even the status line trickles
        if mode == "body":
            sock.sendall(HEAD)
        try:
            for byte in rest:
                if self.server.stop.wait(interval):
                    return False
                sock.sendall(bytes([byte]))
        except OSError:
            return False  # the client hung up, as it should
        return True


@pytest.fixture
def trickle(request: pytest.FixtureRequest) -> Iterator[Trickle]:
    mode, interval = request.param
    server = Trickle(mode, interval)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


def client_for(server: Trickle, timeout: float) -> IamportClient:
    host, port = server.server_address[:2]
    return IamportClient(
        base_url=f"http://{host!s}:{port}",
        imp_key="k",
        imp_secret="s",
        timeout=timeout,
        tokens=Tokens(),
    )


@pytest.mark.parametrize("trickle", [("body", 0.3), ("head", 0.3), ("body", 0.8)], indirect=True)
def test_a_trickling_answer_is_cut_off_at_the_deadline(trickle: Trickle) -> None:
    client = client_for(trickle, timeout=1.0)
    rec = Recorder()
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown) as info:
        client.void_barcode("imps_1", rec)
    elapsed = time.monotonic() - started
    # Per-read timeouts alone would wait for the whole body (over 30 s at one byte a read).
    assert 0.95 <= elapsed < 1.5, elapsed  # ~1.0 s; slack for a busy machine
    assert info.value.outcome == "timeout" and rec.records[-1].outcome == "timeout"
    client.close()


@pytest.mark.parametrize("trickle", [("fast", 0.0)], indirect=True)
def test_a_prompt_answer_passes_and_the_connection_is_reused(trickle: Trickle) -> None:
    client = client_for(trickle, timeout=1.0)
    for _ in range(3):
        assert client.look_up("imps_1").status == "ready"
    assert trickle.connections == 1
    client.close()


def test_connection_refused_is_not_sent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = IamportClient(
        base_url=f"http://127.0.0.1:{port}",
        imp_key="k",
        imp_secret="s",
        timeout=1.0,
        tokens=Tokens(),
    )
    rec = Recorder()
    with pytest.raises(NotSent):
        client.void_barcode("imps_1", rec)
    assert rec.records[-1].outcome == "not_sent"
    client.close()


def test_the_deadline_holds_for_any_transport() -> None:
    """With a transport that is not ours (tests, proxies), the body loop still checks the time."""
    import httpx

    class Slow(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for byte in BODY:
                time.sleep(0.1)
                yield bytes([byte])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Slow())

    client = IamportClient(
        base_url="https://api.iamport.test",
        imp_key="k",
        imp_secret="s",
        timeout=0.5,
        tokens=Tokens(),
        transport=httpx.MockTransport(handler),
    )
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown) as info:
        client.look_up("imps_1")
    assert time.monotonic() - started < 0.7 and info.value.message == "deadline passed"
