"""One delivery attempt against misbehaving servers: the total deadline and the read cap hold."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from app.webhooks.delivery import send


@contextmanager
def raw_server(serve: Callable[[socket.socket], None]) -> Iterator[str]:
    """A TCP server on loopback that hands each connection to `serve`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def loop() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_serve, args=(conn,), daemon=True).start()

    def _serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                serve(conn)
            except OSError:
                pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        stop.set()
        thread.join(2)
        listener.close()


BODY_BYTES = 64 * 1024 * 1024  # far more than loopback socket buffers hold


def trickle(conn: socket.socket) -> None:
    """Headers one byte at a time, each well within a per-read timeout, never ending."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for _ in range(200):
        conn.sendall(b"X")
        time.sleep(0.1)


def endless_body(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n")
    chunk = b"x" * 65536
    for _ in range(2000):
        conn.sendall(chunk)


def test_a_trickling_answer_ends_at_the_total_deadline() -> None:
    with raw_server(trickle) as url:
        started = time.monotonic()
        result = send(url, {"webhook-id": "msg_1"}, b"{}", timeout=1.0, allow_private=True)
        elapsed = time.monotonic() - started
    assert result.outcome == "timeout"
    assert elapsed < 2.0


def test_only_a_little_of_a_huge_answer_is_read() -> None:
    with raw_server(endless_body) as url:
        started = time.monotonic()
        result = send(url, {"webhook-id": "msg_1"}, b"{}", timeout=5.0, allow_private=True)
        elapsed = time.monotonic() - started
    assert result.outcome == "delivered" and result.http_status == 200
    assert elapsed < 2.0


def test_a_closed_port_is_a_connection_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    result = send(f"http://127.0.0.1:{port}/", {}, b"{}", timeout=2.0, allow_private=True)
    assert result.outcome == "connection_error" and result.http_status is None


def test_private_address_refused_before_connecting() -> None:
    result = send("https://127.0.0.1:9/", {}, b"{}", timeout=2.0, allow_private=False)
    assert result.outcome == "blocked_address"
    result = send("http://93.184.215.14/", {}, b"{}", timeout=2.0, allow_private=False)
    assert result.outcome == "blocked_address"  # http is not allowed either


def test_the_deadline_can_cut_a_request_off_mid_body() -> None:
    """A receiver slow to read holds the body write past the deadline: the sender hangs up and
    the receiver is left with fewer bytes than the content-length announced."""
    got: list[tuple[int, int]] = []

    def read_late(conn: socket.socket) -> None:
        time.sleep(1.0)  # the sender's buffers fill and its write waits for the deadline
        conn.settimeout(5)
        received = 0
        while chunk := conn.recv(1 << 20):
            received += len(chunk)
        got.append((received, BODY_BYTES))

    with raw_server(read_late) as url:
        started = time.monotonic()
        result = send(url, {"webhook-id": "msg_cut"}, b"x" * BODY_BYTES, 0.3, allow_private=True)
        elapsed = time.monotonic() - started
        stop_by = time.monotonic() + 10
        while not got and time.monotonic() < stop_by:
            time.sleep(0.02)
    assert result.outcome == "timeout" and elapsed < 1.0
    assert got and got[0][0] < got[0][1]


def test_the_test_receiver_sets_a_cut_off_request_aside() -> None:
    """Such a request is not a signature that failed: like any HTTP server, the verifying
    receiver of the tests never treats it as a message (the sender will send it again)."""
    from tests.support.webhook_receiver import running_receiver

    with running_receiver() as receiver:
        receiver.secrets.append("whsec_" + "A" * 32)
        port = int(receiver.url.split(":")[2].split("/")[0])
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(
                b"POST /hook HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                b'webhook-id: msg_cut\r\ncontent-length: 100\r\n\r\n{"type": "jo'
            )
        stop_by = time.monotonic() + 10
        while not receiver.incomplete and time.monotonic() < stop_by:
            time.sleep(0.02)
    assert receiver.incomplete == ["msg_cut"]
    assert receiver.unverified == [] and receiver.received == []
