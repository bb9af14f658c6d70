"""The sandbox's rules, without HTTP."""

from __future__ import annotations

import pytest

from devtools.sandbox.state import Sandbox


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


# -- virtual accounts and refunds -------------------------------------------------------------


def test_close_vbank_only_a_ready_virtual_account(sb: Sandbox) -> None:
    sb.set_faults({"refusal_style": "http"})
    vbank = sb.add_payment({"pay_method": "vbank", "amount": 7000})
    cvs = sb.add_payment({})
    status, body, applied = sb.close_vbank(vbank.imp_uid)
    assert (status, body["code"], applied) == (200, 0, True)
    response = body["response"]
    assert response["status"] == "cancelled" and response["pay_method"] == "vbank"
    assert response["cancel_history"][-1]["amount"] == 7000 and response["vbank_num"]
    status, body, applied = sb.close_vbank(vbank.imp_uid)  # not ready any more
    assert status in (400, 409) and body["code"] != 0 and not applied
    assert sb.close_vbank("imps_000000000000")[0] == 404
    # The wrong call for the method is refused and changes nothing, in either direction.
    assert sb.close_vbank(cvs.imp_uid)[2] is False and cvs.status == "ready"
    other = sb.add_payment({"pay_method": "vbank"})
    assert sb.cancel(other.imp_uid)[2] is False and other.status == "ready"
    assert (sb.vbanks_closed, sb.cvs_cancelled) == (1, 0)


@pytest.mark.parametrize("style", ["code", "http"])
def test_wrong_method_refusal_styles(sb: Sandbox, style: str) -> None:
    sb.set_faults({"refusal_style": style})
    vbank = sb.add_payment({"pay_method": "vbank"})
    status, body, _ = sb.cancel(vbank.imp_uid)
    assert (status == 200) == (style == "code") and body["code"] != 0


def test_refund_rules(sb: Sandbox) -> None:
    paid = sb.add_payment({"amount": 5000, "status": "paid", "pay_method": "card"})
    uid = paid.imp_uid
    for fields, why in (
        ({"imp_uid": uid, "reason": "r"}, "no checksum"),
        ({"imp_uid": uid, "checksum": 4000}, "wrong checksum"),
        ({"imp_uid": uid, "checksum": 5000, "amount": 100}, "partial"),
        ({"imp_uid": "imps_000000000000", "checksum": 5000}, "unknown"),
    ):
        status, body, applied = sb.refund(fields)
        assert (status, applied) == (200, False) and body["code"] != 0, why
    assert paid.status == "paid"
    status, body, applied = sb.refund({"merchant_uid": paid.merchant_uid, "checksum": "5000"})
    assert (status, body["code"], applied) == (200, 0, True)
    assert body["response"]["status"] == "cancelled" and body["response"]["cancel_amount"] == 5000
    entry = body["response"]["cancel_history"][-1]
    assert entry["amount"] == 5000 and entry["pg_tid"].startswith("card_refund_")
    status, body, applied = sb.refund({"imp_uid": uid, "checksum": 0})  # cancelled now
    assert body["code"] != 0 and not applied
    ready = sb.add_payment({"amount": 100})
    assert sb.refund({"imp_uid": ready.imp_uid, "checksum": 100})[2] is False
    assert sb.tally(uid).refunds_applied == 1 and sb.totals.refunds_applied == 1


def test_paid_vbank_refund_needs_the_refund_account(sb: Sandbox) -> None:
    vbank = sb.add_payment({"pay_method": "vbank", "amount": 900, "status": "paid"})
    status, body, applied = sb.refund({"imp_uid": vbank.imp_uid, "checksum": 900})
    assert (status, applied) == (200, False) and body["code"] != 0
    account = {"refund_holder": "홍길동", "refund_bank": "004", "refund_account": "123"}
    assert sb.refund({"imp_uid": vbank.imp_uid, "checksum": 900, **account})[2] is True


