"""GET /metrics: Prometheus text, no API key.

Process metrics of every API and worker process are merged from Redis (see app/kit/metrics.py);
the job gauges are read from Postgres at scrape time, with a short timeout and a short cache so
that frequent scrapes of a large table stay cheap.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Generic, TypeVar

import structlog
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.jobs.queries import oldest_waiting_age, status_counts
from app.jobs.status import ALL
from app.kit.db import pool
from app.kit.metrics import MergedCollector
from app.webhooks.claims import OLDEST_PENDING

router = APIRouter(tags=["health"])
log = structlog.get_logger(__name__)

CACHE_SECONDS = 5.0
T = TypeVar("T")
STATEMENT_TIMEOUT_MS = 2000


class CachedRead(ABC, Generic[T]):
    """Figures read from Postgres at scrape time, kept CACHE_SECONDS; None while it is down."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self._at = 0.0
        self._cached: T | None = None

    def clear(self) -> None:
        """Forget the cached figures (tests)."""
        with self._lock:
            self._cached = None

    @abstractmethod
    def _read(self) -> T:
        """The figures, read now."""

    def cached(self) -> T | None:
        with self._lock:
            if self._cached is None or time.monotonic() - self._at > CACHE_SECONDS:
                try:
                    self._cached = self._read()
                    self._at = time.monotonic()
                except Exception as exc:  # the scrape must answer during an outage
                    log.warning(f"metrics_{self._what}_unavailable", error=type(exc).__name__)
                    self._cached = None
            return self._cached


class JobsCollector(CachedRead[tuple[dict[str, int], float | None]], Collector):
    """Jobs by status and the oldest waiting job's age, from Postgres."""

    def __init__(self) -> None:
        super().__init__("jobs")

    def _read(self) -> tuple[dict[str, int], float | None]:
        with pool().connection() as conn, conn.transaction(force_rollback=True):
            conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            return status_counts(conn), oldest_waiting_age(conn)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "stockout_database_up", "1 when this scrape could read the jobs table, else 0."
        )
        cached = self.cached()
        up.add_metric([], 1.0 if cached is not None else 0.0)
        yield up
        if cached is None:
            return
        counts, oldest = cached
        jobs = GaugeMetricFamily("stockout_jobs", "Jobs by status.", labels=["status"])
        for status in ALL:
            jobs.add_metric([status.value], counts[status.value])
        yield jobs
        age = GaugeMetricFamily(
            "stockout_oldest_waiting_job_age_seconds",
            "Age of the oldest job not yet in a terminal status (0 when none).",
        )
        age.add_metric([], oldest or 0.0)
        yield age


class WebhooksCollector(CachedRead[list[tuple[str, float]]], Collector):
    """The oldest pending webhook message's age per endpoint, from Postgres (cached briefly)."""

    def __init__(self) -> None:
        super().__init__("webhooks")

    def _read(self) -> list[tuple[str, float]]:
        with pool().connection() as conn, conn.transaction(force_rollback=True):
            conn.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
            found = conn.execute(OLDEST_PENDING).fetchall()
        return [(str(endpoint_id), max(float(age), 0.0)) for endpoint_id, age in found]

    def collect(self) -> Iterator[Metric]:
        cached = self.cached()
        if cached is None:
            return
        age = GaugeMetricFamily(
            "stockout_webhook_oldest_pending_age_seconds",
            "Age of the oldest webhook message not yet delivered or given up, per endpoint id.",
            labels=["endpoint_id"],
        )
        for endpoint_id, seconds in cached:
            age.add_metric([endpoint_id], seconds)
        yield age


JOBS = JobsCollector()
WEBHOOKS = WebhooksCollector()
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(MergedCollector())
REGISTRY.register(JOBS)
REGISTRY.register(WEBHOOKS)


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    """Prometheus text format: requests, jobs by status, upstream calls by result and latency."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
