"""The iamport client against every answer style iamport (or a proxy in front of it) may give."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from app.upstream.iamport import (
    CallRecord,
    GatewayError,
    IamportClient,
    LimiterBusy,
    NotFound,
    NotSent,
    OutcomeUnknown,
    Payment,
    RateLimited,
    Refused,
    ServerError,
    TokenProvider,
    Unauthorized,
    Unavailable,
)
from app.upstream.iamport.client import parse_retry_after

KEY = "imp-key-SECRET-1234"
SECRET = "imp-secret-SECRET-5678"
IMP_UID = "imps_410124208172"

Handler = Callable[[httpx.Request], httpx.Response]


def payment_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "imp_uid": IMP_UID,
        "merchant_uid": "order-1",
        "amount": 1000,
        "cancel_amount": 0,
        "currency": "KRW",
        "status": "ready",
        "started_at": 1700000000,
        "paid_at": 0,
        "failed_at": 0,
        "cancelled_at": 0,
        "cancel_history": [],
    }
    body.update(over)
    return body


def cancelled_body() -> dict[str, Any]:
    entry = {
        "pg_tid": "tid-1",
        "amount": 1000,
        "cancelled_at": 1700000100,
        "reason": "stock",
        "receipt_url": "https://r/1",
        "cancellation_id": "c1",
    }
    return payment_body(
        status="cancelled", cancel_amount=1000, cancelled_at=1700000100, cancel_history=[entry]
    )


def ok(response: Any) -> httpx.Response:
    return httpx.Response(200, json={"code": 0, "message": None, "response": response})


class Upstream:
    """A scripted iamport: getToken hands out t1, t2, ...; other routes answer from a queue."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.token_calls = 0
        self.token_answer: httpx.Response | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/users/getToken":
            self.token_calls += 1
            if self.token_answer is not None:
                return self.token_answer
            return ok(
                {"access_token": f"t{self.token_calls}", "now": 1000, "expired_at": 1000 + 1800}
            )
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.records: list[CallRecord] = []

    def before_send(self, call: str) -> None:
        self.events.append(("before", call))

    def after_call(self, record: CallRecord) -> None:
        self.events.append(("after", f"{record.call}:{record.outcome}"))
        self.records.append(record)


def make_client(upstream: Upstream, **kw: Any) -> IamportClient:
    client: IamportClient | None = None

    def fetch(observer: Any) -> Any:
        assert client is not None
        return client.fetch_token(observer)

    client = IamportClient(
        base_url="https://api.iamport.test/",
        imp_key=KEY,
        imp_secret=SECRET,
        timeout=3,
        tokens=TokenProvider(None, fetch, "unit"),
        limiter=kw.pop("limiter", None),
        transport=httpx.MockTransport(upstream),
        **kw,
    )
    return client


# -- success --------------------------------------------------------------------------------


def test_lookup_parses_payment_and_sends_bearer_token() -> None:
    up = Upstream(ok(payment_body(unknown_field={"x": 1}, pay_method=None)))
    payment = make_client(up).look_up(IMP_UID)
    assert payment.status == "ready" and payment.amount == 1000 and payment.cancel_history == []
    req = up.requests[0]
    assert req.method == "GET" and req.url.path == f"/payments/{IMP_UID}"
    assert req.headers["authorization"] == "Bearer t1"
    assert "include_sandbox" not in req.url.params


def test_a_tier_is_sent_on_every_call_get_token_included() -> None:
    seen: list[httpx.Request] = []
    up = Upstream(ok(payment_body()))

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return up(request)

    client = make_client(up, tier="A01")
    client._http._transport = httpx.MockTransport(handler)
    client.look_up(IMP_UID)
    assert [r.url.path for r in seen] == ["/users/getToken", f"/payments/{IMP_UID}"]
    assert all(r.headers["tier"] == "A01" for r in seen)
    assert seen[1].headers["authorization"] == "Bearer t1"


def test_no_tier_no_tier_header() -> None:
    up = Upstream(ok(payment_body()))
    make_client(up).look_up(IMP_UID)
    assert "tier" not in up.requests[0].headers


def test_lookup_include_sandbox_and_path_is_encoded() -> None:
    up = Upstream(ok(payment_body()))
    make_client(up, include_sandbox=True).look_up("a/b?c")
    req = up.requests[0]
    assert req.url.raw_path.startswith(b"/payments/a%2Fb%3Fc?")
    assert req.url.params["include_sandbox"] == "true"


