"""The sandbox's rules, without HTTP."""

from __future__ import annotations

import pytest

from app.sandbox.state import Sandbox


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sb(clock: Clock) -> Sandbox:
    return Sandbox(token_ttl=1800, seed=7, clock=clock)


def token_of(sb: Sandbox) -> dict[str, int | str]:
    status, body = sb.get_token("sandbox_key", "sandbox_secret")
    assert status == 200 and body["code"] == 0
    return body["response"]  # type: ignore[no-any-return]


def test_same_token_until_near_expiry_then_extended(sb: Sandbox, clock: Clock) -> None:
    first = token_of(sb)
    assert first["expired_at"] == int(clock.now) + 1800
    clock.now += 1000
    assert token_of(sb) == {**first, "now": int(clock.now)}
    clock.now = float(first["expired_at"]) - 30  # under a minute left: pushed back 5 minutes
    again = token_of(sb)
    assert again["access_token"] == first["access_token"]
    assert again["expired_at"] == int(first["expired_at"]) + 300
    assert sb.authorized(str(first["access_token"]))
    clock.now = float(again["expired_at"]) + 1
    assert not sb.authorized(str(first["access_token"]))
    assert token_of(sb)["access_token"] != first["access_token"]


def test_wrong_credentials_and_expire(sb: Sandbox) -> None:
    assert sb.get_token("sandbox_key", "nope")[0] == 401
    assert sb.get_token(None, None)[0] == 401
    token = str(token_of(sb)["access_token"])
    sb.expire_tokens()
    assert not sb.authorized(token) and not sb.authorized(None)
    assert token_of(sb)["access_token"] != token


def test_cancel_ready_then_refuse_everything_else(sb: Sandbox) -> None:
    sb.set_faults({"refusal_style": "http"})
    p = sb.add_payment({"amount": 5000})
    assert p.imp_uid.startswith("imps_") and len(p.imp_uid) == 17
    status, body, applied = sb.cancel(p.imp_uid)
    assert (status, body["code"], applied) == (200, 0, True)
    payment = body["response"]
    assert payment["status"] == "cancelled" and payment["cancel_amount"] == 5000
    entry = payment["cancel_history"][0]
    assert set(entry) == {
        "pg_tid",
        "amount",
        "cancelled_at",
        "reason",
        "receipt_url",
        "cancellation_id",
    }
    status, body, applied = sb.cancel(p.imp_uid)
    assert status in (400, 409) and body["code"] != 0 and not applied
    assert sb.cancel("imps_000000000000")[0] == 404
    assert sb.tally(p.imp_uid).cancels_applied == 1 and sb.cvs_cancelled == 1


@pytest.mark.parametrize("state", ["paid", "cancelled", "failed"])
def test_code_style_refusal(sb: Sandbox, state: str) -> None:
    sb.set_faults({"refusal_style": "code"})
    p = sb.add_payment({"status": state})
    status, body, applied = sb.cancel(p.imp_uid)
    assert status == 200 and body["code"] == 1 and body["response"] is None and not applied
    assert body["message"]


def test_mixed_style_uses_both_and_repeats_with_seed(clock: Clock) -> None:
    def run() -> list[int]:
        sb = Sandbox(seed=3, clock=clock)
        p = sb.add_payment({"status": "paid"})
        return [sb.cancel(p.imp_uid)[0] for _ in range(40)]

    first = run()
    assert set(first) >= {200, 400} and first == run()


def test_lookup_shapes(sb: Sandbox) -> None:
    assert sb.lookup("nope") == (
        404,
        {"code": -1, "message": "존재하지 않는 결제정보입니다.", "response": None},
    )
    p = sb.add_payment({"merchant_uid": "m-1", "amount": 100})
    status, body = sb.lookup(p.imp_uid)
    response = body["response"]
    assert status == 200 and response["merchant_uid"] == "m-1"
    for field in (
        "imp_uid",
        "pay_method",
        "pg_provider",
        "pg_tid",
        "amount",
        "cancel_amount",
        "currency",
        "status",
        "started_at",
        "paid_at",
        "failed_at",
        "cancelled_at",
        "cancel_history",
        "cancel_receipt_urls",
        "customer_uid_usage",
    ):
        assert field in response


