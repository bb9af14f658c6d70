"""The jobs store against real Postgres: each statement's guard, one branch at a time."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from app.jobs import store
from app.jobs.decide import Method, OnPaid, Step
from app.jobs.records import UpstreamError
from app.jobs.status import JobStatus
from app.kit.db import pool, unit_of_work
from app.upstream.contract import CallRecord

LEASE, SETTLE = 30.0, 60.0


def make_jobs(n: int, *, event_id: str | None = None) -> list[uuid.UUID]:
    event_id = event_id or f"evt-{uuid.uuid4().hex[:8]}"
    jobs = [store.NewJob(f"imps_{event_id}_{i}", None, Method.CVS) for i in range(n)]
    with unit_of_work() as uow:
        intake = accept(uow.conn, event_id, jobs, OnPaid.HOLD)
    return [job["id"] for job in intake.made]


def accept(conn: Any, event_id: str, jobs: list[store.NewJob], on_paid: OnPaid) -> store.Intake:
    return store.accept_event(conn, new_event(event_id, jobs, on_paid))


def new_event(event_id: str, jobs: list[store.NewJob], on_paid: OnPaid) -> store.NewEvent:
    return store.NewEvent("default", event_id, "SKU", "out of stock", None, "h", jobs, on_paid, 0)


def row(job_id: uuid.UUID) -> dict[str, Any]:
    with pool().connection() as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        found = cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert found is not None
    return found


def set_row(job_id: uuid.UUID, sql: str) -> None:
    with pool().connection() as conn:
        conn.execute(f"UPDATE jobs SET {sql} WHERE id = %s", (job_id,))


def claim(job_id: uuid.UUID) -> store.Claimed | None:
    with pool().connection() as conn:
        return store.claim(conn, job_id, LEASE, SETTLE)


def write_ahead(job: store.Claimed, *, answered: bool = False, token: Any = None) -> int | None:
    with pool().connection() as conn:
        return store.write_ahead(
            conn,
            job.id,
            token or job.lease_token,
            Step.CANCEL,
            lease_seconds=LEASE,
            settle=SETTLE,
            answered=answered,
        )


def outcome(status: JobStatus, **kw: Any) -> store.Outcome:
    base: dict[str, Any] = {"delay": 1.0, "attempts": 1, "uncertain": None, "idle": False}
    return store.Outcome(status=status, **{**base, **kw})


def record(call: str = "lookup", out: str = "ok") -> CallRecord:
    return CallRecord(call, datetime.now(UTC), 5, 200, 0, None, out)


@pytest.fixture(autouse=True)
def _env(service_env: dict[str, str]) -> None:
    return None


def test_insert_links_each_payment_once_and_reuses_existing_jobs() -> None:
    first = make_jobs(2, event_id="e1")
    again = [
        store.NewJob("imps_e1_1", None, Method.VBANK),
        store.NewJob("new_1", None, Method.CVS),
    ]
    with unit_of_work() as uow:
        intake = accept(uow.conn, "e2", again, OnPaid.REFUND)
    assert [job["imp_uid"] for job in intake.made] == ["new_1"] and intake.linked_existing
    assert intake.made[0]["id"] not in first and intake.made[0]["status"] == "queued"
    assert row(first[1])["pay_method"] == "cvs"  # the first event's hint stays
    with pool().connection() as conn:
        links = conn.execute(
            "SELECT job_id, position FROM event_jobs WHERE event_id = 'e2' ORDER BY position"
        ).fetchall()
    assert links == [(first[1], 1), (intake.made[0]["id"], 2)]


def test_a_known_event_id_writes_nothing() -> None:
    make_jobs(1, event_id="e3")
    with unit_of_work() as uow:
        intake = accept(uow.conn, "e3", [store.NewJob("other", None, Method.CVS)], OnPaid.HOLD)
    assert intake.received_at is None and intake.made == []
    with pool().connection() as conn:
        assert conn.execute("SELECT count(*) FROM jobs WHERE imp_uid = 'other'").fetchone() == (0,)


def test_new_jobs_come_back_in_the_event_order_with_their_links() -> None:
    jobs = [store.NewJob(f"z_{9 - i}", f"o{i}", Method.CVS) for i in range(10)]
    with unit_of_work() as uow:
        intake = accept(uow.conn, "e4", jobs, OnPaid.HOLD)
    assert [job["imp_uid"] for job in intake.made] == [j.imp_uid for j in jobs]
    assert not intake.linked_existing and intake.received_at is not None
    with pool().connection() as conn:
        links = conn.execute(
            "SELECT j.imp_uid FROM event_jobs l JOIN jobs j ON j.id = l.job_id "
            "WHERE l.event_id = 'e4' ORDER BY l.position"
        ).fetchall()
    assert [r[0] for r in links] == [j.imp_uid for j in jobs]


def test_claim_takes_only_what_is_ready() -> None:
    queued, waiting, due, running, done = make_jobs(5)
    set_row(waiting, "status = 'retry_wait', next_attempt_at = now() + interval '1 hour'")
    set_row(due, "status = 'retry_wait', next_attempt_at = now() - interval '1 second'")
    set_row(
        running,
        "status = 'running', lease_token = gen_random_uuid(), lease_until = now() + interval '1 hour'",
    )
    set_row(done, "status = 'cancelled'")
    assert claim(queued) is not None
    assert claim(queued) is None  # ours now: a second claim (a duplicate message) gets nothing
    assert claim(waiting) is None and claim(running) is None and claim(done) is None
    assert claim(due) is not None
    set_row(running, "lease_until = now() - interval '1 second'")
    assert claim(running) is not None  # an expired lease is taken over


def test_claim_gives_a_job_its_own_accounts_lease() -> None:
    mine, other = make_jobs(2)
    set_row(other, "account = 'elsewhere'")  # an account the lease map does not name
    with pool().connection() as conn:
        for job_id in (mine, other):
            assert store.claim(conn, job_id, LEASE, SETTLE, {"default": 125.0}) is not None
        left: dict[uuid.UUID, float] = dict(
            conn.execute(
                "SELECT id, EXTRACT(EPOCH FROM lease_until - now()) FROM jobs WHERE id = ANY(%s)",
                ([mine, other],),
            ).fetchall()
        )
    assert 120 < left[mine] <= 125  # its account's
    assert LEASE - 5 < left[other] <= LEASE  # the default


def test_claim_reports_attempts_from_the_attempt_rows_and_the_settle_time() -> None:
    (job_id,) = make_jobs(1)
    job = claim(job_id)
    assert job is not None and job.attempts == 0 and job.settle_left == 0.0
    assert write_ahead(job) is not None  # a cancel sent, its answer never recorded (a crash)
    set_row(job_id, "lease_until = now() - interval '1 second'")
    again = claim(job_id)
    assert again is not None
    assert again.attempts == 1  # the unanswered call counts: it may have applied
    assert again.uncertain_call == "cancel" and 50 < again.settle_left <= SETTLE


def test_write_ahead_only_under_a_live_lease() -> None:
    (job_id,) = make_jobs(1)
    job = claim(job_id)
    assert job is not None
    assert write_ahead(job, token=uuid.uuid4()) is None  # someone else's token
    set_row(job_id, "lease_until = now() - interval '1 second'")
    assert write_ahead(job) is None  # our lease ran out: never send
    with pool().connection() as conn:
        assert conn.execute("SELECT count(*) FROM attempts").fetchone() == (0,)


def test_write_ahead_refuses_while_an_earlier_call_may_still_apply() -> None:
    (job_id,) = make_jobs(1)
    job = claim(job_id)
    assert job is not None and write_ahead(job) is not None
    assert write_ahead(job) is None  # unanswered and not settled: no second call
    assert write_ahead(job, answered=True) is not None  # this run got a definite answer
    set_row(job_id, f"last_call_at = now() - interval '{SETTLE + 1} seconds'")
    assert write_ahead(job) is not None  # settled by the database clock


def cancel_written_ahead() -> tuple[uuid.UUID, store.Claimed, int]:
    """A claimed job with a cancel written ahead: its id, the claim and the attempt's id."""
    (job_id,) = make_jobs(1)
    job = claim(job_id)
    assert job is not None
    attempt = write_ahead(job)
    assert attempt is not None
    return job_id, job, attempt