def test_set_amounts_changes_the_checksum(sb: Sandbox) -> None:
    paid = sb.add_payment({"amount": 1000, "status": "paid"})
    sb.set_amounts(paid.imp_uid, cancel_amount=300)
    assert sb.refund({"imp_uid": paid.imp_uid, "checksum": 1000})[2] is False
    _, body, applied = sb.refund({"imp_uid": paid.imp_uid, "checksum": 700})
    assert applied and body["response"]["cancel_history"][-1]["amount"] == 700
    for bad in ({"amount": 0}, {"cancel_amount": 2000}, {"cancel_amount": "x"}):
        with pytest.raises(ValueError):
            sb.set_amounts(paid.imp_uid, **bad)
    with pytest.raises(KeyError):
        sb.set_amounts("nope", amount=5)


# -- the tallies ------------------------------------------------------------------------------


def test_overlap_lasts_until_applied_not_until_answered(sb: Sandbox) -> None:
    p = sb.add_payment({})
    first = sb.begin_call("cancel", p.imp_uid)
    sb.end_call(first, 499, still_working=True)  # the caller hung up; the work goes on
    second = sb.begin_call("cancel", p.imp_uid)  # overlaps: the first is still worked on
    sb.finish_work(first, sb.cancel(p.imp_uid)[2])  # applies after the hang-up
    sb.end_call(second, 400, False)
    third = sb.begin_call("refund", p.imp_uid)  # no overlap now, but after an applied one
    sb.end_call(third, 200, False)
    tally = sb.tally(p.imp_uid)
    assert (tally.overlaps, tally.calls_after_applied, tally.working) == (1, 1, 0)
    assert first.applied is True and first.applied_at is not None
    assert first.ended_at is not None and first.applied_at >= first.ended_at
    assert sb.late_applies_after_hangup == 1
    stats = sb.stats()
    assert stats["overlaps"] == stats["overlapping_cancels"] == 1
    assert stats["working"] == 0 and stats["mutating_calls"] == 3


def test_refunds_without_lookup(sb: Sandbox) -> None:
    p = sb.add_payment({"status": "paid"})

    def refund(imp_uid: str, admitted: bool = True) -> None:
        entry = sb.begin_call("refund", imp_uid)
        if admitted:  # past the token check, as the server does
            sb.admit(entry)
        sb.end_call(entry, 200 if admitted else 401)

    refund(p.imp_uid)  # never looked up
    sb.end_call(sb.begin_call("lookup", p.imp_uid), 200)
    refund(p.imp_uid, admitted=False)  # a 401 never reaches the application
    refund(p.imp_uid)  # looked up first: fine, the 401 in between does not count
    refund(p.imp_uid)  # no lookup since the previous
    refund("imps_unknown")
    assert sb.tally(p.imp_uid).refunds_without_lookup == 2
    assert sb.stats()["refunds_without_lookup"] == 3
    assert sb.tally("imps_unknown").refund_calls == 1


# -- faults -----------------------------------------------------------------------------------


def test_new_faults_strike_mutating_calls_only(sb: Sandbox) -> None:
    sb.set_faults(
        {
            "error_after_rate": 0.2,
            "drop_after_rate": 0.2,
            "late_apply_rate": 0.2,
            "trickle_rate": 0.2,
            "seed": 3,
        }
    )
    lookups = {sb.decide("lookup", "x").fault for _ in range(200)}
    assert lookups == {None, "trickle"}
    for call in ("cancel", "cancel_vbank", "refund"):
        kinds = {sb.decide(call, "x").fault for _ in range(300)}
        assert {"error_after", "drop_after", "late_apply", "trickle", None} <= kinds


def test_faults_aimed_at_some_imp_uids(sb: Sandbox) -> None:
    sb.set_faults({"error_rate": 1.0, "imp_uids": ["imps_a"], "calls": ["cancel"]})
    assert sb.decide("cancel", "imps_a").fault == "error"
    assert sb.decide("cancel", "imps_b").fault is None
    assert sb.decide("lookup", "imps_a").fault is None
    assert sb.faults.as_dict()["imp_uids"] == ["imps_a"]
    sb.set_faults({"imp_uids": None})
    assert sb.decide("cancel", "imps_b").fault == "error"
    for bad in ({"imp_uids": "imps_a"}, {"error_style": "xml"}, {"retry_after_style": 1}):
        with pytest.raises(ValueError):
            sb.set_faults(bad)


@pytest.mark.parametrize(
    ("style", "statuses", "html"),
    [("json", {500}, {False}), ("html", {502, 503, 504}, {True})],
)
def test_error_styles(sb: Sandbox, style: str, statuses: set[int], html: set[bool]) -> None:
    sb.set_faults({"error_rate": 1.0, "error_style": style})
    decisions = [sb.decide("cancel", "x") for _ in range(60)]
    assert {d.status for d in decisions} == statuses and {d.html for d in decisions} == html


