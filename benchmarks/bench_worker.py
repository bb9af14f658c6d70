"""End-to-end worker benchmark: `make bench`.

2,000 ready payments in 100 events, the sandbox answering after 50 ms, IAMPORT_MAX_RPS high.
Prints jobs per second from the first post to the last terminal job, p50/p95 time from event
to terminal, upstream calls per job (tokens included), and worker CPU seconds per 1,000 jobs.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg

from app.sandbox.control import SandboxControl
from benchmarks.common import percentile, running_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=32, help="threads per worker")
    parser.add_argument(
        "--log-level", default="INFO", help="the workers' LOG_LEVEL (INFO: one line per job run)"
    )
    args = parser.parse_args()

    per_event = args.payments // args.events
    with running_stack(
        workers=args.workers,
        concurrency=args.concurrency,
        IAMPORT_MAX_RPS="100000",
        IAMPORT_TIMEOUT_SECONDS="10",
        LOG_LEVEL=args.log_level,
    ) as stack:
        key = stack.key()
        db = stack.env["DATABASE_URL"]
        with SandboxControl(stack.sandbox_url) as sandbox:
            uids = [f"imps_bench_{i:06d}" for i in range(args.payments)]
            sandbox.create_payments([{"imp_uid": u, "amount": 5000} for u in uids])
            sandbox.set_faults(latency_ms=args.latency_ms)
            # Warm the worker (imports, token, pools) so the figures are of steady state.
            warm = [f"imps_warm_{i}" for i in range(32)]
            sandbox.create_payments([{"imp_uid": u} for u in warm])
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as http:
                http.post(
                    "/v1/stockout-events",
                    json={
                        "event_id": "warm",
                        "sku": "W",
                        "payments": [{"imp_uid": u} for u in warm],
                    },
                )
                _wait_terminal(db, 32)
                calls_before = sum(sandbox.stats()["calls"].values())
                cpu_before = stack.worker_cpu_seconds()

                bodies = [
                    {
                        "event_id": f"bench-{e}",
                        "sku": f"SKU-{e % 7}",
                        "payments": [
                            {"imp_uid": u} for u in uids[e * per_event : (e + 1) * per_event]
                        ],
                    }
                    for e in range(args.events)
                ]
                start = time.monotonic()
                with ThreadPoolExecutor(8) as pool:
                    codes = list(
                        pool.map(
                            lambda b: http.post("/v1/stockout-events", json=b).status_code, bodies
                        )
                    )
                posted = time.monotonic() - start
                assert codes.count(202) == args.events, codes
                _wait_terminal(db, 32 + args.payments)
                elapsed = time.monotonic() - start
            cpu = stack.worker_cpu_seconds() - cpu_before
            calls = sum(sandbox.stats()["calls"].values()) - calls_before
            stats = sandbox.stats()
        with psycopg.connect(db) as conn:
            lat = [
                r[0]
                for r in conn.execute(
                    "SELECT extract(epoch FROM finished_at - created_at) FROM jobs WHERE imp_uid LIKE 'imps_bench_%'"
                )
            ]
            statuses = dict(
                conn.execute(
                    "SELECT status, count(*) FROM jobs WHERE imp_uid LIKE 'imps_bench_%' GROUP BY status"
                ).fetchall()
            )

    n = args.payments
    print(
        f"\nworker benchmark: {n} payments in {args.events} events, upstream latency {args.latency_ms} ms, "
        f"{args.workers} worker process(es) x {args.concurrency} threads, LOG_LEVEL {args.log_level}"
    )
    print(f"  statuses                     {statuses}")
    print(f"  posting took                 {posted:.2f} s")
    print(
        f"  jobs per second (end to end) {n / elapsed:.0f}   ({elapsed:.2f} s first post -> last terminal)"
    )
    print(
        f"  event -> terminal p50 / p95  {percentile(lat, 0.50):.2f} s / {percentile(lat, 0.95):.2f} s"
    )
    print(f"  upstream calls per job       {calls / n:.3f}   (tokens included; {calls} calls)")
    print(f"  worker CPU per 1,000 jobs    {cpu / n * 1000:.2f} s")
    print(
        f"  sandbox: applied max/imp_uid {stats['cancels_applied_max_per_imp_uid']}, "
        f"overlapping {stats['overlapping_cancels']}, max in flight {stats['max_in_flight']}"
    )


def _wait_terminal(db: str, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(db, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE status IN ('cancelled','needs_refund','failed')"
            ).fetchone()
            if row and row[0] >= n:
                return
            time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {n} terminal jobs")


if __name__ == "__main__":
    main()
