"""The iamport client's batch lookup, `GET /payments?imp_uid[]=…`: all, some (207) or none."""

from __future__ import annotations

import httpx
import pytest

from app.upstream.iamport import OutcomeUnknown, RateLimited, Unavailable
from app.upstream.iamport.client import BATCH_LOOKUP_MAX
from tests.unit.upstream.test_iamport_client import (
    Recorder,
    Upstream,
    cancelled_body,
    make_client,
    ok,
    payment_body,
)


def test_asks_for_each_imp_uid_once_and_keys_the_answer() -> None:
    answer = ok([payment_body(imp_uid="a"), cancelled_body() | {"imp_uid": "b"}])
    up = Upstream(answer)
    recorder = Recorder()
    found = make_client(up).look_up_many(["a", "b", "a"], recorder)
    assert sorted(found) == ["a", "b"] and found["b"].status == "cancelled"
    (request,) = up.requests
    assert request.method == "GET" and request.url.path == "/payments"
    assert request.url.params.get_list("imp_uid[]") == ["a", "b"]
    assert request.headers["authorization"] == "Bearer t1"
    assert [r.outcome for r in recorder.records] == ["ok", "ok"]  # token, lookup
    assert recorder.records[-1].call == "lookup"


def test_207_carries_the_found_ones_whatever_its_code() -> None:
    body = {"code": 1, "message": "some not found", "response": [payment_body(imp_uid="a")]}
    up = Upstream(httpx.Response(207, json=body))
    assert list(make_client(up).look_up_many(["a", "zz"])) == ["a"]


def test_404_means_none_found() -> None:
    body = {"code": -1, "message": "존재하지 않는 결제정보입니다.", "response": None}
    up = Upstream(httpx.Response(404, json=body), ok(None))
    client = make_client(up)
    assert client.look_up_many(["x", "y"]) == {}
    assert client.look_up_many(["x"]) == {}  # code 0 with nothing: nothing found


def test_an_answer_for_someone_not_asked_is_dropped() -> None:
    up = Upstream(ok([payment_body(imp_uid="a"), payment_body(imp_uid="other")]))
    assert list(make_client(up).look_up_many(["a"])) == ["a"]


def test_bounds_are_checked_before_anything_is_sent() -> None:
    up = Upstream()
    client = make_client(up)
    assert client.look_up_many([]) == {}
    with pytest.raises(ValueError, match="at most 100"):
        client.look_up_many([f"i{n}" for n in range(BATCH_LOOKUP_MAX + 1)])
    assert up.requests == [] and up.token_calls == 0


def test_include_sandbox_is_sent_beside_the_ids() -> None:
    up = Upstream(ok([payment_body(imp_uid="a")]))
    make_client(up, include_sandbox=True).look_up_many(["a"])
    assert up.requests[0].url.params.get("include_sandbox") == "true"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(429, headers={"Retry-After": "2"}, json={"code": -1}), RateLimited),
        (httpx.Response(502, text="<html>bad gateway</html>"), Unavailable),
        (httpx.ReadTimeout("slow"), OutcomeUnknown),
        (ok([{"no_imp_uid": True}]), Unavailable),
        (ok({"imp_uid": "a", "status": "paid"}), Unavailable),  # one object, not a list
    ],
)
def test_failures_are_the_usual_typed_errors(
    answer: httpx.Response | Exception, error: type[Exception]
) -> None:
    with pytest.raises(error):
        make_client(Upstream(answer)).look_up_many(["a", "b"])


def test_a_401_gets_one_fresh_token_and_one_repeat() -> None:
    up = Upstream(httpx.Response(401, json={"code": -1}), ok([payment_body(imp_uid="a")]))
    assert list(make_client(up).look_up_many(["a"])) == ["a"]
    assert up.token_calls == 2
