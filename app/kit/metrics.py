"""Prometheus metrics, gathered from every process into the API's `/metrics`.

The choice: each process keeps its own prometheus_client registry (HTTP requests, upstream
calls, jobs finished) and a daemon thread, started lazily by the first observation, writes a
JSON snapshot of it to Redis every few seconds and once more at exit:
`stockout:metrics:<hostname>:<pid>` with a TTL, listed in the sorted set
`stockout:metrics:procs`. A scrape of the API's `/metrics` sums the live snapshots of all
processes (plus its own live registry) into one counter or histogram per label set, and adds
the job gauges read from Postgres at scrape time.

Why not prometheus-client's multiprocess mode: it shares files in one directory, so it only
works on one host, and it needs an environment variable the contract does not have. Why not
a metrics port per worker: the scraper would have to discover every worker. Redis is already
shared by every process, so nothing but the contract's variables is needed.

What it costs: a process that ends stops being counted once its snapshot expires, which
Prometheus sees as a counter reset (`rate()` and `increase()` handle those). Up to one push
interval of a killed process's observations is lost. Labels never carry secrets, ids or
free text: method, route template, status, call, outcome.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import redis
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

KEY_PREFIX = "stockout:metrics:"
PROCS_KEY = "stockout:metrics:procs"
PUSH_INTERVAL_SECONDS = 5.0
SNAPSHOT_TTL_SECONDS = 60
# Latency buckets in seconds: the API answers in milliseconds, iamport in tens of them.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class UpstreamRecord(Protocol):
    """What a CallRecord offers (app.upstream.iamport.client.CallRecord)."""

    @property
    def call(self) -> str: ...

    @property
    def duration_ms(self) -> int: ...

    @property
    def outcome(self) -> str: ...


class _Local:
    """This process's registry and metrics; made afresh in a forked child."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "stockout_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "stockout_http_request_duration_seconds",
            "HTTP request latency, by method and route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.upstream_calls = Counter(
            "stockout_upstream_calls",
            "Calls to the gateway, by account, call (token, lookup, cancel) and result.",
            ["account", "call", "outcome"],
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "stockout_upstream_call_duration_seconds",
            "Latency of calls to the gateway, by account and call.",
            ["account", "call"],
            buckets=UPSTREAM_BUCKETS,
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "stockout_jobs_finished",
            "Jobs that reached a terminal status, by account and status.",
            ["account", "status"],
            registry=self.registry,
        )
        self.drift = Counter(
            "stockout_drift",
            "Drift records: finished jobs whose payment at the gateway contradicts them, by "
            "account and kind.",
            ["account", "kind"],
            registry=self.registry,
        )
        self.runs_crashed = Counter(
            "stockout_job_runs_crashed",
            "Job runs that raised; the job is retried, and failed once its runs keep failing.",
            registry=self.registry,
        )
        self.jobs_given_up = Counter(
            "stockout_jobs_given_up",
            "Jobs failed because their runs kept learning nothing (a bound, not an answer).",
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "stockout_webhook_deliveries",
            "Webhook delivery attempts, by outcome (delivered, http_error, redirect, timeout, "
            "connection_error, blocked_address).",
            ["outcome"],
            registry=self.registry,
        )


_lock = threading.Lock()
_local = _Local()
_pusher_pid: int | None = None  # the pid whose pusher thread runs; a forked child has none
_redis_factory: Callable[[], redis.Redis] | None = None


def _after_fork_in_child() -> None:
    # A forked child (Celery prefork) must not report its parent's counts as its own.
    global _local, _pusher_pid, _lock
    _lock = threading.Lock()
    _local = _Local()
    _pusher_pid = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def process_key() -> str:
    """This process's snapshot key."""
    return f"{KEY_PREFIX}{socket.gethostname()}:{os.getpid()}"


def set_redis_factory(factory: Callable[[], redis.Redis] | None) -> None:
    """Use `factory` for the Redis client (tests); default: app.kit.redis_conn.get_redis."""
    global _redis_factory
    _redis_factory = factory


def _redis() -> redis.Redis:
    if _redis_factory is not None:
        return _redis_factory()
    from app.kit.redis_conn import get_redis

    return get_redis()


# -- observing -------------------------------------------------------------------------------


def observe_upstream(record: UpstreamRecord, account: str = "default") -> None:
    """Count one upstream call of the account by call and result, and time it."""
    local = _local
    local.upstream_calls.labels(account, record.call, record.outcome).inc()
    seconds = max(record.duration_ms, 0) / 1000
    local.upstream_duration.labels(account, record.call).observe(seconds)
    _ensure_pusher()


def job_finished(status: str, account: str = "default") -> None:
    """Count a job of the account reaching a terminal status."""
    _local.jobs_finished.labels(account, status).inc()
    _ensure_pusher()


def drift_recorded(kind: str, account: str = "default") -> None:
    """Count a drift a reconciliation recorded on a job of the account."""
    _local.drift.labels(account, kind).inc()
    _ensure_pusher()


def run_crashed() -> None:
    """Count a job run that raised."""
    _local.runs_crashed.inc()
    _ensure_pusher()


def job_given_up() -> None:
    """Count a job failed by the bound on runs that learn nothing."""
    _local.jobs_given_up.inc()
    _ensure_pusher()


