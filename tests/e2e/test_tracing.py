"""Traces end to end: the API under uvicorn and a worker export to a real OTLP/HTTP receiver.

One event, one payment, one webhook endpoint. Its trace must run from the API's server span
through the Celery message, the job's run and each iamport call to the webhook delivery,
every span's parent in the same trace; the attempt rows carry its id; and no attribute of any
span holds a credential, a token, an API key or a webhook secret.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devtools.embedded import free_port, wait_for_port
from devtools.launch import ROOT, api_command
from devtools.otlp_receiver import OtlpReceiver, ReceivedSpan, running_receiver
from devtools.sandbox.control import SandboxControl
from tests.support.factories import auth
from tests.support.processes import service_env as process_env
from tests.support.processes import start_worker, stop, wait_until
from tests.support.sandbox import running_sandbox
from tests.support.webhook_receiver import Receiver
from tests.support.webhook_receiver import running_receiver as running_webhook_receiver
from tests.support.webhooks import hooks_key

pytestmark = pytest.mark.slow

IMP_KEY = "trace_test_key_" + secrets.token_hex(8)
IMP_SECRET = "imp-secret-" + secrets.token_hex(16)
HOOK_TOKEN = "hook-token-" + secrets.token_hex(16)
RECEIVER_TOKEN = "receiver-token-" + secrets.token_hex(16)  # in the webhook URL's query


@pytest.fixture
def traced(service_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Sandbox, OTLP receiver, webhook receiver, uvicorn API and a worker, all traced."""
    with (
        running_sandbox(imp_key=IMP_KEY, imp_secret=IMP_SECRET, seed=5) as sandbox_url,
        running_receiver() as otlp,
        running_webhook_receiver() as hooks,
    ):
        env = service_env | dict(
            IAMPORT_BASE_URL=sandbox_url,
            IAMPORT_IMP_KEY=IMP_KEY,
            IAMPORT_IMP_SECRET=IMP_SECRET,
            IAMPORT_WEBHOOK_TOKEN=HOOK_TOKEN,
            WEBHOOK_ALLOW_PRIVATE_URLS="true",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",
            LOG_LEVEL="INFO",
            LOG_JSON="true",
        )
        # The webhook sweep may deliver a message before its wake-up does, in a trace of its
        # own; this test follows the wake-up, so no sweep runs while it does.
        sweeps = {"SWEEP_INTERVAL_SECONDS": "120"}
        env = process_env(**env) | sweeps
        port = free_port()
        api_log = tmp_path / "api.log"
        api = subprocess.Popen(
            api_command(port),
            cwd=ROOT,
            env=env,
            stdout=api_log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = start_worker(env, tmp_path / "worker.log", concurrency=4)
        try:
            wait_for_port(port, 30)
            yield {
                "api": f"http://127.0.0.1:{port}",
                "sandbox": sandbox_url,
                "db": env["DATABASE_URL"],
                "otlp": otlp,
                "hooks": hooks,
                "logs": [api_log, tmp_path / "worker.log"],
            }
        finally:
            stop(worker)
            stop(api)


def in_trace(otlp: OtlpReceiver, trace_id: str) -> list[ReceivedSpan]:
    return [s for s in otlp.spans() if s.trace_id == trace_id]


def named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def test_one_trace_from_intake_to_gateway_and_webhook(traced: dict[str, Any]) -> None:
    otlp: OtlpReceiver = traced["otlp"]
    hooks: Receiver = traced["hooks"]
    key = hooks_key()
    imp_uid = "imps_trace_" + secrets.token_hex(4)
    with (
        SandboxControl(traced["sandbox"]) as sandbox,
        httpx.Client(base_url=traced["api"], timeout=10) as http,
    ):
        sandbox.create_payments([{"imp_uid": imp_uid, "status": "ready", "amount": 1000}])
        r = http.post(
            "/v1/webhook-endpoints",
            json={"url": f"{hooks.url}?token={RECEIVER_TOKEN}", "event_types": ["job.cancelled"]},
            headers=auth(key),
        )
        assert r.status_code == 201, r.text
        webhook_secret = r.json()["secret"]
        hooks.secrets.append(webhook_secret)
        # The till guard's token travels in a query string: it must not reach a span.
        http.post(f"/v1/iamport/cvs-confirm?token={HOOK_TOKEN}", json={"imp_uid": "imps_none"})

        r = http.post(
            "/v1/stockout-events",
            json={"event_id": "trace-e2e", "sku": "SKU-1", "payments": [{"imp_uid": imp_uid}]},
            headers=auth(key),
        )
        assert r.status_code == 202, r.text
        wait_until(lambda: len(hooks.accepted()) == 1, 60, "the job.cancelled webhook")
        [intake] = wait_for(otlp, "POST /v1/stockout-events", kind="server")
        trace_id = intake.trace_id
        wait_until(
            lambda: named(in_trace(otlp, trace_id), "webhook delivery") != [],
            30,
            "the webhook delivery's span",
        )
        spans = in_trace(otlp, trace_id)

        # One trace: every span's parent is in it, up to the API's server span.
        by_id = {s.span_id: s for s in spans}
        roots = [s for s in spans if s.parent_id is None]
        assert roots == [intake], [s.name for s in roots]
        orphans = [s.name for s in spans if s.parent_id is not None and s.parent_id not in by_id]
        assert orphans == []

        def parent(span: ReceivedSpan) -> ReceivedSpan:
            assert span.parent_id is not None, span.name
            return by_id[span.parent_id]

        def ancestors(span: ReceivedSpan) -> list[str]:
            names = []
            while span.parent_id is not None:
                span = parent(span)
                names.append(span.name)
            return names

        [publish] = named(spans, "apply_async/stockout.cancel_jobs")
        assert publish.kind == "producer" and publish.service == "stockout-api"
        assert intake.span_id in (publish.parent_id, parent(publish).parent_id)
        [run] = named(spans, "run/stockout.cancel_jobs")
        assert run.kind == "consumer" and parent(run) is publish
        assert run.service == "stockout-worker"
        [job] = named(spans, "job run")
        assert parent(job) is run
        job_pid = job.resource["process.pid"]
        assert job_pid != run.resource["process.pid"]  # in a job child, when it has cores

        calls = [s for s in spans if s.name.startswith("iamport ")]
        assert {s.name for s in calls} >= {"iamport token", "iamport cancel"}
        for call in calls:
            assert job.span_id in (call.parent_id, parent(call).parent_id), ancestors(call)
            [http_call] = [
                s
                for s in spans
                if s.parent_id == call.span_id and s.name in ("GET", "POST", "DELETE")
            ]
            assert http_call.attributes.get("http.response.status_code", 200) < 600
            assert call.attributes["stockout.outcome"] == "ok"
        assert any(s.kind == "client" and s.name.startswith("POST") for s in spans)  # httpx

        [delivery] = named(spans, "webhook delivery")
        assert delivery.kind == "client"
        assert delivery.attributes["stockout.webhook.outcome"] == "delivered"
        assert delivery.attributes["server.address"] == "127.0.0.1"
        chain = ancestors(delivery)
        assert chain[:2] == [
            "run/stockout.webhooks.deliver",
            "apply_async/stockout.webhooks.deliver",
        ]
        assert "job run" in chain

        assert [s for s in spans if s.attributes.get("db.system") == "postgresql"] != []

        # The attempts remember the trace, and the API shows it.
        with psycopg.connect(traced["db"]) as conn:
            rows = conn.execute("SELECT call, trace_id FROM attempts").fetchall()
            [(job_id,)] = conn.execute("SELECT id FROM jobs").fetchall()
        assert rows and {t for _, t in rows} == {trace_id}, rows
        listed = http.get(f"/v1/jobs/{job_id}/attempts", headers=auth(key)).json()["items"]
        assert listed and {a["trace_id"] for a in listed} == {trace_id}

        token = sandbox_token(traced["sandbox"])

    [confirm] = wait_for(otlp, "POST /v1/iamport/cvs-confirm", kind="server")
    assert all(
        "?" not in str(v) for k, v in confirm.attributes.items() if "url" in k or k == "http.target"
    )

    # No secret in any attribute of any span, of this trace or another.
    forbidden = {IMP_KEY, IMP_SECRET, HOOK_TOKEN, RECEIVER_TOKEN, key, webhook_secret}
    forbidden |= {webhook_secret.removeprefix("whsec_"), token}
    leaks = [
        (s.name, k, v)
        for s in otlp.spans()
        for k, v in {**s.attributes, **s.resource}.items()
        if any(secret in str(v) for secret in forbidden)
    ]
    assert leaks == []
    assert otlp.bad_requests == 0

    # Every record of the worker's children and the API carries the trace's id when in one.
    lines = "\n".join(p.read_text() for p in traced["logs"])
    assert f'"trace_id": "{trace_id}"' in lines or f'"trace_id":"{trace_id}"' in lines


def wait_for(otlp: OtlpReceiver, name: str, kind: str) -> list[ReceivedSpan]:
    wait_until(
        lambda: any(s.name == name and s.kind == kind for s in otlp.spans()), 30, f"span {name}"
    )
    return [s for s in otlp.spans() if s.name == name and s.kind == kind]


def sandbox_token(sandbox_url: str) -> str:
    """The access token the sandbox hands out for our credentials now (the worker's too)."""
    r = httpx.post(
        f"{sandbox_url}/users/getToken",
        json={"imp_key": IMP_KEY, "imp_secret": IMP_SECRET},
        timeout=5,
    )
    return str(r.json()["response"]["access_token"])