def test_console_actions(sb: Sandbox) -> None:
    p = sb.add_payment({})
    sb.set_status(p.imp_uid, "cancelled")
    assert p.status == "cancelled" and len(p.cancel_history) == 1
    assert sb.tally(p.imp_uid).cancels_applied == 0
    q = sb.add_payment({})
    assert sb.mark_paid(q.imp_uid) and q.paid_at > 0 and not sb.mark_paid(q.imp_uid)
    assert not sb.mark_paid(p.imp_uid)
    with pytest.raises(KeyError):
        sb.set_status("nope", "paid")
    with pytest.raises(ValueError):
        sb.set_status(p.imp_uid, "weird")


def test_bulk_create_is_all_or_nothing(sb: Sandbox) -> None:
    with pytest.raises(ValueError):
        sb.add_payments([{"imp_uid": "imps_1"}, {"imp_uid": "imps_1"}])
    assert sb.payments == {}
    created = sb.add_payments([{} for _ in range(5000)])
    assert len({p.imp_uid for p in created}) == 5000


def test_issue(sb: Sandbox) -> None:
    status, body = sb.issue(
        {
            "merchant_uid": "m-1",
            "amount": 1000,
            "channel_key": "ch",
            "confirm_url": "http://x/confirm",
            "notice_url": "http://x/n",
        }
    )
    assert status == 200 and body["response"]["status"] == "ready"
    p = sb.payments[body["response"]["imp_uid"]]
    assert (p.confirm_url, p.notice_url) == ("http://x/confirm", "http://x/n")
    assert sb.issue({"merchant_uid": "m-1", "amount": 1000})[1]["code"] == 1
    assert sb.issue({"merchant_uid": "m-2", "amount": -1})[0] == 400
    assert sb.issue({"amount": 1})[0] == 400
    confirm = sb.confirm_body(p, "card")
    assert confirm["event"] == "Galaxia.Cvs.Confirm" and confirm["extra"]["payType"] == "card"


def test_faults_are_seeded_and_validated(sb: Sandbox) -> None:
    sb.set_faults({"error_rate": 0.3, "rate_429": 0.1, "timeout_after_rate": 0.2, "seed": 11})
    first = [(d.fault, d.status) for d in (sb.decide("cancel") for _ in range(200))]
    sb.set_faults({"seed": 11})
    assert [(d.fault, d.status) for d in (sb.decide("cancel") for _ in range(200))] == first
    kinds = {f for f, _ in first}
    assert {"error", "429", "timeout_after", None} <= kinds
    assert all(sb.decide("lookup").fault != "timeout_after" for _ in range(100))
    sb.set_faults({"calls": ["token"]})
    assert all(sb.decide("cancel").fault is None for _ in range(50))
    for bad in (
        {"error_rate": 2},
        {"nope": 1},
        {"calls": ["x"]},
        {"refusal_style": "y"},
        {"latency_ms": -1},
        {"seed": "s"},
    ):
        with pytest.raises(ValueError):
            sb.set_faults(bad)
    sb.clear_faults()
    assert sb.faults.error_rate == 0 and set(sb.faults.calls) == {
        "token",
        "lookup",
        "cancel",
        "cancel_vbank",
        "refund",
        "issue",
    }


def test_latency_with_jitter(sb: Sandbox) -> None:
    sb.set_faults({"latency_ms": 50, "latency_jitter_ms": 10})
    latencies = [sb.decide("lookup").latency for _ in range(100)]
    assert all(0.04 <= x <= 0.06 for x in latencies) and len(set(latencies)) > 1


def test_call_log_and_overlap_counters(sb: Sandbox) -> None:
    p = sb.add_payment({})
    a = sb.begin_call("cancel", p.imp_uid)
    b = sb.begin_call("cancel", p.imp_uid)  # overlaps a
    assert sb.totals.overlaps == 1 and sb.max_in_flight == 2
    sb.cancel(p.imp_uid)
    sb.end_call(a, 200, True)
    sb.end_call(b, 499, False, "timeout_after")
    sb.end_call(b, 200)  # ending twice changes nothing
    c = sb.begin_call("cancel", p.imp_uid)  # after an applied cancel
    sb.end_call(c, 400, False)
    stats = sb.stats()
    assert stats["overlapping_cancels"] == 1 and stats["cancel_after_applied"] == 1
    assert stats["in_flight"] == 0 and stats["cancels_applied_max_per_imp_uid"] == 1
    log = sb.calls_since(1)
    assert [e["seq"] for e in log] == [2, 3] and log[0]["status_code"] == 499
    assert log[0]["ended_at"] >= log[0]["started_at"]
    assert sb.tally(p.imp_uid).cancel_calls == 3
    sb.reset()
    assert sb.payments == {} and sb.calls_since(0) == [] and sb.stats()["calls_total"] == 0
