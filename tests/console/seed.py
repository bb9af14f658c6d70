"""Data for the console tests: events posted through the API, then statuses set with SQL."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

SKUS = ["SKU-RED-TEE-M", "SKU-BLUE-MUG", "SKU-DESK-LAMP", "SKU-CANVAS-BAG", "SKU-TEA-SET"]


@dataclass
class Seeded:
    events: list[dict[str, Any]] = field(default_factory=list)
    by_status: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def first(self, status: str) -> dict[str, Any]:
        return self.by_status[status][0]


def post_event(base: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(
        f"{base}/v1/stockout-events", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def _attempt(
    conn: psycopg.Connection[Any],
    job_id: str,
    call: str,
    minutes_ago: float,
    ms: int,
    status: int,
    code: int | None,
    outcome: str,
    message: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO attempts (job_id, call, started_at, duration_ms, http_status, code, "
        "message, outcome) VALUES (%s, %s, now() - make_interval(secs => %s), %s, %s, %s, %s, %s)",
        (job_id, call, minutes_ago * 60, ms, status, code, message, outcome),
    )


def _finish(
    conn: psycopg.Connection[Any], job: dict[str, Any], status: str, minutes_ago: float, **cols: Any
) -> None:
    sets = ", ".join(f"{k} = %({k})s" for k in cols)
    conn.execute(
        "UPDATE jobs SET status = %(status)s, finished_at = now() - make_interval(secs => %(s)s), "
        f"updated_at = now() - make_interval(secs => %(s)s){', ' + sets if sets else ''} "
        "WHERE id = %(id)s",
        {"status": status, "s": minutes_ago * 60, "id": job["id"], **cols},
    )


def seed(base: str, db: str, key: str, *, payments: int = 36, seed_value: int = 3) -> Seeded:
    """A few events over the last half hour, their jobs in every status, with upstream calls."""
    rng = random.Random(seed_value)
    out = Seeded()
    jobs: list[dict[str, Any]] = []
    n_events = 6
    for e in range(n_events):
        count = payments // n_events
        body = {
            "event_id": f"inv-2026-11-25-{e + 1:04d}",
            "sku": SKUS[e % len(SKUS)],
            "reason": "out of stock",
            "occurred_at": "2026-11-25T06:00:00Z",
            "payments": [
                {
                    "imp_uid": f"imps_{410124208100 + e * 100 + k}",
                    "merchant_uid": f"order-{1000 + e * 100 + k}",
                }
                for k in range(count)
            ],
        }
        event = post_event(base, key, body)
        out.events.append(event)
        jobs += event["jobs"]
    plan = (
        ["cancelled"] * 22
        + ["needs_refund"] * 4
        + ["failed"] * 3
        + ["retry_wait"] * 2
        + ["queued"] * (len(jobs) - 31)
    )
    with psycopg.connect(db, autocommit=True) as conn:
        # Events (and their jobs) received a little over half an hour ago, a minute apart,
        # so every upstream call and finish below comes after them.
        for i, event in enumerate(out.events):
            minutes = 36 - i
            conn.execute(
                "UPDATE events SET received_at = now() - make_interval(mins => %s) "
                "WHERE event_id = %s",
                (minutes, event["event_id"]),
            )
            conn.execute(
                "UPDATE jobs SET created_at = now() - make_interval(mins => %s), "
                "updated_at = now() - make_interval(mins => %s) WHERE id = ANY(%s::uuid[])",
                (minutes, minutes, [j["id"] for j in event["jobs"]]),
            )
        for job, status in zip(jobs, plan, strict=True):
            out.by_status.setdefault(status, []).append(job)
            ago = rng.uniform(0.5, 28)
            if status == "cancelled":
                _attempt(conn, job["id"], "cancel", ago + 0.02, rng.randint(40, 160), 200, 0, "ok")
                cancellation = {
                    "pg_tid": f"pgt_{job['imp_uid'][-6:]}",
                    "amount": rng.choice([12000, 25900, 8900, 43000]),
                    "cancelled_at": "2026-11-25T06:01:00+00:00",
                    "reason": "out of stock",
                    "receipt_url": None,
                    "cancelled_by": "service",
                }
                _finish(
                    conn,
                    job,
                    status,
                    ago,
                    attempts=1,
                    payment_status="cancelled",
                    cancellation=json.dumps(cancellation),
                )
            elif status == "needs_refund":
                _attempt(
                    conn, job["id"], "cancel", ago + 0.03, 88, 200, 1, "refused", "already paid"
                )
                _attempt(conn, job["id"], "lookup", ago + 0.02, 41, 200, 0, "ok")
                _finish(conn, job, status, ago, attempts=1, payment_status="paid")
            elif status == "failed":
                _attempt(conn, job["id"], "token", ago + 0.2, 35, 200, 0, "ok")
                _attempt(conn, job["id"], "cancel", ago + 0.15, 1000, 504, None, "timeout")
                _attempt(conn, job["id"], "lookup", ago + 0.1, 52, 200, 0, "ok")
                _attempt(
                    conn,
                    job["id"],
                    "cancel",
                    ago + 0.05,
                    73,
                    404,
                    -1,
                    "not_found",
                    "no such payment",
                )
                _attempt(conn, job["id"], "lookup", ago + 0.02, 47, 404, -1, "not_found")
                error = {"http_status": 404, "code": -1, "message": "no such payment"}
                _finish(conn, job, status, ago, attempts=2, error=json.dumps(error))
            elif status == "retry_wait":
                _attempt(conn, job["id"], "cancel", 1.5, 1000, 503, None, "unavailable")
                conn.execute(
                    "UPDATE jobs SET status = 'retry_wait', attempts = 1, "
                    "next_attempt_at = now() + interval '40 seconds' WHERE id = %s",
                    (job["id"],),
                )
    return out
