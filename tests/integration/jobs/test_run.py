"""The run against the sandbox: lease loss, the send-time fence, crashes, odd payloads."""

from __future__ import annotations

import random
import uuid
from typing import Any

import psycopg
import pytest

from app.config import Settings, get_settings
from app.jobs import store
from app.jobs.run import run_job
from app.kit.db import pool
from app.kit.redis_conn import get_redis
from app.upstream.contract import CallObserver
from app.upstream.iamport.client import IamportClient
from app.upstream.payment import Payment
from app.webhooks import outbox
from devtools.sandbox.control import SandboxControl
from tests.support.factories import auth, event
from tests.support.settings import reset_caches


@pytest.fixture
def iamport(
    sandbox: SandboxControl, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> SandboxControl:
    monkeypatch.setenv("IAMPORT_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("IAMPORT_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("CANCEL_SETTLE_SECONDS", "30")
    reset_caches()
    return sandbox


def new_job(api: Any, key: str, iamport: SandboxControl, imp_uid: str, **spec: Any) -> uuid.UUID:
    iamport.create_payment(imp_uid=imp_uid, **spec)
    body = event(1)
    body["payments"] = [{"imp_uid": imp_uid}]
    r = api.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    return uuid.UUID(r.json()["jobs"][0]["id"])


def claim(job_id: uuid.UUID, settings: Settings | None = None) -> store.Claimed:
    settings = settings or get_settings()
    with pool().connection() as conn:
        job = store.claim(conn, job_id, settings.lease_seconds, settings.cancel_settle_seconds)
    assert job is not None
    return job


def run(
    job: store.Claimed, client: IamportClient | None = None, settings: Settings | None = None
) -> str:
    settings = settings or get_settings()
    client = client or IamportClient.from_settings(settings, get_redis())
    with pool().connection() as conn:
        return run_job(conn, client, job, settings, random.Random(1), outbox.record_terminal)


def mutating_calls(iamport: SandboxControl) -> list[str]:
    return [c["call"] for c in iamport.calls() if c["call"] not in ("token", "lookup")]


def job_row(job_id: uuid.UUID) -> dict[str, Any]:
    with pool().connection() as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        found = cur.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert found is not None
    return found


def test_a_run_whose_lease_passed_to_another_sends_nothing(
    api: Any, key: str, iamport: SandboxControl
) -> None:
    job_id = new_job(api, key, iamport, "imps_lease_lost")
    stale = claim(job_id)
    with pool().connection() as conn:  # the lease runs out and another worker takes the job
        conn.execute(
            "UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = %s", (job_id,)
        )
    claim(job_id)
    assert run(stale) == "lease_lost"
    assert mutating_calls(iamport) == []
    assert job_row(job_id)["status"] == "running"  # still the other worker's


class NoTimeLeft(Settings):
    """A lease that leaves less than the send margin: as if the worker had stalled."""

    @property
    def send_margin_seconds(self) -> float:
        return self.lease_seconds + 1


def test_the_send_time_fence_holds_a_call_back(api: Any, key: str, iamport: SandboxControl) -> None:
    job_id = new_job(api, key, iamport, "imps_fenced")
    settings = NoTimeLeft()
    assert run(claim(job_id, settings), settings=settings) == "retry_wait"
    assert mutating_calls(iamport) == []  # written ahead, then held back: never sent
    got = job_row(job_id)
    assert got["uncertain_call"] is None and got["attempts"] == 0
    with pool().connection() as conn:
        outcome = conn.execute(
            "SELECT call, outcome FROM attempts WHERE job_id = %s AND call = 'cancel'", (job_id,)
        )
        assert outcome.fetchall() == [("cancel", "not_sent")]
    assert run(claim_when_due(job_id)) == "cancelled"  # and the next run goes ahead


def claim_when_due(job_id: uuid.UUID) -> store.Claimed:
    with pool().connection() as conn:
        conn.execute("UPDATE jobs SET next_attempt_at = now() WHERE id = %s", (job_id,))
    return claim(job_id)


class CrashesAfterSending(IamportClient):
    """A fault of our own code right after iamport applied the cancel."""

    def void_barcode(self, imp_uid: str, observer: CallObserver | None = None) -> Payment:
        super().void_barcode(imp_uid, observer)
        raise KeyError("a bug of ours")


def test_a_crashing_run_is_recorded_retried_and_bounded(
    api: Any, key: str, iamport: SandboxControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_MAX_IDLE_RUNS", "2")
    reset_caches()
    settings = get_settings()
    job_id = new_job(api, key, iamport, "imps_crash")
    crashing = CrashesAfterSending.from_settings(settings, get_redis())
    assert run(claim(job_id), crashing) == "retry_wait"
    got = job_row(job_id)
    assert got["uncertain_call"] == "cancel"  # the cancel may have applied: it did
    assert got["error"]["message"] == "the run failed: KeyError" and got["idle_runs"] == 1
    # The next run looks first, sees the cancel applied, and credits it to us.
    assert run(claim_when_due(job_id)) == "cancelled"
    assert job_row(job_id)["cancellation"]["cancelled_by"] == "service"
    assert mutating_calls(iamport) == ["cancel"]


def test_runs_that_keep_crashing_end_failed_plainly(
    api: Any, key: str, iamport: SandboxControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_MAX_IDLE_RUNS", "2")
    reset_caches()
    job_id = new_job(api, key, iamport, "imps_crash_more", status="paid")

    class CrashesOnLookup(IamportClient):
        def look_up(self, imp_uid: str, observer: CallObserver | None = None) -> Payment:
            raise ValueError("odd")

    crashing = CrashesOnLookup.from_settings(get_settings(), get_redis())
    with pool().connection() as conn:
        conn.execute("UPDATE jobs SET look_first = true WHERE id = %s", (job_id,))
    assert run(claim(job_id), crashing) == "retry_wait"
    assert run(claim_when_due(job_id), crashing) == "failed"
    assert "gave up after 2 runs" in job_row(job_id)["error"]["message"]


@pytest.mark.parametrize(
    "faults",
    [
        {"odd_timestamps_rate": 1.0},
        {"missing_history_rate": 1.0},
        {"unknown_status_rate": 1.0, "calls": ["lookup"]},
    ],
)
def test_odd_payloads_never_strand_a_job(
    api: Any, key: str, iamport: SandboxControl, faults: dict[str, Any]
) -> None:
    job_id = new_job(api, key, iamport, f"imps_odd_{len(str(faults))}")
    iamport.set_faults(seed=3, **faults)
    status = run(claim(job_id))
    for _ in range(3):
        if status != "retry_wait":
            break
        iamport.clear_faults()
        status = run(claim_when_due(job_id))
    assert status == "cancelled"
    got = job_row(job_id)
    assert (
        got["cancellation"]["cancelled_at"] is None or got["cancellation"]["cancelled_at"] > "2000"
    )
    assert mutating_calls(iamport) == ["cancel"]


def test_a_401_is_repeated_once_with_a_fresh_token_in_the_same_run(
    api: Any, key: str, iamport: SandboxControl
) -> None:
    job_id = new_job(api, key, iamport, "imps_401")
    settings = get_settings()
    client = IamportClient.from_settings(settings, get_redis())
    client.tokens.get()  # a token cached, then expired at iamport: the cancel meets a 401
    iamport.expire_tokens()
    assert run(claim(job_id), client) == "cancelled"
    with pool().connection() as conn:
        outcomes = conn.execute(
            "SELECT outcome FROM attempts WHERE job_id = %s AND call = 'cancel' ORDER BY id",
            (job_id,),
        ).fetchall()
    assert outcomes == [("unauthorized",), ("ok",)]
    assert job_row(job_id)["attempts"] == 2 and job_row(job_id)["uncertain_call"] is None
