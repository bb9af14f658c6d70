"""Recent activity for dashboards: jobs finished per minute, upstream calls and their latency.

Read from Postgres (attempts and jobs carry the times), so the figures are the same whichever
process made the calls, and no request waits on Redis.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from psycopg import Connection

from app.kit.db import rows
from app.kit.scope import Accounts, as_list, in_accounts
from app.operators.schemas import Activity, MinuteCounts, UpstreamCalls, UpstreamLatency

DEFAULT_MINUTES = 30
MAX_MINUTES = 180

FINISHED = f"""
SELECT date_trunc('minute', finished_at) AS minute, status, count(*) AS n FROM jobs
WHERE finished_at >= date_trunc('minute', now()) - make_interval(mins => %(m)s - 1)
  AND {in_accounts("account")}
GROUP BY 1, 2
"""  # noqa: S608
# Upstream health from the most recent calls in the window, at most SAMPLE_SIZE of them: at a
# few hundred calls a second, percentiles over every call of half an hour would take a second
# of Postgres time per refresh; the newest 20,000 calls (the index on started_at reads them
# in order) say as much about health for a few milliseconds.
SAMPLE_SIZE = 20_000
# A bound key's view probes each sampled call's job by its primary key (its account).
SAMPLE = """
SELECT call, outcome, duration_ms, started_at FROM attempts a
WHERE started_at >= now() - make_interval(mins => %(m)s) AND outcome IS NOT NULL
  AND (%(accounts)s::text[] IS NULL OR EXISTS (
    SELECT 1 FROM jobs j WHERE j.id = a.job_id AND j.account = ANY(%(accounts)s::text[])))
ORDER BY started_at DESC LIMIT %(n)s
"""
# One pass over the sample: counts by (call, outcome), latency by call, and the sample's span.
UPSTREAM = f"""
SELECT call, outcome, GROUPING(call) AS all_calls, GROUPING(outcome) AS all_outcomes,
    count(*) AS n, count(duration_ms) AS timed,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99,
    max(duration_ms) AS max, min(started_at) AS since
FROM ({SAMPLE}) s
GROUP BY GROUPING SETS ((call, outcome), (call), ())
ORDER BY 1, 2
"""  # noqa: S608


def _ms(value: float | None) -> float | None:
    return round(float(value), 1) if value is not None else None


def recent_activity(
    conn: Connection[Any], minutes: int = DEFAULT_MINUTES, accounts: Accounts = None
) -> Activity:
    """The last `minutes` minutes: finishes per minute (oldest first); the upstream calls."""
    seen = as_list(accounts)
    minutes = max(1, min(minutes, MAX_MINUTES))
    now_minute = rows(conn, "SELECT date_trunc('minute', now()) AS m")[0].m
    series = {now_minute - timedelta(minutes=k): dict[str, int]() for k in range(minutes)}
    for row in rows(conn, FINISHED, {"m": minutes, "accounts": seen}):
        if row.minute in series:
            series[row.minute][row.status] = int(row.n)
    calls: list[UpstreamCalls] = []
    latency: list[UpstreamLatency] = []
    sampled, since = 0, None
    for r in rows(conn, UPSTREAM, {"m": minutes, "n": SAMPLE_SIZE, "accounts": seen}):
        if r.all_calls:  # the grand total
            sampled, since = int(r.n), r.since
        elif r.all_outcomes:  # one call, every outcome
            latency.append(
                UpstreamLatency(
                    call=r.call,
                    count=int(r.timed),
                    p50_ms=_ms(r.p50),
                    p95_ms=_ms(r.p95),
                    p99_ms=_ms(r.p99),
                    max_ms=_ms(r.max),
                )
            )
        else:
            calls.append(UpstreamCalls(call=r.call, outcome=r.outcome, count=int(r.n)))
    return Activity(
        window_minutes=minutes,
        finished_per_minute=[MinuteCounts(minute=m, counts=c) for m, c in sorted(series.items())],
        upstream_calls=calls,
        upstream_latency=latency,
        upstream_sample_size=sampled,
        upstream_sample_capped=sampled >= SAMPLE_SIZE,
        upstream_since=since,
    )
