"""The PortOne V2 client against every answer style PortOne (or a proxy in front of it) may give."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.upstream.accounts import Account, Secret
from app.upstream.contract import CallRecord, Gateway
from app.upstream.errors import (
    CancelRequested,
    GatewayError,
    InFlight,
    NotFound,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    Refused,
    ServerError,
    Unauthorized,
    Unavailable,
    Unsupported,
)
from app.upstream.portone import PortOneClient, classify, idempotency_key, to_payment
from app.upstream.portone.keys import MAX_LENGTH, MIN_LENGTH
from app.upstream.portone.schemas import V2Payment

BASE = "https://api.portone.test"
SECRET = "portone-SECRET-key-5678"
STORE = "store-0a1b2c"
PAYMENT_ID = "order-2024/0001"
PATH = "/payments/order-2024%2F0001"
JOB = "3f1c2a9e-0000-4000-8000-000000000001"


def payment_body(status: str = "PAID", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": status,
        "id": PAYMENT_ID,
        "transactionId": "tx-1",
        "storeId": STORE,
        "method": {"type": "PaymentMethodCard"},
        "channel": {"pgProvider": "TOSSPAYMENTS"},
        "orderName": "socks",
        "amount": {"total": 1000, "paid": 1000, "cancelled": 0, "taxFree": 0},
        "currency": "KRW",
        "requestedAt": "2024-05-01T00:00:00Z",
        "paidAt": "2024-05-01T00:01:00Z",
        "cancellations": [],
        "somethingNew": {"x": 1},
    }
    body.update(over)
    return body


def cancellation(status: str = "SUCCEEDED", amount: int = 1000, **over: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "status": status,
        "id": f"c-{status.lower()}",
        "pgCancellationId": "pg-c-1",
        "totalAmount": amount,
        "taxFreeAmount": 0,
        "vatAmount": 0,
        "reason": "out of stock",
        "requestedAt": "2024-05-02T00:00:00Z",
        "receiptUrl": "https://r/1",
    }
    if status == "SUCCEEDED":
        entry["cancelledAt"] = "2024-05-02T00:00:05Z"
    entry.update(over)
    return entry


def cancelled_body(amount: int = 1000) -> dict[str, Any]:
    return payment_body(
        "CANCELLED",
        amount={"total": 1000, "paid": 1000, "cancelled": amount},
        cancelledAt="2024-05-02T00:00:05Z",
        cancellations=[cancellation()],
    )


def error(status: int, kind: str, message: str = "no") -> httpx.Response:
    return httpx.Response(status, json={"type": kind, "message": message})


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.records: list[CallRecord] = []

    def before_send(self, call: str) -> None:
        self.events.append(f"before:{call}")

    def after_call(self, record: CallRecord) -> None:
        self.events.append(f"after:{record.call}:{record.outcome}")
        self.records.append(record)


def client(**kw: Any) -> PortOneClient:
    return PortOneClient(store_id=STORE, api_secret=SECRET, base_url=BASE + "/", timeout=3, **kw)


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def body_of(request: httpx.Request) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(request.content)
    return loaded


def assert_no_secret(*things: object) -> None:
    for thing in things:
        assert SECRET not in str(thing) and SECRET not in repr(thing)


# -- requests -------------------------------------------------------------------------------


def test_lookup_sends_the_secret_and_the_store(mock: respx.MockRouter) -> None:
    route = mock.get(PATH).respond(json=payment_body())
    payment = client().look_up(PAYMENT_ID)
    request = route.calls.last.request
    assert request.headers["authorization"] == f"PortOne {SECRET}"
    assert request.url.params["storeId"] == STORE
    assert "idempotency-key" not in request.headers  # a lookup changes nothing
    assert payment.imp_uid == PAYMENT_ID and payment.status == "paid"


def test_refund_sends_reason_store_and_the_balance_and_reads_back(mock: respx.MockRouter) -> None:
    cancel = mock.post(PATH + "/cancel").respond(json={"cancellation": cancellation()})
    mock.get(PATH).respond(json=cancelled_body())
    rec = Recorder()
    payment = client().refund(
        imp_uid=PAYMENT_ID, amount=None, reason="stock", checksum=1000.0, observer=rec, intent=JOB
    )
    request = cancel.calls.last.request
    assert body_of(request) == {
        "storeId": STORE,
        "reason": "stock",
        "currentCancellableAmount": 1000,
    }
    assert "amount" not in body_of(request)  # the whole balance
    key = request.headers["idempotency-key"]
    assert key == idempotency_key(JOB, "refund", PAYMENT_ID, balance=1000)
    assert payment.status == "cancelled" and payment.cancel_amount == 1000
    assert rec.events == ["before:refund", "after:refund:ok", "before:lookup", "after:lookup:ok"]


def test_a_partial_refund_sends_its_amount(mock: respx.MockRouter) -> None:
    cancel = mock.post(PATH + "/cancel").respond(json={"cancellation": cancellation(amount=300)})
    mock.get(PATH).respond(json=payment_body("PARTIAL_CANCELLED"))
    client().refund(imp_uid=PAYMENT_ID, amount=300.0, reason="r", checksum=1000, intent=JOB)
    sent = body_of(cancel.calls.last.request)
    assert sent["amount"] == 300 and sent["currentCancellableAmount"] == 1000


def test_a_refund_without_a_balance_is_refused_before_sending(mock: respx.MockRouter) -> None:
    route = mock.post(PATH + "/cancel")
    with pytest.raises(ValueError):
        client().refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=None)
    assert not route.called


def test_close_posts_the_store_with_a_key_and_reads_back(mock: respx.MockRouter) -> None:
    close = mock.post(PATH + "/virtual-account/close").respond(
        json={"closedAt": "2024-05-02T00:00:00Z"}
    )
    mock.get(PATH).respond(json=cancelled_body())
    rec = Recorder()
    payment = client().close_vbank(PAYMENT_ID, rec, intent=JOB)
    request = close.calls.last.request
    assert body_of(request) == {"storeId": STORE}
    assert request.headers["idempotency-key"] == idempotency_key(JOB, "close", PAYMENT_ID)
    assert payment.status == "cancelled"
    assert rec.events[:2] == ["before:cancel", "after:cancel:ok"]  # written ahead as a cancel


def test_the_same_intended_call_sends_the_same_key(mock: respx.MockRouter) -> None:
    cancel = mock.post(PATH + "/cancel").mock(
        side_effect=[
            httpx.TimeoutException("lost"),
            httpx.Response(200, json={"cancellation": cancellation()}),
        ]
    )
    mock.get(PATH).respond(json=cancelled_body())
    c = client()
    with pytest.raises(OutcomeUnknown):
        c.refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000, intent=JOB)
    c.refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000.0, intent=JOB)
    first, second = (call.request.headers["idempotency-key"] for call in cancel.calls)
    assert first == second


def test_without_an_intent_the_payment_id_keys_the_call(mock: respx.MockRouter) -> None:
    close = mock.post(PATH + "/virtual-account/close").respond(json={})
    mock.get(PATH).respond(json=cancelled_body())
    client().close_vbank(PAYMENT_ID)
    key = close.calls.last.request.headers["idempotency-key"]
    assert key == idempotency_key(PAYMENT_ID, "close", PAYMENT_ID)


def test_void_barcode_is_refused_for_good_without_a_call(mock: respx.MockRouter) -> None:
    rec = Recorder()
    with pytest.raises(Unsupported) as info:
        client().void_barcode(PAYMENT_ID, rec)
    assert isinstance(info.value, Refused)  # a caller that does not know it still looks up
    assert info.value.message is not None and "convenience-store barcode" in info.value.message
    assert not mock.calls and rec.events == []


def test_the_client_is_a_gateway() -> None:
    gateway: Gateway = client()
    assert gateway.clock_skew() is None  # nothing answered yet


def test_the_date_header_measures_the_clock_skew(mock: respx.MockRouter) -> None:
    ahead = datetime.now(UTC) + timedelta(seconds=30)
    mock.get(PATH).respond(
        json=payment_body(), headers={"Date": format_datetime(ahead, usegmt=True)}
    )
    c = client()
    c.look_up(PAYMENT_ID)
    skew = c.clock_skew()
    assert skew is not None and 28 <= skew <= 31


def test_for_account_takes_store_secret_and_base_url(mock: respx.MockRouter) -> None:
    account = Account(
        name="shop2",
        api="v2",
        base_url=BASE,
        max_rps=20,
        on_paid="hold",
        store_id=STORE,
        secrets={"api_secret": Secret("variable X", value=SecretStr(SECRET))},
    )
    route = mock.get(PATH).respond(json=payment_body())
    c = PortOneClient.for_account(account)
    c.look_up(PAYMENT_ID)
    assert route.calls.last.request.url.params["storeId"] == STORE
    assert_no_secret(c)
    v1 = Account(name="main", api="v1", base_url=BASE, max_rps=20, on_paid="hold")
    with pytest.raises(ValueError):
        PortOneClient.for_account(v1)


def test_the_default_timeout_is_a_minute() -> None:
    assert PortOneClient(store_id=STORE, api_secret=SECRET)._http.timeout == 60


# -- status mapping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v2", "status"),
    [
        ("PAID", "paid"),
        ("PARTIAL_CANCELLED", "paid"),
        ("CANCELLED", "cancelled"),
        ("FAILED", "failed"),
        ("READY", "pending"),
        ("PENDING", "pending"),
        ("SOMETHING_NEW", "SOMETHING_NEW"),
    ],
)
def test_status_mapping(v2: str, status: str) -> None:
    assert to_payment(V2Payment.model_validate(payment_body(v2))).status == status


def test_an_issued_virtual_account_is_ready_to_close() -> None:
    body = payment_body("VIRTUAL_ACCOUNT_ISSUED", method={"type": "PaymentMethodVirtualAccount"})
    payment = to_payment(V2Payment.model_validate(body))
    assert (payment.status, payment.pay_method) == ("ready", "vbank")
    bare = to_payment(V2Payment.model_validate(payment_body("VIRTUAL_ACCOUNT_ISSUED", method=None)))
    assert bare.pay_method == "vbank"


def test_a_partial_cancel_leaves_its_balance() -> None:
    body = payment_body(
        "PARTIAL_CANCELLED",
        amount={"total": 1000, "cancelled": 300},
        cancelledAt="2024-05-02T00:00:05Z",
        cancellations=[cancellation(amount=300), cancellation("FAILED", amount=700)],
    )
    payment = to_payment(V2Payment.model_validate(body))
    assert payment.status == "paid" and payment.balance == 700
    assert [e.amount for e in payment.cancel_history] == [300]  # a failed one never happened
    entry = payment.cancel_history[0]
    assert entry.pg_tid == "pg-c-1" and entry.cancellation_id == "c-succeeded"
    assert entry.receipt_url == "https://r/1" and entry.reason == "out of stock"
    assert entry.cancelled_at == datetime(2024, 5, 2, 0, 0, 5, tzinfo=UTC).timestamp()
    assert payment.cancel_reason == "out of stock" and not payment.cancel_pending


def test_a_cancelled_payment_maps_times_and_history() -> None:
    payment = to_payment(V2Payment.model_validate(cancelled_body()))
    assert payment.status == "cancelled" and payment.balance == 0
    assert payment.cancelled_time() == datetime(2024, 5, 2, 0, 0, 5, tzinfo=UTC).timestamp()
    assert payment.paid_at == datetime(2024, 5, 1, 0, 1, tzinfo=UTC).timestamp()
    assert payment.pg_provider == "TOSSPAYMENTS" and payment.pay_method == "card"


def test_a_requested_cancellation_is_pending_not_history() -> None:
    body = payment_body(cancellations=[cancellation("REQUESTED")])
    payment = to_payment(V2Payment.model_validate(body))
    assert payment.status == "paid" and payment.cancel_pending
    assert payment.cancel_history == [] and payment.balance == 1000


def test_a_success_without_its_own_time_is_dated_by_its_request() -> None:
    body = cancelled_body()
    body["cancellations"] = [cancellation(cancelledAt=None)]
    entry = to_payment(V2Payment.model_validate(body)).cancel_history[0]
    assert entry.cancelled_at == datetime(2024, 5, 2, tzinfo=UTC).timestamp()


def test_missing_optional_fields_do_not_break_the_mapping() -> None:
    payment = to_payment(V2Payment.model_validate({"status": "FAILED", "id": "p", "amount": None}))
    assert payment.status == "failed" and payment.amount == 0 and payment.cancel_history == []
    cancelled = {
        "status": "CANCELLED",
        "id": "p",
        "amount": {"total": 500},
        "cancellations": [cancellation(amount=500)],
    }
    assert to_payment(V2Payment.model_validate(cancelled)).cancel_amount == 500


def test_a_failed_payment_keeps_its_reason() -> None:
    body = payment_body("FAILED", failedAt="2024-05-01T00:02:00Z", failure={"reason": "declined"})
    payment = to_payment(V2Payment.model_validate(body))
    assert payment.fail_reason == "declined" and payment.failed_at > 0


# -- cancellations that are not done --------------------------------------------------------


def test_a_requested_cancellation_is_not_done(mock: respx.MockRouter) -> None:
    mock.post(PATH + "/cancel").respond(json={"cancellation": cancellation("REQUESTED")})
    lookup = mock.get(PATH)
    rec = Recorder()
    with pytest.raises(CancelRequested) as info:
        client().refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000, observer=rec)
    assert isinstance(info.value, OutcomeUnknown)  # waits to settle, never failed
    assert info.value.http_status == 200 and not lookup.called
    assert rec.records[-1].outcome == "requested"


def test_a_failed_cancellation_is_refused(mock: respx.MockRouter) -> None:
    mock.post(PATH + "/cancel").respond(json={"cancellation": cancellation("FAILED")})
    with pytest.raises(Refused):
        client().refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000)


def test_outstanding_idempotent_request_is_in_flight(mock: respx.MockRouter) -> None:
    mock.post(PATH + "/cancel").mock(return_value=error(409, "IDEMPOTENCY_OUTSTANDING_REQUEST"))
    rec = Recorder()
    with pytest.raises(InFlight) as info:
        client().refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000, observer=rec)
    assert isinstance(info.value, OutcomeUnknown) and not isinstance(info.value, Refused)
    assert rec.records[-1].outcome == "in_flight" and rec.records[-1].http_status == 409


@pytest.mark.parametrize(
    "kind",
    [
        "PAYMENT_ALREADY_CANCELLED",
        "PAYMENT_NOT_PAID",
        "CANCELLABLE_AMOUNT_CONSISTENCY_BROKEN",
        "MAX_CANCEL_COUNT_REACHED",
        "PAYMENT_NOT_WAITING_FOR_DEPOSIT",
    ],
)
def test_a_payment_that_cannot_be_cancelled_is_refused(mock: respx.MockRouter, kind: str) -> None:
    mock.post(PATH + "/virtual-account/close").mock(return_value=error(409, kind, "이미 취소"))
    rec = Recorder()
    with pytest.raises(Refused) as info:
        client().close_vbank(PAYMENT_ID, rec)
    assert type(info.value) is Refused and info.value.message == f"{kind}: 이미 취소"
    assert rec.records[-1].outcome == "refused" and rec.records[-1].message == f"{kind}: 이미 취소"


# -- errors ---------------------------------------------------------------------------------


def test_unknown_payment_is_not_found(mock: respx.MockRouter) -> None:
    mock.get(PATH).mock(return_value=error(404, "PAYMENT_NOT_FOUND"))
    with pytest.raises(NotFound):
        client().look_up(PAYMENT_ID)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_secret_is_unauthorized_and_not_repeated(
    mock: respx.MockRouter, status: int
) -> None:
    route = mock.get(PATH).mock(return_value=error(status, "UNAUTHORIZED", f"bad secret {SECRET}"))
    rec = Recorder()
    with pytest.raises(Unauthorized) as info:
        client().look_up(PAYMENT_ID, rec)
    assert route.call_count == 1
    assert_no_secret(info.value, info.value.message, rec.records)


def test_429_waits_with_retry_after(mock: respx.MockRouter) -> None:
    mock.get(PATH).respond(
        429, headers={"Retry-After": "7"}, json={"type": "TOO_MANY", "message": "slow"}
    )
    with pytest.raises(RateLimited) as info:
        client().look_up(PAYMENT_ID)
    assert info.value.retry_after == 7


@pytest.mark.parametrize(
    ("status", "answer", "expected"),
    [
        (500, {"type": "UNKNOWN", "message": "oops"}, ServerError),
        (502, {"type": "PG_PROVIDER", "message": "pg said no"}, ServerError),
        (502, None, Unavailable),
        (503, {"type": "UNKNOWN", "message": "x"}, Unavailable),
        (504, None, Unavailable),
        (500, None, Unavailable),
    ],
)
def test_5xx(
    mock: respx.MockRouter, status: int, answer: Any, expected: type[GatewayError]
) -> None:
    response = (
        httpx.Response(status, json=answer)
        if answer
        else httpx.Response(status, text="<html>bad gateway</html>")
    )
    mock.post(PATH + "/cancel").mock(return_value=response)
    with pytest.raises(expected) as info:
        client().refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000)
    assert type(info.value) is expected
    assert isinstance(info.value, Unavailable)  # ended or not, a lookup decides


def test_a_timeout_is_unknown_never_failed(mock: respx.MockRouter) -> None:
    mock.post(PATH + "/cancel").mock(side_effect=httpx.ReadTimeout("slow"))
    rec = Recorder()
    with pytest.raises(OutcomeUnknown):
        client().refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000, observer=rec)
    assert rec.records[-1].outcome == "timeout"


def test_no_connection_is_not_sent(mock: respx.MockRouter) -> None:
    mock.get(PATH).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(NotSent):
        client().look_up(PAYMENT_ID)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"", b"<html>hi</html>"])
def test_an_unreadable_success_is_unavailable(mock: respx.MockRouter, content: bytes) -> None:
    mock.get(PATH).respond(200, content=content)
    rec = Recorder()
    with pytest.raises(Unavailable):
        client().look_up(PAYMENT_ID, rec)
    assert rec.records[-1].outcome == "bad_response"


def test_a_malformed_payment_is_unavailable(mock: respx.MockRouter) -> None:
    mock.get(PATH).respond(json={"id": PAYMENT_ID})  # no status
    with pytest.raises(Unavailable) as info:
        client().look_up(PAYMENT_ID)
    assert info.value.message == "malformed response object"


def test_a_4xx_page_from_a_proxy_is_unavailable(mock: respx.MockRouter) -> None:
    mock.post(PATH + "/cancel").respond(404, text="<html>not here</html>")
    with pytest.raises(Unavailable):
        client().refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000)


def test_a_trickling_answer_is_cut_off_at_the_deadline() -> None:
    class Slow(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for byte in json.dumps(payment_body()).encode():
                time.sleep(0.05)
                yield bytes([byte])

    c = PortOneClient(
        store_id=STORE,
        api_secret=SECRET,
        base_url=BASE,
        timeout=0.4,
        transport=httpx.MockTransport(lambda request: httpx.Response(200, stream=Slow())),
    )
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown) as info:
        c.look_up(PAYMENT_ID)
    assert time.monotonic() - started < 0.7 and info.value.message == "deadline passed"


def test_the_observer_may_veto_a_change(mock: respx.MockRouter) -> None:
    class Veto(Recorder):
        def before_send(self, call: str) -> None:
            raise RuntimeError("lease gone")

    route = mock.post(PATH + "/cancel")
    with pytest.raises(RuntimeError):
        client().refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000, observer=Veto())
    assert not route.called


def test_no_secret_in_errors_records_or_reprs(mock: respx.MockRouter) -> None:
    mock.post(PATH + "/cancel").mock(return_value=error(400, "INVALID_REQUEST", f"echo {SECRET}"))
    rec = Recorder()
    c = client()
    with pytest.raises(Refused) as info:
        c.refund(imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000, observer=rec)
    assert info.value.message == "INVALID_REQUEST: echo ***"
    assert str(info.value).startswith("portone refund: refused")
    assert_no_secret(c, info.value, info.value.message, rec.records)


def test_classify_decides_by_status_and_type_only() -> None:
    assert classify("refund", 409, "IDEMPOTENCY_OUTSTANDING_REQUEST") == ("in_flight", InFlight)
    assert classify("refund", 409, "PAYMENT_ALREADY_CANCELLED") == ("refused", Refused)
    assert classify("lookup", 404, "STORE_NOT_FOUND") == ("refused", Refused)
    assert classify("lookup", 404, None) == ("bad_response", Unavailable)
    assert classify("refund", 408, None) == ("unavailable", Unavailable)


# -- idempotency keys -----------------------------------------------------------------------


def test_same_intent_same_key() -> None:
    one = idempotency_key(JOB, "refund", PAYMENT_ID, balance=1000)
    assert one == idempotency_key(JOB, "refund", PAYMENT_ID, balance=1000.0)
    assert one == idempotency_key(JOB, "refund", PAYMENT_ID, amount=None, balance=1000)


def test_a_different_call_is_a_different_key() -> None:
    keys = {
        idempotency_key(JOB, "close", PAYMENT_ID),
        idempotency_key(JOB, "refund", PAYMENT_ID, balance=1000),
        idempotency_key(JOB, "refund", PAYMENT_ID, balance=700),
        idempotency_key(JOB, "refund", PAYMENT_ID, amount=300, balance=1000),
        idempotency_key(JOB, "refund", "other-payment", balance=1000),
        idempotency_key("another-job", "refund", PAYMENT_ID, balance=1000),
    }
    assert len(keys) == 6


@pytest.mark.parametrize("intent", ["j", JOB, "x" * 1000, "한글-job"])
def test_a_key_is_an_rfc8941_string_of_allowed_length(intent: str) -> None:
    key = idempotency_key(intent, "refund", PAYMENT_ID, balance=1.5)
    assert key.startswith('"') and key.endswith('"')
    inner = key[1:-1]
    assert MIN_LENGTH <= len(inner) and len(key) <= MAX_LENGTH
    # sf-string characters, none that would need escaping
    assert all(0x20 <= ord(ch) <= 0x7E and ch not in '"\\' for ch in inner)


def test_a_key_refuses_what_it_cannot_name() -> None:
    with pytest.raises(ValueError):
        idempotency_key(JOB, 'refund"', PAYMENT_ID)
    with pytest.raises(ValueError):
        idempotency_key(JOB, "refund", PAYMENT_ID, balance=float("nan"))


def test_a_newest_cancellation_that_failed_is_told_apart() -> None:
    failed = cancellation("FAILED", requestedAt="2024-05-02T00:00:00Z")
    older = cancellation("SUCCEEDED", amount=300, requestedAt="2024-05-01T12:00:00Z")
    body = payment_body(
        "PARTIAL_CANCELLED", amount={"total": 1000, "cancelled": 300}, cancellations=[failed, older]
    )
    assert to_payment(V2Payment.model_validate(body)).cancel_failed
    later = cancellation("SUCCEEDED", amount=300, requestedAt="2024-05-03T00:00:00Z")
    body["cancellations"] = [failed, later]
    assert not to_payment(V2Payment.model_validate(body)).cancel_failed
    assert not to_payment(V2Payment.model_validate(payment_body())).cancel_failed


@pytest.mark.parametrize(
    "lookup",
    [
        httpx.Response(429, json={"type": "TOO_MANY_REQUESTS", "message": "slow down"}),
        httpx.Response(503, text="<html>bad gateway</html>"),
        httpx.ConnectError("refused"),
    ],
    ids=["429", "gateway-5xx", "no-connection"],
)
@pytest.mark.parametrize("call", ["close", "refund"])
def test_an_applied_call_whose_payment_cannot_be_read_back_has_ended(
    mock: respx.MockRouter, call: str, lookup: Any
) -> None:
    # The call was answered as done: it applied. A lookup failing after it must not say the
    # call never applied (429, not sent) or may still be running: it ended, a lookup decides.
    mock.post(PATH + "/virtual-account/close").respond(json={"closedAt": "2024-05-02T00:00:00Z"})
    mock.post(PATH + "/cancel").respond(json={"cancellation": cancellation()})
    route = mock.get(PATH)
    if isinstance(lookup, Exception):
        route.side_effect = lookup
    else:
        route.return_value = lookup
    rec = Recorder()
    portone = client()
    with pytest.raises(ServerError) as raised:
        if call == "close":
            portone.close_vbank(PAYMENT_ID, rec, intent=JOB)
        else:
            portone.refund(
                imp_uid=PAYMENT_ID, amount=None, reason="r", checksum=1000, observer=rec, intent=JOB
            )
    assert "read back" in str(raised.value.message)
    assert rec.events[1] in ("after:cancel:ok", "after:refund:ok")