def test_retry_after_header_styles() -> None:
    from email.utils import parsedate_to_datetime

    from devtools.sandbox.faults import retry_after_header

    assert retry_after_header(3.0, False, 0) == "3"
    assert retry_after_header(0.25, False, 0) == "0.25"
    date = retry_after_header(2.5, True, 1_800_000_000.2)
    assert parsedate_to_datetime(date).timestamp() == 1_800_000_003


@pytest.mark.parametrize("style", ["ms", "fraction", "string", "iso"])
def test_odd_payloads_still_parse_to_the_same_payment(sb: Sandbox, style: str) -> None:
    from app.upstream.payment import Payment
    from devtools.sandbox.faults import Decision, oddly

    p = sb.add_payment({"status": "paid"})
    sb.set_status(p.imp_uid, "cancelled")
    tidy = p.to_api()
    odd = oddly(tidy, Decision(timestamps=style), "pending_review")
    assert odd["paid_at"] != tidy["paid_at"] and odd["started_at"] != tidy["started_at"]
    parsed = Payment.model_validate(odd)
    assert abs(parsed.paid_at - tidy["paid_at"]) < 1
    assert abs(parsed.cancel_history[0].cancelled_at - tidy["cancelled_at"]) < 1
    odder = oddly(tidy, Decision(unknown_status=True, missing_history="absent"), "pending_review")
    assert odder["status"] == "pending_review" and "cancel_history" not in odder
    assert tidy["status"] == "cancelled" and tidy["cancel_history"]  # the truth is untouched
    assert oddly(tidy, Decision(missing_history="null"), "x")["cancel_history"] is None


def test_payload_oddities_are_drawn_for_payment_answers(sb: Sandbox) -> None:
    sb.set_faults(
        {"odd_timestamps_rate": 0.5, "unknown_status_rate": 0.5, "missing_history_rate": 0.5}
    )
    lookups = [sb.decide("lookup", "x") for _ in range(100)]
    assert {d.timestamps for d in lookups} >= {"ms", "fraction", "string", "iso", None}
    assert any(d.unknown_status for d in lookups) and any(d.missing_history for d in lookups)
    cancels = [sb.decide("cancel", "x") for _ in range(100)]
    assert not any(d.unknown_status for d in cancels)  # an unknown status is a lookup's
    assert all(sb.decide("token").timestamps is None for _ in range(50))


def test_a_payment_created_cancelled_some_time_ago(sb: Sandbox, clock: Clock) -> None:
    [p] = sb.add_payments([{"imp_uid": "imp_old", "status": "cancelled", "cancelled_ago": 120}])
    body = p.to_api()
    assert body["status"] == "cancelled"
    assert body["cancelled_at"] == int(clock.now) - 120
    assert body["cancel_history"][-1]["cancelled_at"] == int(clock.now) - 120
    for bad in ({"status": "ready", "cancelled_ago": 5}, {"status": "cancelled", "cancelled_ago": -1},
                {"status": "cancelled", "cancelled_ago": "soon"}):  # fmt: skip
        with pytest.raises(ValueError, match="cancelled_ago"):
            sb.add_payment({"imp_uid": "imp_bad", **bad})


@pytest.mark.parametrize("style", ["ms", "fraction", "string", "iso"])
def test_odd_timestamps_in_one_chosen_style(style: str) -> None:
    import random

    from devtools.sandbox.faults import Faults, decide, oddly

    faults = Faults().merged({"odd_timestamps_rate": 1.0, "odd_timestamps_style": style})
    rng = random.Random(3)
    assert {decide(faults, rng, "lookup", "imp_1").timestamps for _ in range(20)} == {style}
    payment = {"imp_uid": "imp_1", "cancelled_at": 1_800_000_000, "cancel_history": []}
    out = oddly(payment, decide(faults, rng, "lookup", "imp_1"), "x")
    if style == "ms":
        assert out["cancelled_at"] == 1_800_000_000_123
    with pytest.raises(ValueError, match="odd_timestamps_style"):
        Faults().merged({"odd_timestamps_style": "weeks"})