def test_finish_only_under_our_lease_but_keeps_the_calls() -> None:
    job_id, job, attempt = cancel_written_ahead()
    with pool().connection() as conn:
        kept = store.finish(
            conn,
            job_id,
            uuid.uuid4(),
            outcome(JobStatus.CANCELLED),
            {attempt: record("cancel")},
            [record()],
        )
    assert kept is store.Finished.LEASE_LOST
    assert row(job_id)["status"] == "running"
    with pool().connection() as conn:
        outcomes = conn.execute("SELECT call, outcome FROM attempts ORDER BY id").fetchall()
    assert outcomes == [("cancel", "ok"), ("lookup", "ok")]  # the calls happened: kept
    with pool().connection() as conn:
        err = UpstreamError(http_status=503, message="down")
        kept = store.finish(
            conn,
            job_id,
            job.lease_token,
            outcome(JobStatus.RETRY_WAIT, uncertain=Step.CANCEL, error=err),
            {},
            [],
        )
    assert kept is store.Finished.KEPT
    got = row(job_id)
    assert got["status"] == "retry_wait" and got["lease_token"] is None
    assert got["uncertain_call"] == "cancel" and got["error"]["http_status"] == 503


@pytest.mark.parametrize("enabled", [True, False])
def test_finish_alone_writes_nothing_while_a_webhook_endpoint_is_enabled(enabled: bool) -> None:
    with pool().connection() as conn:
        conn.execute(
            "INSERT INTO webhook_endpoints (url, event_types, secret, enabled) "
            "VALUES ('http://hooks.test/', '{}', 'whsec_x', %s)",
            (enabled,),
        )
    job_id, job, attempt = cancel_written_ahead()
    with pool().connection() as conn:
        finished = store.finish(
            conn,
            job_id,
            job.lease_token,
            outcome(JobStatus.CANCELLED),
            {attempt: record("cancel")},
            [record()],
            alone=True,
        )
        calls = conn.execute("SELECT call, outcome FROM attempts ORDER BY id").fetchall()
    if enabled:
        # The caller must write the transition with its messages: nothing of it is written here.
        assert finished is store.Finished.HOOKED
        assert row(job_id)["status"] == "running" and calls == [("cancel", None)]
    else:
        assert finished is store.Finished.KEPT
        assert row(job_id)["status"] == "cancelled"
        assert calls == [("cancel", "ok"), ("lookup", "ok")]


