"""A reconciliation round against real Postgres, with a scripted batch lookup: which jobs it
reads, what each move writes (the job, its timeline, its webhook messages), and that a second
round changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from app.jobs import reconcile, store
from app.jobs.decide import Method, OnPaid
from app.jobs.drift import Move
from app.jobs.records import refund_of
from app.kit.db import pool
from app.upstream.contract import CallObserver, CallRecord
from app.upstream.errors import Unavailable
from app.upstream.payment import Payment
from app.webhooks import outbox


@pytest.fixture(autouse=True)
def _env(service_env: dict[str, str]) -> None:
    return None


class Gateway:
    """Answers batch lookups from `payments`; records each batch asked for."""

    lookup_batch = 100

    def __init__(self, payments: dict[str, Payment] | None = None) -> None:
        self.payments = payments or {}
        self.batches: list[list[str]] = []
        self.fail = False

    def look_up_many(
        self, imp_uids: Sequence[str], observer: CallObserver | None = None
    ) -> dict[str, Payment]:
        self.batches.append(list(imp_uids))
        if observer is not None:
            observer.after_call(CallRecord("lookup", datetime.now(UTC), 3, 200, 0, None, "ok"))
        if self.fail:
            raise Unavailable("lookup", message="down")
        return {i: self.payments[i] for i in imp_uids if i in self.payments}


def payment(imp_uid: str, status: str, amount: int = 1000, **over: Any) -> Payment:
    cancelled = status == "cancelled"
    history = (
        [{"pg_tid": "t1", "amount": amount, "cancelled_at": 1.8e9, "reason": "admin"}]
        if cancelled
        else []
    )
    return Payment(
        imp_uid=imp_uid,
        status=status,
        amount=amount,
        cancel_amount=amount if cancelled else 0,
        cancelled_at=1.8e9 if cancelled else 0,
        cancel_history=history,
        **over,
    )


def job(imp_uid: str, status: str, sql: str = "") -> uuid.UUID:
    """A job of the default account in `status`, finished now if terminal."""
    new = store.NewEvent(
        "default",
        f"evt-{imp_uid}",
        "SKU",
        "out of stock",
        None,
        "h",
        [store.NewJob(imp_uid, None, Method.CVS)],
        OnPaid.HOLD,
        0,
    )
    with pool().connection() as conn, conn.transaction():
        (made,) = store.accept_event(conn, new).made
        finished = "now()" if status not in ("queued", "running", "retry_wait") else "NULL"
        conn.execute(
            f"UPDATE jobs SET status = %s, finished_at = {finished}, payment_status = 'ready' "
            "WHERE id = %s",
            (status, made["id"]),
        )
        if sql:
            conn.execute(f"UPDATE jobs SET {sql} WHERE id = %s", (made["id"],))
    return uuid.UUID(str(made["id"]))


def row(job_id: uuid.UUID) -> dict[str, Any]:
    with pool().connection() as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        found = cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert found is not None
    return found


def messages(job_id: uuid.UUID) -> list[str]:
    with pool().connection() as conn:
        found = conn.execute(
            "SELECT event_type FROM webhook_messages WHERE job_id = %s ORDER BY id", (job_id,)
        ).fetchall()
    return [r[0] for r in found]


def timeline(job_id: uuid.UUID) -> list[tuple[str, str | None]]:
    with pool().connection() as conn:
        found = conn.execute(
            "SELECT call, message FROM attempts WHERE job_id = %s ORDER BY id", (job_id,)
        ).fetchall()
    return [(r[0], r[1]) for r in found]


def endpoint() -> None:
    with pool().connection() as conn:
        conn.execute(
            "INSERT INTO webhook_endpoints (url, secret) VALUES ('https://hooks.test/x', 'whsec_x')"
        )


def plan(**over: Any) -> reconcile.Plan:
    values: dict[str, Any] = {
        "account": "default",
        "since": datetime.now(UTC) - timedelta(hours=72),
        "stale_seconds": 600,
        "rate": 1000.0,
        "grace_seconds": 15.0,
    }
    values.update(over)
    return reconcile.Plan(**values)


def run(gateway: Gateway, **over: Any) -> reconcile.Summary:
    with pool().connection() as conn:
        return reconcile.reconcile_account(
            conn,
            gateway,
            plan(**over),
            on_terminal=outbox.record_terminal,
            on_drift=outbox.record_drift,
        )


def test_each_case_moves_as_the_rules_say_and_a_second_round_changes_nothing() -> None:
    endpoint()
    refunded = job("imp_refunded", "needs_refund", "payment_status = 'paid'")
    paid = job("imp_paid", "failed")
    cancelled = job("imp_cancelled", "failed")
    drifted = job("imp_drift", "cancelled", "payment_status = 'cancelled'")
    stale = job("imp_stale", "retry_wait", "updated_at = now() - interval '20 minutes'")
    fresh = job("imp_fresh", "retry_wait")
    same = job("imp_same", "cancelled", "payment_status = 'cancelled'")
    gateway = Gateway(
        {
            "imp_refunded": payment("imp_refunded", "cancelled"),
            "imp_paid": payment("imp_paid", "paid"),
            "imp_cancelled": payment("imp_cancelled", "cancelled"),
            "imp_drift": payment("imp_drift", "paid"),
            "imp_stale": payment("imp_stale", "paid"),
            "imp_fresh": payment("imp_fresh", "paid"),
            "imp_same": payment("imp_same", "cancelled"),
        }
    )
    summary = run(gateway)
    assert len(gateway.batches) == 1 and "imp_fresh" not in gateway.batches[0]
    assert summary.looked_up == 6 and summary.unchanged == 1 and summary.errors == 0
    assert summary.moved == {
        "refunded_upstream": 1,
        "needs_refund": 1,
        "cancelled_upstream": 1,
        "look_first": 1,
    }
    assert summary.drift == {"cancelled_but_paid": 1}

    r = row(refunded)
    assert r["status"] == "refunded" and r["refund"]["refunded_by"] == "upstream"
    assert r["refund"]["reason"] == "admin" and r["payment_status"] == "cancelled"
    assert messages(refunded) == ["job.refunded"]
    assert timeline(refunded) == [("lookup", reconcile.NOTES[Move.REFUNDED_UPSTREAM])]

    r = row(cancelled)
    assert r["status"] == "cancelled" and r["cancellation"]["cancelled_by"] == "upstream"
    assert messages(cancelled) == ["job.cancelled"]

    r = row(paid)
    assert r["status"] == "queued" and r["look_first"] and r["finished_at"] is None
    assert messages(paid) == []  # its run ends it (needs_refund), and sends that message

    r = row(drifted)
    assert r["status"] == "cancelled" and r["drift"]["kind"] == "cancelled_but_paid"
    assert r["drift"]["seen_status"] == "paid" and r["drift"]["cleared_by"] is None
    assert messages(drifted) == ["job.drift"]

    assert row(stale)["look_first"] and not row(fresh)["look_first"]
    assert row(same)["drift"] is None

    again = run(gateway)
    assert again.moved == {}  # the stale job was touched: not stale again until it waits long
    assert again.drift == {}
    assert messages(drifted) == ["job.drift"] and messages(refunded) == ["job.refunded"]


def test_dry_run_counts_and_changes_nothing() -> None:
    refunded = job("imp_r", "needs_refund")
    drifted = job("imp_d", "refunded")
    gateway = Gateway({"imp_r": payment("imp_r", "cancelled"), "imp_d": payment("imp_d", "paid")})
    summary = run(gateway, dry_run=True)
    assert summary.moved == {"refunded_upstream": 1} and summary.drift == {"refunded_but_paid": 1}
    assert row(refunded)["status"] == "needs_refund" and row(drifted)["drift"] is None
    assert timeline(refunded) == []


def test_jobs_outside_the_window_are_not_read_but_needs_refund_always_is() -> None:
    old_failed = job("imp_old", "failed", "finished_at = now() - interval '4 days'")
    old_held = job("imp_held", "needs_refund", "finished_at = now() - interval '4 days'")
    gateway = Gateway(
        {"imp_old": payment("imp_old", "paid"), "imp_held": payment("imp_held", "cancelled")}
    )
    summary = run(gateway)
    assert gateway.batches == [["imp_held"]]
    assert summary.moved == {"refunded_upstream": 1}
    assert row(old_failed)["status"] == "failed" and row(old_held)["status"] == "refunded"
    gateway.batches.clear()
    run(gateway, since=datetime.now(UTC) - timedelta(days=5))
    # The refund just settled finished now, so it is in any window: looked at for drift.
    assert [sorted(b) for b in gateway.batches] == [["imp_held", "imp_old"]]
    assert row(old_failed)["status"] == "queued"


def test_batches_of_a_hundred_and_a_failed_lookup_counts_errors() -> None:
    ids = [job(f"imp_{n:03}", "cancelled", "payment_status = 'cancelled'") for n in range(150)]
    gateway = Gateway()
    gateway.fail = True
    summary = run(gateway)
    assert [len(b) for b in gateway.batches] == [100, 50]
    assert summary.errors == 150 and summary.looked_up == 0 and summary.calls == 2
    assert summary.messages == ["iamport lookup: unavailable, 'down'"] * 2 or summary.messages
    assert all(row(i)["drift"] is None for i in ids[:3])


def test_a_job_that_moved_on_meanwhile_is_left_alone() -> None:
    held = job("imp_h", "needs_refund")
    with pool().connection() as conn:
        page = store.reconcile_page(
            conn,
            "default",
            after=None,
            since=datetime.now(UTC) - timedelta(hours=1),
            stale_seconds=600,
            limit=10,
        )
        assert [p.id for p in page] == [held]
        conn.execute("UPDATE jobs SET status = 'queued' WHERE id = %s", (held,))
        looked = store.Looked(datetime.now(UTC), 200, "x")
        record = refund_of(payment("imp_h", "cancelled"))
        assert not store.settle_refunded_upstream(conn, held, record, "cancelled", looked)
    assert timeline(held) == []


def test_a_stopping_process_ends_the_round_between_batches() -> None:
    import threading

    for n in range(150):
        job(f"imp_s{n:03}", "cancelled", "payment_status = 'cancelled'")
    stop = threading.Event()

    class StopsAfterOne(Gateway):
        def look_up_many(
            self, imp_uids: Sequence[str], observer: CallObserver | None = None
        ) -> dict[str, Payment]:
            stop.set()  # SIGTERM arrives during the first batch
            return super().look_up_many(imp_uids, observer)

    gateway = StopsAfterOne()
    with pool().connection() as conn:
        summary = reconcile.reconcile_account(
            conn,
            gateway,
            plan(rate=0.01),  # a 100 s wait before the next batch, were it not cut short
            on_terminal=outbox.record_terminal,
            on_drift=outbox.record_drift,
            stop=stop,
        )
    assert len(gateway.batches) == 1 and summary.looked_up == 100
    assert summary.messages == ["stopped: the process is stopping"]