def test_cancel_success_returns_cancelled_payment() -> None:
    up = Upstream(ok(cancelled_body()))
    payment = make_client(up).void_barcode(IMP_UID)
    assert up.requests[0].method == "DELETE" and up.requests[0].url.path == f"/cvs/{IMP_UID}"
    last = payment.last_cancel()
    assert payment.status == "cancelled" and last is not None and last.pg_tid == "tid-1"


def test_cancel_success_without_payment_looks_it_up() -> None:
    up = Upstream(ok(None), ok(cancelled_body()))
    payment = make_client(up).void_barcode(IMP_UID)
    assert [r.method for r in up.requests] == ["DELETE", "GET"]
    assert payment.status == "cancelled"


def test_payment_tolerates_nulls_and_missing_optional_fields() -> None:
    up = Upstream(
        ok(
            {
                "imp_uid": IMP_UID,
                "status": "paid",
                "amount": 500,
                "cancel_history": None,
                "paid_at": None,
                "currency": None,
                "brand_new_field": [1, 2],
            }
        )
    )
    payment = make_client(up).look_up(IMP_UID)
    assert payment.cancel_history == [] and payment.paid_at == 0 and payment.last_cancel() is None


def test_last_cancel_is_the_newest_entry() -> None:
    p = Payment.model_validate(
        payment_body(
            cancel_history=[
                {"pg_tid": "b", "amount": 1, "cancelled_at": 20},
                {"pg_tid": "a", "amount": 1, "cancelled_at": 10},
            ]
        )
    )
    last = p.last_cancel()
    assert last is not None and last.pg_tid == "b"


def test_issue_and_refund_send_only_given_fields() -> None:
    up = Upstream(ok(payment_body()), ok(cancelled_body()))
    client = make_client(up)
    client.issue_cvs(
        merchant_uid="order-1", amount=1000, channel_key="ch", notice_url=None, name="thing"
    )
    client.refund(imp_uid=IMP_UID, amount=None, reason="stock", checksum=1000.0)
    issue, refund = (json.loads(r.content) for r in up.requests)
    assert issue == {
        "merchant_uid": "order-1",
        "amount": 1000,
        "channel_key": "ch",
        "name": "thing",
    }
    assert refund == {"imp_uid": IMP_UID, "reason": "stock", "checksum": 1000}
    assert [r.url.path for r in up.requests] == ["/cvs", "/payments/cancel"]


def test_refund_without_checksum_sends_nothing() -> None:
    up = Upstream()
    with pytest.raises(ValueError, match="checksum"):
        make_client(up).refund(imp_uid=IMP_UID, amount=None, reason="stock", checksum=None)
    assert up.requests == [] and up.token_calls == 0


def test_refund_refused_with_code() -> None:
    rec = Recorder()
    body = {"code": 1, "message": "checksum mismatch", "response": None}
    up = Upstream(httpx.Response(200, json=body))
    with pytest.raises(Refused) as info:
        make_client(up).refund(imp_uid=IMP_UID, amount=None, reason="r", checksum=500, observer=rec)
    assert (info.value.http_status, info.value.code, info.value.call) == (200, 1, "refund")
    assert rec.events[-2:] == [("before", "refund"), ("after", "refund:refused")]


def test_cancel_vbank() -> None:
    rec = Recorder()
    up = Upstream(ok(cancelled_body()), httpx.Response(400, json={"code": -1, "response": None}))
    client = make_client(up)
    payment = client.close_vbank(IMP_UID, rec)
    assert payment.status == "cancelled"
    assert (up.requests[0].method, up.requests[0].url.path) == ("DELETE", f"/vbanks/{IMP_UID}")
    with pytest.raises(Refused):
        client.close_vbank(IMP_UID, rec)
    assert [r.call for r in rec.records] == ["token", "cancel", "cancel"]
    assert [r.outcome for r in rec.records] == ["ok", "ok", "refused"]


