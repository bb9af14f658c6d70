"""Recent activity for dashboards: jobs finished per minute, upstream calls and their latency.

Read from Postgres (attempts and jobs carry the times), so the figures are the same whichever
process made the calls, and no request waits on Redis.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.schemas import Activity, MinuteCounts, UpstreamCalls, UpstreamLatency

DEFAULT_MINUTES = 30
MAX_MINUTES = 180

FINISHED = """
SELECT date_trunc('minute', finished_at) AS minute, status, count(*) AS n FROM jobs
WHERE finished_at >= date_trunc('minute', now()) - make_interval(mins => :m - 1)
GROUP BY 1, 2
"""
CALLS = """
SELECT call, outcome, count(*) AS n FROM attempts
WHERE started_at >= now() - make_interval(mins => :m) AND outcome IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2
"""
LATENCY = """
SELECT call, count(*) AS n,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99,
    max(duration_ms) AS max
FROM attempts
WHERE started_at >= now() - make_interval(mins => :m) AND duration_ms IS NOT NULL
GROUP BY 1 ORDER BY 1
"""


def _ms(value: float | None) -> float | None:
    return round(float(value), 1) if value is not None else None


def recent_activity(session: Session, minutes: int = DEFAULT_MINUTES) -> Activity:
    """The last `minutes` minutes: one entry per minute (oldest first), calls and latency."""
    minutes = max(1, min(minutes, MAX_MINUTES))
    now_minute = session.execute(text("SELECT date_trunc('minute', now())")).scalar_one()
    series = {now_minute - timedelta(minutes=k): dict[str, int]() for k in range(minutes)}
    for row in session.execute(text(FINISHED), {"m": minutes}):
        if row.minute in series:
            series[row.minute][row.status] = int(row.n)
    calls = [
        UpstreamCalls(call=r.call, outcome=r.outcome, count=int(r.n))
        for r in session.execute(text(CALLS), {"m": minutes})
    ]
    latency = [
        UpstreamLatency(
            call=r.call,
            count=int(r.n),
            p50_ms=_ms(r.p50),
            p95_ms=_ms(r.p95),
            p99_ms=_ms(r.p99),
            max_ms=_ms(r.max),
        )
        for r in session.execute(text(LATENCY), {"m": minutes})
    ]
    return Activity(
        window_minutes=minutes,
        finished_per_minute=[MinuteCounts(minute=m, counts=c) for m, c in sorted(series.items())],
        upstream_calls=calls,
        upstream_latency=latency,
    )
