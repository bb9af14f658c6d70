"""`stockout reconcile` as an operator runs it: against the test database and the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest

from app.cli.reconcile import parse_since
from app.jobs import store
from app.jobs.decide import Method, OnPaid
from app.kit.db import pool
from devtools.launch import ROOT
from devtools.sandbox.control import SandboxControl


@pytest.fixture
def env(service_env: dict[str, str], sandbox: SandboxControl) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IAMPORT_", "ACCOUNTS_FILE", "STOCKOUT_API", "RECONCILE_"))
    }
    return {**clean, **service_env, "IAMPORT_BASE_URL": sandbox.base_url, "COLUMNS": "200"}


def stockout(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "reconcile", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def job(imp_uid: str, status: str) -> uuid.UUID:
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
        conn.execute(
            "UPDATE jobs SET status = %s, finished_at = now() WHERE id = %s", (status, made["id"])
        )
    return uuid.UUID(str(made["id"]))


def status_of(job_id: uuid.UUID) -> str:
    with pool().connection() as conn:
        found = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert found is not None
    return str(found[0])


def test_json_summary_and_a_dry_run_first(env: dict[str, str], sandbox: SandboxControl) -> None:
    sandbox.create_payments(
        [
            {"imp_uid": "imp_cli_1", "status": "paid"},
            {"imp_uid": "imp_cli_2", "status": "paid"},
        ]
    )
    held = job("imp_cli_1", "needs_refund")
    job("imp_cli_2", "cancelled")
    sandbox.admin("imp_cli_1", "refund")

    dry = stockout("--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    body = json.loads(dry.stdout)
    assert body["dry_run"] is True
    (default,) = body["accounts"]
    assert default["looked_up"] == 2 and default["calls"] == 1
    assert default["moved"] == {"refunded_upstream": 1}
    assert default["drift"] == {"cancelled_but_paid": 1}
    assert status_of(held) == "needs_refund"

    real = stockout("--account", "default", env=env)
    assert real.returncode == 0, real.stderr
    out = real.stdout
    for heading in ("looked up", "unchanged", "moved", "drift", "errors"):
        assert heading in out
    assert "refunded_upstream 1" in out and "cancelled_but_paid 1" in out
    assert status_of(held) == "refunded"
    assert {e["call"] for e in sandbox.calls()} == {"token", "lookup"}


def test_bad_input_gets_a_plain_answer(env: dict[str, str]) -> None:
    bad = stockout("--since", "last tuesday", env=env)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --since 'last tuesday': give an RFC 3339 time")
    assert "Traceback" not in bad.stderr
    unknown = stockout("--account", "nope", env=env)
    assert unknown.returncode == 1
    assert unknown.stderr == "error: no account 'nope'; configured: default\n"


def test_errors_make_the_exit_status_1(env: dict[str, str]) -> None:
    job("imp_cli_down", "needs_refund")
    down = stockout("--json", env={**env, "IAMPORT_BASE_URL": "http://127.0.0.1:9"})
    assert down.returncode == 1
    (default,) = json.loads(down.stdout)["accounts"]
    assert default["errors"] == 1 and default["looked_up"] == 0


def test_parse_since() -> None:
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    assert parse_since("36h", now) == datetime(2026, 12, 6, tzinfo=UTC)
    assert parse_since("2026-12-05T00:00:00Z") == datetime(2026, 12, 5, tzinfo=UTC)
    assert parse_since("2026-12-05") == datetime(2026, 12, 5, tzinfo=UTC)
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_since("soon")


def test_missing_credentials_are_said_plainly(env: dict[str, str]) -> None:
    bare = {k: v for k, v in env.items() if not k.startswith("IAMPORT_IMP_")}
    answer = stockout("--json", env=bare)
    assert answer.returncode == 1 and "Traceback" not in answer.stderr
    (default,) = json.loads(answer.stdout)["accounts"]
    assert default["errors"] == 1
    assert default["messages"] == ["account default is not a v1 account with its credentials"]