def webhook_delivery(outcome: str) -> None:
    """Count one webhook delivery attempt by outcome."""
    _local.webhook_deliveries.labels(outcome).inc()
    _ensure_pusher()


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request and time it (route is the template, never the path)."""
    method = method if method in HTTP_METHODS else "OTHER"
    local = _local
    local.http_requests.labels(method, route, str(status)).inc()
    local.http_duration.labels(method, route).observe(seconds)
    _ensure_pusher()


# -- snapshots -------------------------------------------------------------------------------

Sample = tuple[str, dict[str, str], float]


def _families(registry: CollectorRegistry) -> list[dict[str, Any]]:
    out = []
    for family in registry.collect():
        samples = [
            [s.name, dict(s.labels), s.value]
            for s in family.samples
            # A creation time cannot be summed across processes.
            if not s.name.endswith("_created")
        ]
        out.append(
            {
                "name": family.name,
                "type": family.type,
                "doc": family.documentation,
                "samples": samples,
            }
        )
    return out


def snapshot() -> dict[str, Any]:
    """This process's samples as plain JSON-able data."""
    return {"at": time.time(), "families": _families(_local.registry)}


def push(client: redis.Redis | None = None) -> None:
    """Write this process's snapshot to Redis now."""
    r = client if client is not None else _redis()
    key = process_key()
    data = json.dumps(snapshot(), separators=(",", ":"))
    pipe = r.pipeline(transaction=False)
    pipe.set(key, data, ex=SNAPSHOT_TTL_SECONDS)
    pipe.zadd(PROCS_KEY, {key: time.time()})
    pipe.execute()


def _push_quietly() -> None:
    try:
        push()
    except Exception as exc:  # Redis down or not configured: metrics must never break work
        log.debug("metrics_push_failed", error=type(exc).__name__)


def _pusher_loop(pid: int) -> None:
    while _pusher_pid == pid:
        time.sleep(PUSH_INTERVAL_SECONDS)
        if _pusher_pid != pid:
            return
        _push_quietly()


def _ensure_pusher() -> None:
    global _pusher_pid
    pid = os.getpid()
    if _pusher_pid == pid:
        return
    with _lock:
        if _pusher_pid == pid:
            return
        _pusher_pid = pid
        thread = threading.Thread(
            target=_pusher_loop, args=(pid,), name="metrics-pusher", daemon=True
        )
        thread.start()


@atexit.register
def _push_at_exit() -> None:
    if _pusher_pid == os.getpid():
        _push_quietly()


def live_snapshots(client: redis.Redis, exclude: str | None = None) -> list[dict[str, Any]]:
    """The snapshots of every process that pushed within the TTL (except `exclude`)."""
    now = time.time()
    client.zremrangebyscore(PROCS_KEY, "-inf", now - SNAPSHOT_TTL_SECONDS)
    keys = [
        k.decode() if isinstance(k, bytes) else str(k)
        for k in client.zrangebyscore(PROCS_KEY, now - SNAPSHOT_TTL_SECONDS, "+inf")
    ]
    keys = [k for k in keys if k != exclude]
    if not keys:
        return []
    out = []
    for raw in client.mget(keys):
        if raw is None:
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("families"), list):
            out.append(data)
    return out


def merge(snapshots: Iterable[dict[str, Any]]) -> list[Metric]:
    """Sum samples with the same family, sample name and labels across snapshots."""
    meta: dict[str, tuple[str, str]] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for snap in snapshots:
        for family in snap.get("families", []):
            try:
                name, kind, doc = str(family["name"]), str(family["type"]), str(family["doc"])
                samples = family["samples"]
            except (KeyError, TypeError):
                continue
            meta.setdefault(name, (kind, doc))
            acc = sums.setdefault(name, {})
            for sample in samples:
                try:
                    sname, labels, value = sample
                    key = (str(sname), tuple(sorted((str(k), str(v)) for k, v in labels.items())))
                    acc[key] = acc.get(key, 0.0) + float(value)
                except (TypeError, ValueError, AttributeError):
                    continue
    metrics = []
    for name, acc in sums.items():
        kind, doc = meta[name]
        metric = Metric(name, doc, kind)
        for (sname, labels), value in sorted(acc.items(), key=_bucket_order):
            metric.add_sample(sname, dict(labels), value)
        metrics.append(metric)
    return metrics


def _bucket_order(item: tuple[tuple[str, tuple[tuple[str, str], ...]], float]) -> Any:
    # Histogram buckets must come out in increasing `le` within a label set.
    (sname, labels), _ = item
    rest = tuple(kv for kv in labels if kv[0] != "le")
    le = next((float(v) for k, v in labels if k == "le"), 0.0)
    return (rest, sname, le)


class MergedCollector(Collector):
    """This process's live metrics plus every other process's latest snapshot from Redis."""

    def __init__(self, client: Callable[[], redis.Redis] | None = None) -> None:
        self._client = client or _redis

    def collect(self) -> Iterator[Metric]:
        snaps = [snapshot()]
        try:
            snaps.extend(live_snapshots(self._client(), exclude=process_key()))
        except Exception as exc:  # Redis down: answer with what this process has
            log.warning("metrics_snapshots_unavailable", error=type(exc).__name__)
        yield from merge(snaps)