# -- refusals and lookups that find nothing -----------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"code": 1, "message": "이미 취소된 거래건입니다.", "response": None}),
        (200, {"code": -1, "message": "not ready", "response": payment_body(status="paid")}),
        (400, {"code": -1, "message": "not in ready state", "response": None}),
        (404, {"code": -1, "message": "존재하지 않는 결제정보입니다.", "response": None}),
        (409, {"code": -1, "message": "conflict", "response": None}),
    ],
)
def test_cancel_refusals(status: int, body: dict[str, Any]) -> None:
    rec = Recorder()
    up = Upstream(httpx.Response(status, json=body))
    with pytest.raises(Refused) as info:
        make_client(up).void_barcode(IMP_UID, rec)
    assert (info.value.http_status, info.value.code) == (status, body["code"])
    assert info.value.message == body["message"]
    assert rec.records[-1].outcome == "refused" and rec.records[-1].http_status == status


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(
            404, json={"code": -1, "message": "존재하지 않는 결제정보입니다.", "response": None}
        ),
        httpx.Response(200, json={"code": -1, "message": "없음", "response": None}),
    ],
)
def test_lookup_not_found(answer: httpx.Response) -> None:
    with pytest.raises(NotFound):
        make_client(Upstream(answer)).look_up(IMP_UID)


def test_lookup_404_html_is_not_a_verdict() -> None:
    answer = httpx.Response(
        404, text="<html>Not Found</html>", headers={"content-type": "text/html"}
    )
    with pytest.raises(Unavailable):
        make_client(Upstream(answer)).look_up(IMP_UID)


# -- 401 --------------------------------------------------------------------------------------


def test_401_refreshes_token_and_repeats_once() -> None:
    rec = Recorder()
    up = Upstream(
        httpx.Response(401, json={"code": -1, "message": "Unauthorized", "response": None}),
        ok(cancelled_body()),
    )
    make_client(up).void_barcode(IMP_UID, rec)
    assert [r.headers["authorization"] for r in up.requests] == ["Bearer t1", "Bearer t2"]
    assert up.token_calls == 2
    assert [r.outcome for r in rec.records] == ["ok", "unauthorized", "ok", "ok"]
    assert [r.call for r in rec.records] == ["token", "cancel", "token", "cancel"]


def test_second_401_is_unauthorized() -> None:
    unauthorized = httpx.Response(
        401, json={"code": -1, "message": "Unauthorized", "response": None}
    )
    up = Upstream(unauthorized, unauthorized)
    with pytest.raises(Unauthorized) as info:
        make_client(up).look_up(IMP_UID)
    assert len(up.requests) == 2 and up.token_calls == 2
    assert info.value.http_status == 401


def test_bad_credentials_at_get_token() -> None:
    up = Upstream()
    up.token_answer = httpx.Response(
        401, json={"code": -1, "message": f"bad key {KEY}", "response": None}
    )
    with pytest.raises(Unauthorized) as info:
        make_client(up).look_up(IMP_UID)
    assert info.value.call == "token" and up.requests == []
    assert KEY not in str(info.value) and "***" in str(info.value)


def test_token_cached_between_calls() -> None:
    up = Upstream(ok(payment_body()), ok(payment_body()), ok(payment_body()))
    client = make_client(up)
    for _ in range(3):
        client.look_up(IMP_UID)
    assert up.token_calls == 1


# -- rate limits ------------------------------------------------------------------------------


def test_429_with_retry_after_seconds() -> None:
    rec = Recorder()
    up = Upstream(httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"))
    with pytest.raises(RateLimited) as info:
        make_client(up).void_barcode(IMP_UID, rec)
    assert info.value.retry_after == 7 and info.value.http_status == 429
    assert rec.records[-1].outcome == "rate_limited"


def test_429_with_retry_after_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    up = Upstream(httpx.Response(429, headers={"Retry-After": format_datetime(when, usegmt=True)}))
    with pytest.raises(RateLimited) as info:
        make_client(up).look_up(IMP_UID)
    assert 27 <= info.value.retry_after <= 30


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 1.0),
        ("", 1.0),
        ("2.5", 2.5),
        ("-3", 0.0),
        ("nan", 1.0),
        ("garbage", 1.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("99999999", 3600.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float) -> None:
    assert parse_retry_after(header) == expected


class BusyLimiter:
    def __init__(self) -> None:
        self.calls = 0

    def acquire(self, max_wait: float) -> float:
        self.calls += 1
        raise LimiterBusy(4.5)


def test_local_limiter_refusal_sends_nothing() -> None:
    up = Upstream(ok(payment_body()))
    rec = Recorder()
    client = make_client(up, limiter=BusyLimiter())
    with pytest.raises(RateLimited) as info:
        client.look_up(IMP_UID, rec)
    assert info.value.http_status is None and info.value.retry_after == 4.5
    assert up.token_calls == 0 and up.requests == [] and rec.events == []


# -- the server answered, but not with an answer -------------------------------------------


HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (
            httpx.Response(502, json={"code": -1, "message": "bad gateway", "response": None}),
            "unavailable",
        ),
        (httpx.Response(500, json={"message": "no envelope"}), "unavailable"),
        (httpx.Response(500, text="Internal Server Error"), "unavailable"),
        (httpx.Response(503, text="Service Unavailable"), "unavailable"),
        (httpx.Response(504, text="<html>504 Gateway Time-out</html>"), "unavailable"),
        (httpx.Response(502, text=HTML_502, headers={"content-type": "text/html"}), "unavailable"),
        (httpx.Response(200, text=HTML_502, headers={"content-type": "text/html"}), "bad_response"),
        (httpx.Response(200, text='{"code": 0, "response": {'), "bad_response"),
        (httpx.Response(200, text="[1, 2]"), "bad_response"),
        (httpx.Response(200, text=""), "bad_response"),
        (httpx.Response(200, json={"response": payment_body()}), "bad_response"),
        (httpx.Response(400, text=HTML_502), "bad_response"),
        (httpx.Response(302, headers={"location": "/login"}), "bad_response"),
        (httpx.Response(200, content=b"\xff\xfe\x00garbage"), "bad_response"),
    ],
)
def test_unreadable_or_5xx_is_unavailable(answer: httpx.Response, outcome: str) -> None:
    rec = Recorder()
    with pytest.raises(Unavailable) as info:
        make_client(Upstream(answer)).void_barcode(IMP_UID, rec)
    assert type(info.value) is Unavailable and info.value.outcome == "unavailable"
    assert info.value.http_status == answer.status_code
    assert rec.records[-1].outcome == outcome


