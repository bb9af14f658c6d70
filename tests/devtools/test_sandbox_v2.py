"""The sandbox's PortOne V2 over real HTTP, driven by the service's own PortOneClient where it
fits: lookups of every status, closes and refunds under Idempotency-Keys (replayed, still
outstanding, reused for another request, expired), REQUESTED cancellations that finish later,
stores that do not see each other's payments, and signed webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from app.upstream.errors import (
    CancelRequested,
    GatewayError,
    InFlight,
    NotFound,
    Refused,
    Unauthorized,
    Unsupported,
)
from app.upstream.portone import PortOneClient, idempotency_key
from devtools.embedded import free_port
from devtools.sandbox.control import SandboxControl, V2Control
from devtools.sandbox.v2_state import parse_store

STORE, SECRET = "store-a", "secret-a"
OTHER, OTHER_SECRET = "store-b", "secret-b"
WHSEC = "whsec_" + base64.b64encode(b"sandbox webhook secret 32 bytes!").decode()
KEY = '"stockout-test-0123456789abcdef"'


@pytest.fixture
def v2(sandbox: SandboxControl) -> V2Control:
    control = sandbox.v2
    control.add_store(STORE, SECRET)
    control.add_store(OTHER, OTHER_SECRET)
    return control


@pytest.fixture
def client(sandbox_url: str, v2: V2Control) -> Iterator[PortOneClient]:
    portone = PortOneClient(store_id=STORE, api_secret=SECRET, base_url=sandbox_url, timeout=10)
    yield portone
    portone.close()


@pytest.fixture
def http(sandbox_url: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"PortOne {SECRET}"}
    with httpx.Client(base_url=sandbox_url, timeout=10, headers=headers) as raw:
        yield raw


def cancel(http: httpx.Client, payment_id: str, key: str | None = KEY, **body: Any) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    fields = {"storeId": STORE, "reason": "out of stock", **body}
    return http.post(f"/payments/{payment_id}/cancel", json=fields, headers=headers)


def test_lookup_of_each_status(v2: V2Control, client: PortOneClient, http: httpx.Client) -> None:
    specs = [
        ("p-ready", "card", "READY", "pending"),
        ("p-pending", "card", "PENDING", "pending"),
        ("p-vbank", "virtual_account", "VIRTUAL_ACCOUNT_ISSUED", "ready"),
        ("p-paid", "card", "PAID", "paid"),
        ("p-cancelled", "card", "CANCELLED", "cancelled"),
        ("p-failed", "card", "FAILED", "failed"),
        ("p-cvs", "convenience_store", "PAID", "paid"),
    ]
    v2.create_payments(
        [{"payment_id": p, "store_id": STORE, "method": m, "status": s} for p, m, s, _ in specs]
    )
    v2.create_payment(payment_id="p-partial", store_id=STORE, amount=1000)
    v2.admin_cancel("p-partial", amount=300)
    for payment_id, _, status, mapped in [*specs, ("p-partial", "", "PARTIAL_CANCELLED", "paid")]:
        raw = http.get(f"/payments/{payment_id}", params={"storeId": STORE})
        assert raw.status_code == 200 and raw.json()["status"] == status
        assert client.look_up(payment_id).status == mapped
    partial = client.look_up("p-partial")
    assert partial.cancel_amount == 300 and partial.amount == 1000
    assert client.look_up("p-vbank").pay_method == "vbank"
    assert client.look_up("p-cvs").pay_method == "cvs"
    assert v2.tally("p-paid")["lookups"] == 2


def test_close_applies_once_and_a_repeat_gets_the_first_answer(
    v2: V2Control, client: PortOneClient
) -> None:
    v2.create_payment(payment_id="vbank-1", store_id=STORE, method="virtual_account")
    assert client.close_vbank("vbank-1", intent="job-1").status == "cancelled"
    assert client.close_vbank("vbank-1", intent="job-1").status == "cancelled"  # replayed
    with pytest.raises(Refused, match="PAYMENT_NOT_WAITING_FOR_DEPOSIT"):
        client.close_vbank("vbank-1", intent="job-2")  # a new call: refused, not applied
    tally = v2.tally("vbank-1")
    assert tally["closes_applied"] == 1 and tally["replays"] == 1 and tally["without_key"] == 0


def test_refund_repeated_with_its_key_is_replayed_and_applies_once(
    v2: V2Control, http: httpx.Client, client: PortOneClient
) -> None:
    v2.create_payment(payment_id="card-1", store_id=STORE, amount=5000)
    first = cancel(http, "card-1", currentCancellableAmount=5000)
    again = cancel(http, "card-1", currentCancellableAmount=5000)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert first.json()["cancellation"]["status"] == "SUCCEEDED"
    tally = v2.tally("card-1")
    assert tally["refunds_applied"] == 1 and tally["replays"] == 1
    assert v2.payment("card-1")["status"] == "CANCELLED"
    # The client's own refund of another payment: checked against the balance, applied once.
    v2.create_payment(payment_id="card-2", store_id=STORE, amount=5000)
    with pytest.raises(Refused, match="CANCELLABLE_AMOUNT_CONSISTENCY_BROKEN"):
        client.refund(imp_uid="card-2", amount=None, reason="r", checksum=4000, intent="j")
    paid = client.refund(imp_uid="card-2", amount=2000, reason="r", checksum=5000, intent="j")
    assert paid.status == "paid" and paid.cancel_amount == 2000
    assert v2.payment("card-2")["status"] == "PARTIAL_CANCELLED"


def test_a_key_still_being_processed_is_outstanding(
    v2: V2Control, http: httpx.Client, client: PortOneClient, sandbox_url: str
) -> None:
    v2.create_payment(payment_id="slow-1", store_id=STORE, amount=1000)
    v2.set_faults(STORE, late_apply_rate=1, late_apply_seconds=1.5, calls=["refund"])
    impatient = PortOneClient(store_id=STORE, api_secret=SECRET, base_url=sandbox_url, timeout=0.3)

    def refund(portone: PortOneClient) -> Any:
        return portone.refund(
            imp_uid="slow-1", amount=None, reason="r", checksum=1000, intent="job-slow"
        )

    with pytest.raises(GatewayError):
        refund(impatient)
    impatient.close()
    with pytest.raises(InFlight):
        refund(client)
    key = idempotency_key("job-slow", "refund", "slow-1", amount=None, balance=1000)
    busy = cancel(http, "slow-1", key=key, reason="r", currentCancellableAmount=1000)
    assert busy.status_code == 409
    assert busy.json()["type"] == "IDEMPOTENCY_OUTSTANDING_REQUEST"
    time.sleep(1.5)
    assert refund(client).status == "cancelled"
    tally = v2.tally("slow-1")
    assert tally["refunds_applied"] == 1 and tally["outstanding"] == 2 and tally["replays"] == 1


def test_a_key_reused_for_another_request_is_refused(v2: V2Control, http: httpx.Client) -> None:
    v2.create_payment(payment_id="card-3", store_id=STORE, amount=3000)
    assert cancel(http, "card-3", amount=1000).status_code == 200
    reused = cancel(http, "card-3", amount=2000)
    assert reused.status_code == 422 and reused.json()["type"] == "INVALID_REQUEST"
    assert cancel(http, "card-3", key=None, amount=500).status_code == 200
    tally = v2.tally("card-3")
    assert tally["key_reused"] == 1 and tally["without_key"] == 1
    assert tally["refunds_applied"] == 2
    bad = cancel(http, "card-3", key="short")
    assert bad.status_code == 400 and bad.json()["type"] == "INVALID_REQUEST"


def test_keys_expire(v2: V2Control, http: httpx.Client) -> None:
    v2.settings(idempotency_ttl_seconds=0.5)
    v2.create_payment(payment_id="card-4", store_id=STORE, amount=1000)
    assert cancel(http, "card-4").status_code == 200
    time.sleep(0.6)
    late = cancel(http, "card-4")  # a new request now: the payment is already cancelled
    assert late.status_code == 409 and late.json()["type"] == "PAYMENT_ALREADY_CANCELLED"
    assert v2.tally("card-4")["replays"] == 0


def test_requested_cancellation_succeeds_later(v2: V2Control, client: PortOneClient) -> None:
    v2.settings(requested_rate=1, requested_seconds=1.0)
    v2.create_payment(payment_id="card-5", store_id=STORE, amount=1000)
    with pytest.raises(CancelRequested):
        client.refund(imp_uid="card-5", amount=None, reason="r", checksum=1000, intent="j5")
    pending = client.look_up("card-5")
    assert pending.status == "paid" and pending.cancel_pending and pending.cancel_amount == 0
    truth = v2.payment("card-5")
    assert truth["cancellations"][0]["status"] == "REQUESTED" and truth["cancellableAmount"] == 0
    time.sleep(1.2)
    done = client.look_up("card-5")
    assert done.status == "cancelled" and not done.cancel_pending and done.cancel_amount == 1000
    assert v2.tally("card-5")["refunds_applied"] == 1


def test_requested_cancellation_can_fail(v2: V2Control, client: PortOneClient) -> None:
    v2.settings(requested_rate=1, requested_seconds=0.3, requested_outcome="FAILED")
    v2.create_payment(payment_id="card-6", store_id=STORE, amount=1000)
    with pytest.raises(CancelRequested):
        client.refund(imp_uid="card-6", amount=None, reason="r", checksum=1000, intent="j6")
    time.sleep(0.5)
    after = client.look_up("card-6")
    assert after.status == "paid" and not after.cancel_pending and after.cancel_amount == 0
    assert v2.payment("card-6")["cancellations"][0]["status"] == "FAILED"


def test_stores_do_not_see_each_others_payments(
    v2: V2Control, client: PortOneClient, http: httpx.Client, sandbox_url: str
) -> None:
    v2.create_payment(payment_id="theirs", store_id=OTHER, method="virtual_account")
    with pytest.raises(NotFound):
        client.look_up("theirs")
    with pytest.raises(NotFound):
        client.close_vbank("theirs")
    assert v2.tally("theirs")["closes_applied"] == 0
    forbidden = http.get("/payments/theirs", params={"storeId": OTHER})
    assert forbidden.status_code == 403 and forbidden.json()["type"] == "FORBIDDEN"
    stranger = PortOneClient(store_id=STORE, api_secret="nope", base_url=sandbox_url)
    with pytest.raises(Unauthorized):
        stranger.look_up("theirs")
    stranger.close()
    bare = httpx.get(f"{sandbox_url}/payments/theirs", params={"storeId": OTHER})
    assert bare.status_code == 401 and bare.json()["type"] == "UNAUTHORIZED"


def test_a_convenience_store_payment_cannot_be_voided(v2: V2Control, client: PortOneClient) -> None:
    v2.create_payment(
        payment_id="cvs-1", store_id=STORE, method="convenience_store", status="READY"
    )
    with pytest.raises(Unsupported):
        client.void_barcode("cvs-1")
    with pytest.raises(Refused, match="PAYMENT_NOT_WAITING_FOR_DEPOSIT"):
        client.close_vbank("cvs-1")
    assert v2.tally("cvs-1")["calls"] == 1


class _Receiver(BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.got.append(({k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []
    handler = type("Receiver", (_Receiver,), {"got": got})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()
    server.server_close()


def verifies(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """The Standard Webhooks check, written from the spec."""
    timestamp = int(headers["webhook-timestamp"])
    if abs(time.time() - timestamp) > tolerance:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    sent = [s.partition(",")[2] for s in headers["webhook-signature"].split()]
    return any(hmac.compare_digest(expected, s) for s in sent)


def wait_for(got: list[Any], count: int) -> None:
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(got) >= count


def test_signed_webhooks(
    v2: V2Control,
    client: PortOneClient,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, got = receiver
    v2.add_store(STORE, SECRET, webhook_url=url, webhook_secret=WHSEC)
    v2.create_payment(payment_id="vb-7", store_id=STORE, method="virtual_account")
    v2.pay("vb-7")
    wait_for(got, 1)
    headers, body = got[0]
    message = json.loads(body)
    assert message["type"] == "Transaction.Paid"
    assert message["data"]["paymentId"] == "vb-7" and message["data"]["storeId"] == STORE
    assert verifies(WHSEC, headers, body)
    standardwebhooks = pytest.importorskip("standardwebhooks")
    assert standardwebhooks.Webhook(WHSEC).verify(body, headers)["data"]["paymentId"] == "vb-7"
    # A refund through the API is a change too.
    client.refund(imp_uid="vb-7", amount=None, reason="r", checksum=1000, intent="j7")
    wait_for(got, 2)
    assert json.loads(got[1][1])["type"] == "Transaction.Cancelled"
    assert verifies(WHSEC, *got[1])

    forged = v2.send_webhook("vb-7", signature="v1," + base64.b64encode(b"x" * 32).decode())
    stale = v2.send_webhook("vb-7", timestamp_offset=-600)
    other = v2.send_webhook("vb-7", secret="whsec_" + base64.b64encode(b"another").decode())
    replay = v2.send_webhook("vb-7", webhook_id=got[0][0]["webhook-id"])
    assert all(e["status_code"] == 200 for e in (forged, stale, other, replay))
    wait_for(got, 6)
    by_id = {e["webhook_id"]: e for e in (forged, stale, other)}
    for headers, body in got[2:]:
        entry = by_id.get(headers["webhook-id"])
        if entry is None:  # the replay: same id, a fresh and valid signature
            assert headers["webhook-id"] == got[0][0]["webhook-id"]
            assert verifies(WHSEC, headers, body)
            continue
        assert not verifies(WHSEC, headers, body)
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(WHSEC).verify(body, headers)


def test_the_cli_form_of_a_store() -> None:
    store = parse_store("store-x:se:cret")
    assert (store.store_id, store.api_secret) == ("store-x", "se:cret")
    assert "se:cret" not in repr(store)
    with pytest.raises(ValueError):
        parse_store("no-secret")


def test_an_answer_lost_after_applying_is_settled_by_its_key(
    v2: V2Control, client: PortOneClient
) -> None:
    v2.create_payment(payment_id="lost-1", store_id=STORE, amount=1000)
    v2.set_faults(STORE, drop_after_rate=1, calls=["refund"])
    with pytest.raises(GatewayError):
        client.refund(imp_uid="lost-1", amount=None, reason="r", checksum=1000, intent="j8")
    assert v2.payment("lost-1")["status"] == "CANCELLED"
    v2.clear_faults(STORE)
    paid_back = client.refund(imp_uid="lost-1", amount=None, reason="r", checksum=1000, intent="j8")
    assert paid_back.status == "cancelled"
    tally = v2.tally("lost-1")
    assert tally["refunds_applied"] == 1 and tally["replays"] == 1


def test_the_call_log_keeps_each_mutating_call_and_its_key_as_sent(
    v2: V2Control, http: httpx.Client
) -> None:
    v2.create_payment(payment_id="p-log", store_id=STORE, method="card", status="PAID")
    v2.set_faults(STORE, calls=["refund"], rate_429=1)  # refused in front: still logged
    assert cancel(http, "p-log", amount=500).status_code == 429
    v2.clear_faults(STORE)
    assert cancel(http, "p-log", amount=500).status_code == 200
    assert cancel(http, "p-log", key=None, amount=200).status_code == 200
    assert cancel(http, "p-log", amount=100).status_code == 422  # the key, another request
    http.get("/payments/p-log", params={"storeId": STORE})  # a lookup is not logged
    log = v2.calls()
    key = KEY.strip('"')
    assert [c["key"] for c in log] == [key, key, None, key]
    assert {c["payment_id"] for c in log} == {"p-log"} and {c["store_id"] for c in log} == {STORE}
    assert log[0]["method"] == "POST" and log[0]["path"] == "/payments/p-log/cancel"
    prints = [c["fingerprint"] for c in log]
    assert prints[0] == prints[1] and len(set(prints[1:])) == 3
    assert [c["seq"] for c in v2.calls(since=3)] == [4]
    assert v2.stats()["faults_injected"] == {"429": 1}