def test_take_due_is_safe_on_two_nodes_at_once() -> None:
    ids = make_jobs(60)
    set_row_all = "UPDATE jobs SET due_at = now() - interval '1 second'"
    with pool().connection() as conn:
        conn.execute(set_row_all)
    taken: list[list[uuid.UUID]] = [[], []]
    barrier = threading.Barrier(2)

    def sweep(i: int) -> None:
        with pool().connection() as conn:
            barrier.wait()
            for _ in range(10):
                taken[i] += store.take_due(conn, 7, 60)

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken[0] + taken[1]) == sorted(ids)  # every job once, none twice
    with pool().connection() as conn:
        assert store.take_due(conn, 100, 60) == []


def test_a_sweep_leaves_a_run_alone_until_its_extended_lease_ends() -> None:
    (job_id,) = make_jobs(1)
    job = claim(job_id)
    assert job is not None and write_ahead(job) is not None
    # The claim's lease end has passed, but the write-ahead extended the lease: not due.
    set_row(job_id, "due_at = now() - interval '1 second'")
    with pool().connection() as conn:
        assert store.take_due(conn, 10, 60) == []
    got = row(job_id)
    assert got["due_at"] == got["lease_until"]
    # Once the lease has ended, the next sweep sends the job out again.
    set_row(job_id, "lease_until = now() - interval '1 second', due_at = now()")
    with pool().connection() as conn:
        assert store.take_due(conn, 10, 60) == [job_id]


