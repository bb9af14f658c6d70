"""/metrics: families present, job gauges from Postgres, worker snapshots merged through Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.scrape import JOBS
from app.kit import metrics
from devtools.embedded import free_port
from tests.support.factories import auth, event

ROOT = Path(__file__).resolve().parents[3]

WORKER = """
from datetime import UTC, datetime
from app.kit import metrics
from app.upstream.contract import CallRecord
for ms, outcome in ((120, "ok"), (40, "ok"), (9000, "timeout")):
    metrics.observe_upstream(CallRecord("cancel", datetime.now(UTC), ms, 200, 0, None, outcome))
metrics.job_finished("cancelled")
# No explicit push: the snapshot is written at exit.
"""


def scrape(api: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def run_worker(service_env: dict[str, str]) -> None:
    env = dict(os.environ, **service_env)
    subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=env, check=True, timeout=60)


def test_metrics_families_without_auth(api: TestClient, key: str) -> None:
    JOBS.clear()
    api.post("/v1/stockout-events", json=event(3), headers=auth(key))
    api.get("/v1/jobs", headers=auth(key))
    r = api.get("/metrics")
    assert r.status_code == 200
    text = r.text
    for family in (
        "stockout_http_requests_total",
        "stockout_http_request_duration_seconds_bucket",
        "stockout_upstream_calls_total",
        "stockout_upstream_call_duration_seconds",
        "stockout_jobs_finished_total",
        "stockout_jobs{",
        "stockout_oldest_waiting_job_age_seconds",
        "stockout_database_up 1.0",
    ):
        assert family in text, family
    samples = scrape(api)
    assert value(samples, "stockout_jobs", status="queued") == 3
    assert value(samples, "stockout_jobs", status="failed") == 0
    assert value(samples, "stockout_oldest_waiting_job_age_seconds") >= 0
    # Route templates, never raw paths.
    assert (
        value(samples, "stockout_http_requests_total", method="GET", route="/v1/jobs", status="200")
        >= 1
    )
    assert "hook-secret-token" not in text and "sandbox_secret" not in text


def test_route_label_is_the_template(api: TestClient, key: str) -> None:
    import uuid

    job_id = uuid.uuid4()
    api.get(f"/v1/jobs/{job_id}", headers=auth(key))
    api.get("/no/such/path")
    text = api.get("/metrics").text
    assert str(job_id) not in text
    assert 'route="/v1/jobs/{job_id}"' in text
    assert "/no/such/path" not in text and 'route="<unmatched>"' in text


def test_worker_snapshots_are_merged(api: TestClient, service_env: dict[str, str]) -> None:
    before = scrape(api)
    run_worker(service_env)
    run_worker(service_env)
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    mine = {"account": "default"}
    assert delta("stockout_upstream_calls_total", **mine, call="cancel", outcome="ok") == 4
    assert delta("stockout_upstream_calls_total", **mine, call="cancel", outcome="timeout") == 2
    assert delta("stockout_upstream_call_duration_seconds_count", **mine, call="cancel") == 6
    bucket = "stockout_upstream_call_duration_seconds_bucket"
    assert delta(bucket, **mine, call="cancel", le="0.25") == 4
    assert delta(bucket, **mine, call="cancel", le="+Inf") == 6
    assert delta("stockout_jobs_finished_total", **mine, status="cancelled") == 2
    # Without decode_responses, redis-py answers bytes (its stubs say bytes | str).
    keys = cast(
        list[bytes], redis.Redis.from_url(service_env["REDIS_URL"]).zrange(metrics.PROCS_KEY, 0, -1)
    )
    workers = [k for k in keys if k.decode() != metrics.process_key()]  # this process pushes too
    assert len(workers) == 2
    assert all(redis.Redis.from_url(service_env["REDIS_URL"]).ttl(k) > 0 for k in keys)


def test_expired_snapshots_drop_out(api: TestClient, service_env: dict[str, str]) -> None:
    run_worker(service_env)
    client = redis.Redis.from_url(service_env["REDIS_URL"])
    for k in cast(list[bytes], client.zrange(metrics.PROCS_KEY, 0, -1)):
        client.zadd(metrics.PROCS_KEY, {k: 1.0})  # pushed long ago
    assert metrics.live_snapshots(client) == []
    assert client.zcard(metrics.PROCS_KEY) == 0


def test_metrics_answer_with_redis_and_postgres_down(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    metrics.set_redis_factory(lambda: dead)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    from tests.support.settings import reset_caches

    reset_caches()
    JOBS.clear()
    try:
        r = api.get("/metrics")
    finally:
        metrics.set_redis_factory(None)
        JOBS.clear()
    assert r.status_code == 200
    assert "stockout_database_up 0.0" in r.text
    assert "stockout_http_requests_total" in r.text


def test_push_and_merge_in_process(service_env: dict[str, str]) -> None:
    client = redis.Redis.from_url(service_env["REDIS_URL"])
    metrics.push(client)
    snaps = metrics.live_snapshots(client)
    assert len(snaps) == 1
    merged = {m.name: m for m in metrics.merge(snaps + snaps)}
    own = {m.name: m for m in metrics.merge([metrics.snapshot()])}
    for name, family in own.items():
        for mine, both in zip(family.samples, merged[name].samples, strict=True):
            assert both.value == pytest.approx(2 * mine.value)