@pytest.mark.parametrize("status", [500, 501, 505, 520])
def test_5xx_in_iamports_envelope_is_a_server_error(status: int) -> None:
    rec = Recorder()
    body = {"code": -1, "message": "PG 사 응답 오류", "response": None}
    with pytest.raises(ServerError) as info:
        make_client(Upstream(httpx.Response(status, json=body))).void_barcode(IMP_UID, rec)
    assert (info.value.http_status, info.value.code, info.value.outcome) == (
        status,
        -1,
        "server_error",
    )
    assert isinstance(info.value, Unavailable)  # a caller that does not know it stays safe
    assert rec.records[-1].outcome == "server_error"


def test_a_huge_body_is_cut_off_and_unreadable() -> None:
    from app.upstream.iamport.client import MAX_BODY_BYTES

    huge = b'{"code": 0, "response": "' + b"x" * MAX_BODY_BYTES + b'"}'
    rec = Recorder()
    with pytest.raises(Unavailable) as info:
        make_client(Upstream(httpx.Response(200, content=huge))).void_barcode(IMP_UID, rec)
    assert info.value.message == "response body too large" and info.value.http_status == 200
    assert rec.records[-1].outcome == "bad_response"


def test_payment_without_required_fields_is_unavailable() -> None:
    rec = Recorder()
    with pytest.raises(Unavailable) as info:
        make_client(Upstream(ok({"merchant_uid": "x"}))).void_barcode(IMP_UID, rec)
    assert info.value.http_status == 200 and info.value.code == 0
    assert rec.records[-1].outcome == "bad_response"


def test_from_settings_builds_a_shared_limited_client() -> None:
    import redis

    from app.config import Settings

    settings = Settings(
        iamport_base_url="https://api.iamport.test/",
        iamport_imp_key=KEY,
        iamport_imp_secret=SECRET,
        iamport_timeout_seconds=7,
        iamport_max_rps=30,
    )
    client = IamportClient.from_settings(settings, redis.Redis())  # connects lazily
    assert client._http._limiter is not None and client._http._limiter.rate == 30
    assert client._http.timeout == 7
    assert KEY not in repr(client) and KEY not in repr(client.tokens)
    client.close()
    with pytest.raises(RuntimeError):
        IamportClient.from_settings(Settings(), redis.Redis())


# -- the network failed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "error", "outcome"),
    [
        (httpx.ReadTimeout("timed out"), OutcomeUnknown, "timeout"),
        (httpx.WriteTimeout("timed out"), OutcomeUnknown, "timeout"),
        (httpx.RemoteProtocolError("Server disconnected"), OutcomeUnknown, "connection_error"),
        (httpx.ReadError("reset"), OutcomeUnknown, "connection_error"),
        (httpx.ConnectError("refused"), NotSent, "not_sent"),
        (httpx.ConnectTimeout("timed out"), NotSent, "not_sent"),
        (httpx.PoolTimeout("no connection free"), NotSent, "not_sent"),
    ],
)
def test_transport_failures(exc: Exception, error: type[GatewayError], outcome: str) -> None:
    rec = Recorder()
    with pytest.raises(error) as info:
        make_client(Upstream(exc)).void_barcode(IMP_UID, rec)
    assert type(info.value) is error and info.value.http_status is None
    assert rec.records[-1].outcome == outcome and rec.records[-1].http_status is None
    assert isinstance(info.value.__cause__, httpx.HTTPError)