def test_retry_and_refund_request_move_only_their_status() -> None:
    failed, held, other = make_jobs(3)
    set_row(failed, "status = 'failed', attempts = 8")
    set_row(held, "status = 'needs_refund'")
    with unit_of_work() as uow:
        assert store.retry(uow.conn, failed, 0)
        assert not store.retry(uow.conn, failed, 0)  # once
        assert not store.retry(uow.conn, other, 0)
        assert store.request_refund(uow.conn, held, 0)
        assert not store.request_refund(uow.conn, held, 0)
    assert row(failed)["status"] == "queued" and row(failed)["retried_at"] is not None
    got = row(held)
    assert got["status"] == "queued" and got["look_first"] and got["refund_requested_at"]


def test_a_notification_never_touches_a_finished_job() -> None:
    waiting, done = make_jobs(2)
    set_row(done, "status = 'needs_refund', payment_status = 'paid'")
    with unit_of_work() as uow:
        assert store.note_news(uow.conn, "default", row(waiting)["imp_uid"]) == (
            waiting,
            JobStatus.QUEUED,
        )
        assert store.note_news(uow.conn, "default", row(done)["imp_uid"]) is None
    assert row(done)["look_first"] is False and row(waiting)["look_first"] is True


def accept_new(event_id: str, jobs: list[store.NewJob]) -> store.Intake:
    """The event loop's one-statement intake, on an autocommit connection of its own."""

    async def run() -> store.Intake:
        async with await psycopg.AsyncConnection.connect(db_url(), autocommit=True) as conn:
            return await store.accept_new_event(conn, new_event(event_id, jobs, OnPaid.HOLD))

    # A thread of its own: an earlier test in this process (the console's Playwright) may
    # have left an event loop running in the main thread.
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, run()).result()


def db_url() -> str:
    return os.environ["DATABASE_URL"]


def counts(event_id: str) -> tuple[int, int]:
    with pool().connection() as conn:
        found = conn.execute(
            "SELECT (SELECT count(*) FROM events WHERE event_id = %(e)s), "
            "(SELECT count(*) FROM event_jobs WHERE event_id = %(e)s)",
            {"e": event_id},
        ).fetchone()
    assert found is not None
    return int(found[0]), int(found[1])


def test_the_one_statement_intake_writes_all_or_nothing() -> None:
    fresh = [store.NewJob(f"n_{i}", None, Method.CVS) for i in range(3)]
    intake = accept_new("n1", fresh)
    assert [j["imp_uid"] for j in intake.made] == ["n_0", "n_1", "n_2"]
    assert counts("n1") == (1, 3)
    # One payment has a job already: the statement fails whole, nothing of "n2" is written.
    with pytest.raises(psycopg.errors.UniqueViolation):
        accept_new("n2", [store.NewJob("new_a", None, Method.CVS), fresh[1]])
    assert counts("n2") == (0, 0)
    with pool().connection() as conn:
        assert conn.execute("SELECT count(*) FROM jobs WHERE imp_uid = 'new_a'").fetchone() == (0,)
    # A known event_id writes nothing and says so.
    again = accept_new("n1", [store.NewJob("new_b", None, Method.CVS)])
    assert again.received_at is None and again.made == []
    assert counts("n1") == (1, 3)
