"""The Payment model against the odd payloads iamport and its PGs send."""

from __future__ import annotations

from typing import Any

import pytest

from app.upstream.payment import Payment, unix_seconds

BASE: dict[str, Any] = {"imp_uid": "imps_1", "status": "ready", "amount": 1000}
T = 1764060000  # 2025-11-25 08:40:00 UTC


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (T, T),
        (T + 0.25, T + 0.25),
        (T * 1000, T),
        (T * 1000 + 500, T + 0.5),
        (T * 1_000_000, T),  # microseconds
        (T * 1_000_000 + 250_000, T + 0.25),
        (T * 1_000_000_000, T),  # nanoseconds
        (str(T * 1_000_000), T),
        (T * 10**12, 0),  # finer than nanoseconds: no unit, unknown rather than a guess
        (10**11, 10**11),  # the boundary is still seconds
        (str(T), T),
        (f"{T}.75", T + 0.75),
        (str(T * 1000), T),
        (" 1764060000 ", T),
        ("2025-11-25T08:40:00Z", T),
        ("2025-11-25T08:40:00.5+00:00", T + 0.5),
        ("2025-11-25T17:40:00+09:00", T),
        ("2025-11-25 17:40:00", T),  # no offset: iamport's Korean time
        (None, 0),
        ("", 0),
        (0, 0),
        ("not a time", 0),
        (float("nan"), 0),
        (-5, 0),
        (True, 0),
        ([T], 0),
    ],
)
def test_timestamps_become_unix_seconds(raw: Any, seconds: float) -> None:
    assert unix_seconds(raw) == pytest.approx(seconds)
    payment = Payment.model_validate(
        BASE | {"started_at": raw, "paid_at": raw, "failed_at": raw, "cancelled_at": raw}
    )
    for value in (payment.started_at, payment.paid_at, payment.failed_at, payment.cancelled_at):
        assert isinstance(value, float) and value == pytest.approx(seconds)


def test_absent_timestamps_are_zero() -> None:
    payment = Payment.model_validate(BASE)
    assert (payment.started_at, payment.paid_at, payment.cancelled_at) == (0, 0, 0)


def test_cancel_history_timestamps_and_order() -> None:
    payment = Payment.model_validate(
        BASE
        | {
            "status": "cancelled",
            "cancel_history": [
                {"pg_tid": "new", "amount": "1000", "cancelled_at": str((T + 60) * 1000)},
                {"pg_tid": "old", "amount": 1000, "cancelled_at": T + 0.5},
                {"pg_tid": "none", "amount": None, "cancelled_at": None},
            ],
        }
    )
    last = payment.last_cancel()
    assert last is not None and last.pg_tid == "new" and last.cancelled_at == T + 60
    assert last.amount == 1000 and payment.cancel_history[2].amount == 0


@pytest.mark.parametrize("history", [None, "missing"])
def test_missing_or_null_cancel_history(history: Any) -> None:
    body = BASE | {"status": "cancelled", "cancel_amount": 1000}
    if history != "missing":
        body["cancel_history"] = history
    payment = Payment.model_validate(body)
    assert payment.cancel_history == [] and payment.last_cancel() is None


@pytest.mark.parametrize("status", ["pending_review", "PAID", "partial_cancelled", ""])
def test_unknown_status_is_kept(status: str) -> None:
    assert Payment.model_validate(BASE | {"status": status}).status == status


@pytest.mark.parametrize("pay_method", ["vbank", "cvs", "card", "trans", None])
def test_pay_method_is_kept(pay_method: str | None) -> None:
    assert Payment.model_validate(BASE | {"pay_method": pay_method}).pay_method == pay_method


def test_amounts_as_strings_and_balance() -> None:
    payment = Payment.model_validate(BASE | {"amount": "12000", "cancel_amount": "2000.5"})
    assert payment.amount == 12000 and payment.cancel_amount == 2000.5
    assert payment.balance == 9999.5
    assert Payment.model_validate(BASE | {"cancel_amount": None}).balance == 1000


def test_unknown_fields_are_ignored_and_status_is_required() -> None:
    assert Payment.model_validate(BASE | {"brand_new": {"x": [1]}}).imp_uid == "imps_1"
    with pytest.raises(ValueError):
        Payment.model_validate({"imp_uid": "imps_1"})


@pytest.mark.parametrize(
    ("cancelled_at", "history", "when"),
    [
        (0, [], 0.0),
        (T, [], T),
        (0, [T], T),
        (T * 1000, [T * 1000], T),  # milliseconds, as some PGs put them
        (T, [T - 50, T + 7], T + 7),  # the later of the payment's and its newest entry's
        (T + 9, [T - 50, T], T + 9),
        (None, [None], 0.0),
    ],
)
def test_cancelled_time_is_the_latest_cancellations(
    cancelled_at: Any, history: list[Any], when: float
) -> None:
    payment = Payment.model_validate(
        BASE
        | {
            "status": "cancelled",
            "cancelled_at": cancelled_at,
            "cancel_history": [{"cancelled_at": t, "amount": 1} for t in history],
        }
    )
    assert payment.cancelled_time() == pytest.approx(when)