def test_every_request_carries_the_time_left_no_cookies_and_our_headers() -> None:
    upstream = Upstream(
        ok(payment_body()),
        httpx.Response(
            200,
            json={"code": 0, "message": None, "response": payment_body()},
            headers={"Set-Cookie": "session=abc; Path=/"},
        ),
        ok(payment_body()),
    )
    client = make_client(upstream)
    for _ in range(3):
        client.look_up(IMP_UID)
    for request in upstream.requests:
        timeout = request.extensions["timeout"]
        assert 2.5 < timeout["read"] <= 3 and timeout["connect"] == timeout["read"]
        assert request.url.host == "api.iamport.test"
        assert request.url.path == f"/payments/{IMP_UID}"
        assert request.headers["accept"] == "application/json"
        assert request.headers["authorization"] == "Bearer t1"
    # A cookie iamport (or a proxy) sets is never sent back: each call stands alone.
    assert "cookie" not in upstream.requests[2].headers


# -- secrets --------------------------------------------------------------------------------


def test_secrets_never_in_errors_records_or_reprs() -> None:
    rec = Recorder()
    echo = httpx.Response(
        200, json={"code": 1, "message": f"{KEY} {SECRET} t1 " + "x" * 900, "response": None}
    )
    client = make_client(Upstream(echo))
    with pytest.raises(Refused) as info:
        client.void_barcode(IMP_UID, rec)
    texts = [
        str(info.value),
        repr(info.value),
        repr(client),
        repr(client.tokens),
        *map(repr, rec.records),
    ]
    for text in texts:
        assert KEY not in text and SECRET not in text and "t1 " not in text
    assert info.value.message is not None and len(info.value.message) <= 500


def test_token_response_repr_hides_token() -> None:
    up = Upstream()
    token = make_client(up).fetch_token()
    assert token.access_token == "t1" and "t1" not in repr(token) and "t1" not in str(token)


# -- the observer -----------------------------------------------------------------------------


def test_observer_sees_each_exchange_in_order() -> None:
    rec = Recorder()
    up = Upstream(ok(payment_body()), httpx.Response(503, text="down"))
    client = make_client(up)
    client.look_up(IMP_UID, rec)
    with pytest.raises(Unavailable):
        client.void_barcode(IMP_UID, rec)
    assert rec.events == [
        ("before", "token"),
        ("after", "token:ok"),
        ("before", "lookup"),
        ("after", "lookup:ok"),
        ("before", "cancel"),
        ("after", "cancel:unavailable"),
    ]
    record = rec.records[1]
    assert record.started_at.tzinfo is not None and record.duration_ms >= 0
    assert (record.http_status, record.code, record.message) == (200, 0, None)


def test_observer_may_veto_before_send() -> None:
    class Veto(Recorder):
        def before_send(self, call: str) -> None:
            super().before_send(call)
            if call == "cancel":
                raise RuntimeError("lease lost")

    rec = Veto()
    up = Upstream(ok(cancelled_body()))
    with pytest.raises(RuntimeError, match="lease lost"):
        make_client(up).void_barcode(IMP_UID, rec)
    assert up.requests == [] and rec.events[-1] == ("before", "cancel")
    # The token came first: before_send is the last thing before the bytes go out.
    assert rec.events[:2] == [("before", "token"), ("after", "token:ok")]


def test_before_send_comes_after_the_rate_limiter() -> None:
    order: list[str] = []

    class Limiter:
        def acquire(self, max_wait: float) -> None:
            order.append("limiter")

    class Observer(Recorder):
        def before_send(self, call: str) -> None:
            order.append(f"before:{call}")

    def answer(request: httpx.Request) -> httpx.Response:
        order.append("sent")
        return ok(cancelled_body())

    make_client(Upstream(answer), limiter=Limiter()).void_barcode(IMP_UID, Observer())
    assert order == ["limiter", "before:token", "limiter", "before:cancel", "sent"]
