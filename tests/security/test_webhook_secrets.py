"""Webhook secrets never leave the answers to create and rotate: not the logs (API and worker
at DEBUG), not the list or delivery answers, not /metrics, not the attempt rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from devtools.embedded import free_port, wait_for_port
from devtools.launch import ROOT
from devtools.sandbox.control import SandboxControl
from tests.support.factories import auth
from tests.support.processes import service_env as process_env
from tests.support.processes import start_worker, stop, wait_until
from tests.support.webhook_receiver import running_receiver
from tests.support.webhooks import hooks_key

pytestmark = pytest.mark.slow


def test_webhook_secrets_never_leak(
    service_env: dict[str, str], sandbox: SandboxControl, tmp_path: Path
) -> None:
    env = process_env(
        **(
            service_env
            | {
                "IAMPORT_BASE_URL": sandbox.base_url,
                "LOG_LEVEL": "DEBUG",
                "LOG_JSON": "true",
                "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
            }
        )
    )
    port = free_port()
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=api_log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = start_worker(env, worker_log, concurrency=4)
    key = hooks_key()
    uids = [f"imps_whleak_{i}" for i in range(4)]
    sandbox.create_payments([{"imp_uid": u, "amount": 1000} for u in uids])
    answers: list[str] = []
    try:
        wait_for_port(port, 30)
        with (
            running_receiver() as receiver,
            httpx.Client(base_url=f"http://127.0.0.1:{port}") as http,
        ):
            created = http.post(
                "/v1/webhook-endpoints", json={"url": receiver.url}, headers=auth(key)
            ).json()
            receiver.secrets.append(created["secret"])
            endpoint = created["id"]
            for n, chunk in enumerate((uids[:2], uids[2:])):
                body = {
                    "event_id": f"whleak-{n}",
                    "sku": "S",
                    "payments": [{"imp_uid": u} for u in chunk],
                }
                assert (
                    http.post("/v1/stockout-events", json=body, headers=auth(key)).status_code
                    == 202
                )

                def delivered(n: int = n) -> bool:
                    return len(receiver.accepted()) == 3 * (n + 1)

                wait_until(delivered, 60, "the messages")
                if n == 0:
                    rotated = http.post(
                        f"/v1/webhook-endpoints/{endpoint}/rotate-secret", headers=auth(key)
                    ).json()
                    receiver.secrets.append(rotated["secret"])
            assert receiver.unverified == []
            for path in (
                "/v1/webhook-endpoints",
                f"/v1/webhook-endpoints/{endpoint}",
                f"/v1/webhook-endpoints/{endpoint}/deliveries",
                "/metrics",
            ):
                answers.append(http.get(path, headers=auth(key)).text)
    finally:
        stop(worker)
        stop(api)
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        stored = [str(r) for r in conn.execute("SELECT * FROM webhook_attempts")]
        stored += [str(r) for r in conn.execute("SELECT * FROM webhook_messages")]
    places = {
        "api log": api_log.read_text(errors="replace"),
        "worker log": worker_log.read_text(errors="replace"),
        "answers": "\n".join(answers),
        "rows": "\n".join(stored),
    }
    assert "webhook_attempt" in places["worker log"], "the worker should log its attempts"
    for secret in receiver.secrets:
        for raw in (secret, secret.removeprefix("whsec_")):
            assert [where for where, text in places.items() if raw in text] == []
