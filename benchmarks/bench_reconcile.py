"""Reconciliation benchmark: `make bench-reconcile`.

10,000 open jobs of one account (waiting, untouched for an hour), their payments in the sandbox
answering after `--latency-ms`, 1% of them paid behind the service's back. Figures from one
invocation, on the same machine:
- the round as it ships (batch lookups of 100, paced to RECONCILE_RPS_SHARE of IAMPORT_MAX_RPS):
  upstream calls and seconds, and that exactly the changed payments' jobs were made to look;
- the same lookups unpaced (a dry run): what the round itself costs;
- beside it, one `GET /payments/{imp_uid}` per job, unpaced, on `--threads` threads: its calls
  and time, and the time it would take within the same share of the rate limit.
Goal: at most 110 upstream calls for the round on V1.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from benchmarks.common import emit, running_stack
from devtools.sandbox.control import SandboxControl

ACCOUNT = "default"


def seed(db: str, sandbox: SandboxControl, n: int, changed: int) -> list[str]:
    """`n` retry_wait jobs untouched for an hour, and their ready payments; the first
    `changed` payments are then paid in the sandbox's admin."""
    uids = [f"imps_rec_{i:06}" for i in range(n)]
    for start in range(0, n, 1000):
        sandbox.create_payments(
            [{"imp_uid": u, "amount": 1000} for u in uids[start : start + 1000]]
        )
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (account, imp_uid, status, payment_status, next_attempt_at, due_at, "
            "updated_at) SELECT %s, u, 'retry_wait', 'ready', now() + interval '1 day', "
            "now() + interval '1 day', now() - interval '1 hour' FROM unnest(%s::text[]) AS u",
            (ACCOUNT, uids),
        )
    for uid in uids[:changed]:
        sandbox.admin(uid, "pay")
    return uids


def reconcile_round(dry_run: bool) -> tuple[Any, float]:
    from app.config import get_settings
    from app.jobs.reconcile import reconcile_all
    from app.kit.redis_conn import get_redis
    from app.webhooks import outbox
    from tests.support.settings import reset_caches

    reset_caches()
    started = time.perf_counter()
    with get_redis() as client:
        (summary,) = reconcile_all(
            get_settings(),
            client,
            on_terminal=outbox.record_terminal,
            on_drift=outbox.record_drift,
            account=ACCOUNT,
            dry_run=dry_run,
        )
    return summary, time.perf_counter() - started


def one_by_one(uids: list[str], threads: int) -> float:
    from app.config import get_settings
    from app.kit.redis_conn import get_redis
    from app.upstream.accounts import accounts_of
    from app.upstream.iamport.client import IamportClient

    settings = get_settings()
    client = IamportClient.for_account(accounts_of(settings)[ACCOUNT], settings, get_redis())
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(client.look_up, uids))
    client.close()
    return time.perf_counter() - started


def lookups(sandbox: SandboxControl, since: int) -> int:
    return sum(1 for e in sandbox.calls(since) if e["call"] == "lookup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with running_stack(LOG_LEVEL="WARNING", IAMPORT_MAX_RPS="20") as stack:
        db = stack.env["DATABASE_URL"]
        os.environ.update(stack.env)
        with SandboxControl(stack.sandbox_url) as sandbox:
            uids = seed(db, sandbox, args.jobs, args.changed)
            sandbox.set_faults(latency_ms=args.latency_ms)
            settings_rate = 20 * 0.2

            # Unpaced, changing nothing: the round's own cost.
            os.environ.update(IAMPORT_MAX_RPS="100000", RECONCILE_RPS_SHARE="1")
            mark = len(sandbox.calls())
            dry, dry_seconds = reconcile_round(dry_run=True)
            dry_calls = len(sandbox.calls(mark))

            mark = len(sandbox.calls())
            naive_seconds = one_by_one(uids, args.threads)
            naive_calls = len(sandbox.calls(mark))

            # As it ships: IAMPORT_MAX_RPS 20, RECONCILE_RPS_SHARE 0.2.
            os.environ.update(IAMPORT_MAX_RPS="20", RECONCILE_RPS_SHARE="0.2")
            mark = len(sandbox.calls())
            real, real_seconds = reconcile_round(dry_run=False)
            real_calls = len(sandbox.calls(mark))
            real_lookups = lookups(sandbox, mark)
            with psycopg.connect(db) as conn:
                told = conn.execute("SELECT count(*) FROM jobs WHERE look_first").fetchone()
            made_to_look = int(told[0]) if told else 0

    figures = {
        "jobs": args.jobs,
        "changed": args.changed,
        "latency_ms": args.latency_ms,
        "round_calls": real_calls,
        "round_lookups": real_lookups,
        "round_seconds": round(real_seconds, 2),
        "round_moved": dict(real.moved),
        "made_to_look_first": made_to_look,
        "unpaced_round_calls": dry_calls,
        "unpaced_round_seconds": round(dry_seconds, 2),
        "unpaced_round_looked_up": dry.looked_up,
        "one_by_one_calls": naive_calls,
        "one_by_one_seconds": round(naive_seconds, 2),
        "one_by_one_seconds_within_share": round(naive_calls / settings_rate, 0),
    }
    if not args.json:
        print(
            f"\nreconciliation benchmark: {args.jobs} open jobs, {args.changed} changed, "
            f"upstream {args.latency_ms} ms"
        )
    emit(
        figures,
        args.json,
        [
            ("upstream calls, the round as shipped", str(real_calls), "goal <= 110"),
            ("  of which batch lookups", str(real_lookups), ""),
            ("seconds, the round as shipped (4 calls/s)", f"{real_seconds:.1f}", ""),
            ("jobs made to look first", str(made_to_look), f"= {args.changed} changed"),
            ("seconds, the round unpaced (dry run)", f"{dry_seconds:.1f}", ""),
            ("upstream calls, one lookup per job", str(naive_calls), ""),
            (f"seconds, one lookup per job ({args.threads} threads)", f"{naive_seconds:.1f}", ""),
            (
                "seconds, one lookup per job within the share",
                f"{naive_calls / settings_rate:.0f}",
                "(calls / 4 per s)",
            ),
        ],
    )


if __name__ == "__main__":
    main()
