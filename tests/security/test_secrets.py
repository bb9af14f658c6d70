"""The iamport secret, its tokens, the webhook token and API keys never leak.

A real run: the API under uvicorn (access log on, as operators run it) and a worker process,
both logging at DEBUG, against a sandbox with a distinctive secret that injects 5xx, timeouts
and expired tokens. Afterwards the secrets must appear in no log line, no problem details
answer, no `/metrics` page and no attempt record.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devtools.embedded import free_port, wait_for_port
from devtools.launch import ROOT
from devtools.sandbox.control import SandboxControl
from tests.support.factories import auth
from tests.support.processes import service_env as process_env
from tests.support.processes import start_worker, stop, wait_until
from tests.support.sandbox import running_sandbox

pytestmark = pytest.mark.slow

IMP_KEY = "leak_test_key"
IMP_SECRET = "imp-secret-" + secrets.token_hex(16)
HOOK_TOKEN = "hook-token-" + secrets.token_hex(16)


@pytest.fixture
def leak_stack(service_env: dict[str, str], key: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Sandbox, uvicorn API and a worker, their output captured to files."""
    with running_sandbox(imp_key=IMP_KEY, imp_secret=IMP_SECRET, seed=5) as sandbox_url:
        env = service_env | {
            "IAMPORT_BASE_URL": sandbox_url,
            "IAMPORT_IMP_KEY": IMP_KEY,
            "IAMPORT_IMP_SECRET": IMP_SECRET,
            "IAMPORT_WEBHOOK_TOKEN": HOOK_TOKEN,
            "LOG_LEVEL": "DEBUG",
            "LOG_JSON": "true",
        }
        env = process_env(**env)
        port = free_port()
        api_log = tmp_path / "api.log"
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=api_log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = start_worker(env, tmp_path / "worker.log", concurrency=8)
        try:
            wait_for_port(port, 30)
            yield {
                "api": f"http://127.0.0.1:{port}",
                "sandbox": sandbox_url,
                "db": env["DATABASE_URL"],
                "logs": [api_log, tmp_path / "worker.log"],
                "key": key,
            }
        finally:
            stop(worker)
            stop(api)


def token_now(sandbox_url: str) -> str | None:
    r = httpx.post(
        f"{sandbox_url}/users/getToken",
        json={"imp_key": IMP_KEY, "imp_secret": IMP_SECRET},
        timeout=5,
    )
    return str(r.json()["response"]["access_token"]) if r.status_code == 200 else None


def waiting(db: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE status IN ('queued','running','retry_wait')"
        ).fetchone()
    return int(row[0]) if row else -1


