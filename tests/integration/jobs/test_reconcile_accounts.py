"""Reconciliation over configured accounts against the sandbox: lookups only (iamport's in
batches, PortOne V2's one a payment), paced to the account's share of its rate, one account's
outage not stopping the others."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.config import get_settings
from app.jobs import store
from app.jobs.decide import Method, OnPaid
from app.jobs.reconcile import (
    LOCK_KEY,
    LOCK_SECONDS,
    UnknownAccountName,
    reconcile_all,
)
from app.kit.db import pool
from app.kit.redis_conn import get_redis
from app.webhooks import outbox
from devtools.sandbox.control import SandboxControl
from tests.support.settings import reset_caches

ACCOUNTS = """
[accounts.main]
api = "v1"
imp_key = "main_key"
imp_secret_env = "TEST_MAIN_SECRET"
base_url = "{sandbox}"
max_rps = 10

[accounts.down]
api = "v1"
imp_key = "down_key"
imp_secret_env = "TEST_MAIN_SECRET"
base_url = "http://127.0.0.1:9"

[accounts.shop2]
api = "v2"
api_secret_env = "TEST_V2_SECRET"
store_id = "store-test"
base_url = "{sandbox}"
"""


@pytest.fixture(autouse=True)
def accounts(
    service_env: dict[str, str],
    sandbox: SandboxControl,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> SandboxControl:
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS.format(sandbox=sandbox.base_url))
    monkeypatch.setenv("ACCOUNTS_FILE", str(path))
    monkeypatch.setenv("TEST_MAIN_SECRET", "main-secret")
    monkeypatch.setenv("TEST_V2_SECRET", "v2-secret")
    monkeypatch.setenv("IAMPORT_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("RECONCILE_RPS_SHARE", "0.2")  # 10 rps: 2 lookups a second
    reset_caches()
    sandbox.add_merchant("main_key", "main-secret")
    return sandbox


def job(account: str, imp_uid: str, status: str, finished: bool = True) -> uuid.UUID:
    new = store.NewEvent(
        account,
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
        conn.execute(
            "UPDATE jobs SET status = %s, finished_at = CASE WHEN %s THEN now() END, "
            "payment_status = %s, updated_at = now() - interval '1 hour' WHERE id = %s",
            (status, finished, "cancelled" if status == "cancelled" else "ready", made["id"]),
        )
    return uuid.UUID(str(made["id"]))


def row(job_id: uuid.UUID) -> dict[str, Any]:
    with pool().connection() as conn:
        found = (
            conn.cursor(row_factory=psycopg.rows.dict_row)
            .execute("SELECT * FROM jobs WHERE id = %s", (job_id,))
            .fetchone()
        )
    assert found is not None
    return found


def run(**kw: Any) -> dict[str, Any]:
    with get_redis() as client:
        summaries = reconcile_all(
            get_settings(),
            client,
            on_terminal=outbox.record_terminal,
            on_drift=outbox.record_drift,
            **kw,
        )
    return {s.account: s for s in summaries}


def test_each_account_in_turn_with_lookups_only(accounts: SandboxControl) -> None:
    sb = accounts
    specs = [
        {"imp_uid": f"imp_main_{n:03}", "imp_key": "main_key", "status": "paid"} for n in range(150)
    ]
    sb.create_payments(specs)
    held = [job("main", s["imp_uid"], "needs_refund") for s in specs[:3]]
    cancelled = [job("main", s["imp_uid"], "cancelled") for s in specs[3:]]
    sb.admin(specs[0]["imp_uid"], "refund")  # refunded in iamport's admin
    job("down", "imp_down_1", "needs_refund")
    sb.v2.add_store("store-test", "v2-secret")
    for payment_id in ("pay-v2-1", "pay-v2-2", "pay-v2-3"):
        sb.v2.create_payment(
            payment_id=payment_id, store_id="store-test", amount=1000, status="PAID"
        )
    v2_held = [job("shop2", p, "needs_refund") for p in ("pay-v2-1", "pay-v2-2")]
    v2_failed = job("shop2", "pay-v2-3", "failed")
    job("shop2", "pay-v2-unknown", "needs_refund")
    sb.v2.admin_cancel("pay-v2-1", store_id="store-test")  # refunded in PortOne's console

    started = time.monotonic()
    found = run()
    elapsed = time.monotonic() - started

    main, down, shop2 = found["main"], found["down"], found["shop2"]
    assert main.looked_up == 150 and main.calls == 2 and main.errors == 0
    assert main.moved == {"refunded_upstream": 1}
    assert main.drift == {"cancelled_but_paid": 147}
    assert main.unchanged == 2
    assert elapsed >= 0.45  # two lookups at two a second: the second waits half a second
    assert down.errors == 1 and down.looked_up == 0 and down.messages
    # PortOne V2 has no batch lookup: one a payment, the unknown one absent, as on iamport.
    assert shop2.skipped is None and shop2.looked_up == 4 and shop2.calls == 4, shop2
    assert shop2.moved == {"refunded_upstream": 1, "needs_refund": 1} and shop2.errors == 0
    assert row(v2_held[0])["status"] == "refunded"
    assert row(v2_held[0])["refund"]["refunded_by"] == "upstream"
    assert row(v2_held[1])["status"] == "needs_refund"
    assert row(v2_failed)["status"] == "queued"  # paid since it failed: its run decides
    assert sb.v2.calls() == []  # no call that changes a payment: lookups only

    assert row(held[0])["status"] == "refunded"
    assert row(held[0])["refund"]["refunded_by"] == "upstream"
    assert row(held[1])["status"] == "needs_refund"
    assert row(cancelled[0])["drift"]["kind"] == "cancelled_but_paid"

    log = sb.calls()
    assert {e["call"] for e in log} == {"token", "lookup"}
    assert sum(e["call"] == "lookup" for e in log) == 2
    assert all(e["imp_uid"] is None for e in log if e["call"] == "lookup")  # batch calls
    assert sb.stats()["mutating_calls"] == 0


def test_one_account_or_none_and_a_name_nobody_configured(accounts: SandboxControl) -> None:
    accounts.create_payment(imp_uid="imp_one", imp_key="main_key", status="paid")
    job("main", "imp_one", "failed")
    found = run(account="main", dry_run=True)
    assert list(found) == ["main"] and found["main"].moved == {"needs_refund": 1}
    with pytest.raises(UnknownAccountName, match="no account 'nope'"):
        run(account="nope")


def test_since_widens_the_window(accounts: SandboxControl) -> None:
    accounts.create_payment(imp_uid="imp_old", imp_key="main_key", status="paid")
    old = job("main", "imp_old", "failed")
    with pool().connection() as conn:
        conn.execute(
            "UPDATE jobs SET finished_at = now() - interval '10 days' WHERE id = %s", (old,)
        )
    assert run(account="main")["main"].looked_up == 0
    since = datetime(2020, 1, 1, tzinfo=UTC)
    assert run(account="main", since=since)["main"].moved == {"needs_refund": 1}
    assert row(old)["status"] == "queued"


def test_a_round_running_elsewhere_is_skipped_and_its_lock_left_alone(
    accounts: SandboxControl,
) -> None:
    key = LOCK_KEY.format(account="main")
    with get_redis() as client:
        client.set(key, "another-round", ex=LOCK_SECONDS)  # another process's round
        assert run(account="main")["main"].skipped == "a round is running already"
        assert client.get(key) == b"another-round"  # not ours: not released
        assert 0 < client.ttl(key) <= LOCK_SECONDS  # a dead round's lock lapses soon
        client.delete(key)
        assert run(account="main")["main"].skipped is None
        assert not client.exists(key)  # ours, released when the round ended