def test_secrets_never_leave_the_process(leak_stack: dict[str, Any]) -> None:
    api_url, sandbox_url, db, key = (leak_stack[k] for k in ("api", "sandbox", "db", "key"))
    hooks = f"{api_url}/v1/iamport"
    tokens: set[str] = set()
    answers: list[str] = []
    with SandboxControl(sandbox_url) as sandbox, httpx.Client(base_url=api_url) as http:
        confirm = f"{hooks}/cvs-confirm?token={HOOK_TOKEN}"
        uids = [f"imps_leak_{i}" for i in range(40)]
        sandbox.create_payments(
            [
                {"imp_uid": u, "amount": 1000, "confirm_url": confirm, "notice_url": confirm}
                for u in uids
            ]
        )
        sandbox.set_faults(
            error_rate=0.2,
            timeout_before_rate=0.1,
            timeout_after_rate=0.1,
            hang_seconds=1.5,
            seed=9,
        )
        for n, chunk in enumerate((uids[:20], uids[20:])):
            body = {
                "event_id": f"leak-{n}",
                "sku": "S",
                "payments": [{"imp_uid": u} for u in chunk],
            }
            r = http.post("/v1/stockout-events", json=body, headers=auth(key))
            assert r.status_code == 202, r.text
            tokens.add(token_now(sandbox_url) or "")
            sandbox.expire_tokens()  # the next call meets a 401 and fetches a new token
        wait_until(lambda: waiting(db) == 0, 90, "every job terminal", interval=0.3)
        tokens.add(token_now(sandbox_url) or "")
        tokens.discard("")
        assert tokens, "the run should have used at least one iamport token"
        # Answers that could echo something: problem details of every kind, metrics, hooks.
        probes = [
            http.get("/v1/jobs", headers={"Authorization": f"Bearer {key}x"}),  # 401
            http.get("/v1/jobs", headers={"Authorization": key}),  # 401, no scheme
            http.get("/v1/jobs/not-a-uuid", headers=auth(key)),  # 4xx
            http.post("/v1/stockout-events", content=b"{", headers=auth(key)),  # 422
            http.post(f"{hooks}/cvs-confirm?token={HOOK_TOKEN}x", json={"imp_uid": uids[0]}),
            http.post(f"{hooks}/cvs-confirm?token={HOOK_TOKEN}", content=b"garbage"),
            http.post(f"{hooks}/notifications?token={HOOK_TOKEN}", json={"imp_uid": uids[1]}),
            http.get("/metrics"),
            http.get("/readyz"),
        ]
        answers += [f"{r.status_code} {r.headers} {r.text}" for r in probes]
        for job in http.get("/v1/jobs?limit=500", headers=auth(key)).json()["items"]:
            answers.append(http.get(f"/v1/jobs/{job['id']}/attempts", headers=auth(key)).text)
        sandbox.pay(uids[2])  # confirm_url (and its token) called by "iamport"
    with psycopg.connect(db) as conn:
        stored = [str(r) for r in conn.execute("SELECT * FROM attempts")]
        stored += [str(r) for r in conn.execute("SELECT * FROM jobs")]
    logs = {p.name: p.read_text(errors="replace") for p in leak_stack["logs"]}
    assert all(len(text) > 200 for text in logs.values()), "logs should not be empty"
    assert "cvs-confirm" in logs["api.log"], "the hook calls should be in the API log"
    needles = {"imp_secret": IMP_SECRET, "webhook token": HOOK_TOKEN}
    needles["api key secret"] = key.split("_", 2)[2]  # the secret may hold "_" itself
    needles.update({f"iamport token {t[:6]}": t for t in tokens})
    places = {**logs, "answers": "\n".join(answers), "database rows": "\n".join(stored)}
    leaks = [
        f"{what} in {where}"
        for where, text in places.items()
        for what, needle in needles.items()
        if needle in text
    ]
    assert leaks == []


def test_worker_logs_go_through_the_redacting_configuration(
    service_env: dict[str, str], api: Any, key: str, tmp_path: Path
) -> None:
    """Every structlog line of a `-P threads` worker is JSON, i.e. passed app.logs.redact."""
    with running_sandbox(seed=1) as sandbox_url:
        env = process_env(
            **(service_env | {"LOG_JSON": "true"}), IAMPORT_BASE_URL=sandbox_url, LOG_LEVEL="INFO"
        )
        with SandboxControl(sandbox_url) as sandbox:
            sandbox.create_payments([{"imp_uid": "imps_logfmt", "amount": 1000}])
        worker = start_worker(env, tmp_path / "w.log", concurrency=2)
        try:
            body = {"event_id": "logfmt", "sku": "S", "payments": [{"imp_uid": "imps_logfmt"}]}
            assert api.post("/v1/stockout-events", json=body, headers=auth(key)).status_code == 202
            wait_until(lambda: waiting(env["DATABASE_URL"]) == 0, 30, "the job to finish")
        finally:
            stop(worker)
    lines = [ln for ln in (tmp_path / "w.log").read_text().splitlines() if "job_run" in ln]
    assert lines, "the worker should log each job at INFO"
    assert all(ln.lstrip().startswith("{") for ln in lines), lines[:2]
