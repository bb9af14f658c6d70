"""Worker benchmark: `make bench`.

The service's worker started exactly as `celery -A worker worker` (no flags), 2,000 ready
payments in 100 events, the sandbox answering after 50 ms, IAMPORT_MAX_RPS out of the way.
Measured in the same run, one after the other on the same machine:
- a bare asyncio loop (aiohttp, one token) making the same cancel calls at 32 and 64 in flight
  and at the worker's own in-flight count: the upstream-bound limit;
- the naive Celery peer (benchmarks/baselines/naive_peer.py): a task per payment on the
  default prefork pool, `requests`, a new token before every call, no timeout.

Goals: jobs/s >= 0.5 of the bare loop at the worker's in-flight count; worker CPU per job
<= 0.35 of the naive peer's.
"""

from __future__ import annotations

import argparse
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import psycopg
from celery import Celery

from benchmarks.baselines import bare_loop, naive_peer
from benchmarks.common import (
    NAIVE_PEER,
    WORKER,
    Stack,
    cpu_seconds,
    emit,
    percentile,
    process_count,
    running_stack,
)
from devtools.sandbox.control import SandboxControl
from tests.support.processes import stop
from tests.support.webhook_receiver import Receiver, running_receiver

TERMINAL = "('cancelled','needs_refund','failed')"


@dataclass(frozen=True)
class Ours:
    jobs_per_second: float
    elapsed: float
    p50: float
    p95: float
    calls_per_job: float
    cpu_per_1000: float
    cpu_main_process_per_1000: float
    in_flight: int
    processes: int
    memory_mb: float
    statuses: dict[str, int]
    applied_max: int
    overlapping: int


@dataclass(frozen=True)
class Naive:
    jobs_per_second: float
    calls_per_job: float
    cpu_per_1000: float


# 1 once every webhook message written so far has been delivered or given up.
NO_PENDING_HOOKS = (
    "SELECT CASE WHEN count(*) = 0 THEN 1 ELSE 0 END FROM webhook_messages WHERE status = 'pending'"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument(
        "--worker-args", default="", help="extra flags for the worker, e.g. '-P threads -c 32'"
    )
    parser.add_argument("--naive-payments", type=int, default=400, help="0 leaves the peer out")
    parser.add_argument(
        "--log-level", default="INFO", help="the worker's LOG_LEVEL (INFO: one line per job run)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="run the worker again with a webhook endpoint (receiver answering in 10 ms)",
    )
    args = parser.parse_args()

    with running_stack(
        IAMPORT_MAX_RPS="100000",
        IAMPORT_TIMEOUT_SECONDS="10",
        LOG_LEVEL=args.log_level,
        WEBHOOK_ALLOW_PRIVATE_URLS="true",
    ) as stack:
        with SandboxControl(stack.sandbox_url) as sandbox:
            ours = run_ours(stack, sandbox, args)
            hooked = run_with_webhooks(stack, sandbox, args) if args.webhooks else None
            limits: dict[int, float] = {}
            for in_flight in sorted({32, 64, ours.in_flight}):
                uids = _payments(sandbox, f"bare{in_flight}", args.payments, args.latency_ms)
                limits[in_flight] = bare_loop.cancels_per_second(
                    stack.sandbox_url,
                    uids,
                    in_flight,
                    stack.env["IAMPORT_IMP_KEY"],
                    stack.env["IAMPORT_IMP_SECRET"],
                )
            naive = run_naive(stack, sandbox, args) if args.naive_payments else None

    limit = limits[ours.in_flight]
    rate_ratio = ours.jobs_per_second / limit
    cpu_ratio = ours.cpu_per_1000 / naive.cpu_per_1000 if naive else None
    figures: dict[str, Any] = {
        "payments": args.payments,
        "latency_ms": args.latency_ms,
        "worker_command": " ".join(["celery -A worker worker", args.worker_args]).strip(),
        "worker": ours.__dict__,
        "bare_loop_cancels_per_second": {str(k): round(v, 1) for k, v in limits.items()},
        "naive_peer": naive.__dict__ if naive else None,
        "worker_with_webhooks": hooked.__dict__ if hooked else None,
        "ratio_jobs_vs_bare_at_own_in_flight": round(rate_ratio, 3),
        "ratio_cpu_vs_naive": round(cpu_ratio, 3) if cpu_ratio is not None else None,
        "goals_met": rate_ratio >= 0.5 and (cpu_ratio is None or cpu_ratio <= 0.35),
    }
    if not args.json:
        print(
            f"\nworker benchmark: {args.payments} payments in {args.events} events, upstream "
            f"{args.latency_ms} ms, `{figures['worker_command']}` ({ours.processes} processes, "
            f"{ours.memory_mb:.0f} MB unique), LOG_LEVEL {args.log_level}"
        )
        print(
            f"  statuses {ours.statuses}; sandbox: applied max/imp_uid {ours.applied_max}, "
            f"overlapping {ours.overlapping}"
        )
        print(f"  {'':<36} {'jobs/s':>7} {'calls/job':>9} {'CPU s/1000':>10}  in flight")
        print(
            f"  {'the worker':<36} {ours.jobs_per_second:>7.0f} {ours.calls_per_job:>9.3f} "
            f"{ours.cpu_per_1000:>10.2f}  {ours.in_flight} (p50/p95 event->terminal "
            f"{ours.p50:.2f}/{ours.p95:.2f} s; main process "
            f"{ours.cpu_main_process_per_1000:.2f} CPU s/1000)"
        )
        for k, v in limits.items():
            print(f"  {'bare asyncio loop (aiohttp)':<36} {v:>7.0f} {1:>9.3f} {'':>10}  {k}")
        if hooked:
            print(
                f"  {'the worker, webhooks on (1 endpoint)':<36} {hooked.jobs_per_second:>7.0f} "
                f"{hooked.calls_per_job:>9.3f} {hooked.cpu_per_1000:>10.2f}  {hooked.in_flight} "
                "(every message delivered before the clock stops)"
            )
        if naive:
            print(
                f"  {'naive Celery peer (prefork, requests)':<36} {naive.jobs_per_second:>7.0f} "
                f"{naive.calls_per_job:>9.3f} {naive.cpu_per_1000:>10.2f}"
            )
    emit(
        figures,
        args.json,
        [
            (f"jobs/s / bare loop at {ours.in_flight}", f"{rate_ratio:.2f}", "goal >= 0.50"),
            (
                "CPU per job / naive peer's",
                f"{cpu_ratio:.2f}" if cpu_ratio is not None else "-",
                "goal <= 0.35",
            ),
        ],
    )


def run_with_webhooks(stack: Stack, sandbox: SandboxControl, args: argparse.Namespace) -> Ours:
    """The same run with one endpoint taking every message, its receiver answering in 10 ms."""

    def ten_ms(_: Receiver, webhook_id: str, n: int) -> tuple[int, float, dict[str, str]]:
        return 200, 0.01, {}

    with running_receiver(ten_ms) as receiver:
        headers = {"Authorization": f"Bearer {stack.key()}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as http:
            http.post("/v1/webhook-endpoints", json={"url": receiver.url}).raise_for_status()
        return run_ours(stack, sandbox, args, tag="hooked", webhooks=True)


def run_ours(
    stack: Stack,
    sandbox: SandboxControl,
    args: argparse.Namespace,
    tag: str = "bench",
    webhooks: bool = False,
) -> Ours:
    db = stack.env["DATABASE_URL"]
    sandbox.reset()
    worker = stack.start("worker", [*WORKER, *shlex.split(args.worker_args)])
    beat = stack.start_beat()
    uids = _payments(sandbox, tag, args.payments, args.latency_ms)
    warm = [f"imps_warm{tag}_{i}" for i in range(64)]
    sandbox.create_payments([{"imp_uid": u} for u in warm])
    per_event = args.payments // args.events
    headers = {"Authorization": f"Bearer {stack.key()}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as http:
        # Warm the worker (imports, token, pools) so the figures are of steady state.
        for i in range(0, len(warm), 8):
            body = {"event_id": f"warm{tag}-{i}", "sku": "W", "payments": _p(warm[i : i + 8])}
            http.post("/v1/stockout-events", json=body).raise_for_status()
        _wait_terminal(db, f"imps_warm{tag}_%", len(warm))
        if webhooks:
            _wait_count(db, NO_PENDING_HOOKS, (), 1, timeout=120)
        calls_before = sandbox.stats()["calls_total"]
        cpu_before = cpu_seconds(worker)
        main_before = cpu_seconds(worker, children=False)
        bodies = [
            {
                "event_id": f"{tag}-{e}",
                "sku": f"SKU-{e % 7}",
                "payments": _p(uids[e * per_event : (e + 1) * per_event]),
            }
            for e in range(args.events)
        ]
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(lambda b: http.post("/v1/stockout-events", json=b).status_code, bodies)
            )
        assert codes.count(202) == args.events, codes
        _wait_terminal(db, f"imps_{tag}_%", args.payments)
        if webhooks:
            _wait_count(db, NO_PENDING_HOOKS, (), 1, timeout=300)
        elapsed = time.monotonic() - start
    cpu = cpu_seconds(worker) - cpu_before
    main_cpu = cpu_seconds(worker, children=False) - main_before
    stats = sandbox.stats()
    processes = process_count(worker)
    memory = _unique_memory(worker)
    stop(worker)
    stop(beat)
    with psycopg.connect(db) as conn:
        lat = [
            float(r[0])
            for r in conn.execute(
                "SELECT extract(epoch FROM finished_at - created_at) FROM jobs "
                "WHERE imp_uid LIKE %s",
                (f"imps_{tag}_%",),
            )
        ]
        statuses: dict[str, int] = dict(
            conn.execute(
                "SELECT status, count(*) FROM jobs WHERE imp_uid LIKE %s GROUP BY status",
                (f"imps_{tag}_%",),
            ).fetchall()
        )
    n = args.payments
    return Ours(
        jobs_per_second=round(n / elapsed, 1),
        elapsed=round(elapsed, 2),
        p50=round(percentile(lat, 0.5), 3),
        p95=round(percentile(lat, 0.95), 3),
        calls_per_job=round((stats["calls_total"] - calls_before) / n, 3),
        cpu_per_1000=round(cpu / n * 1000, 2),
        cpu_main_process_per_1000=round(main_cpu / n * 1000, 2),
        in_flight=int(stats["max_in_flight"]),
        processes=processes,
        memory_mb=round(memory, 1),
        statuses=statuses,
        applied_max=stats["cancels_applied_max_per_imp_uid"],
        overlapping=stats["overlapping_cancels"],
    )


def run_naive(stack: Stack, sandbox: SandboxControl, args: argparse.Namespace) -> Naive:
    db = stack.env["DATABASE_URL"]
    n = args.naive_payments
    uids = _payments(sandbox, "naive", n, args.latency_ms)
    sandbox.create_payments([{"imp_uid": "imps_naivewarm"}])
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(naive_peer.TABLE)
    peer = stack.start("naive", [*NAIVE_PEER, "--loglevel", "WARNING"])
    publisher = Celery("naive-publisher", broker=stack.env["REDIS_URL"], set_as_current=False)

    def send(uid: str) -> None:
        publisher.send_task(naive_peer.TASK, args=[uid], queue=naive_peer.QUEUE)

    send("imps_naivewarm")
    _wait_rows(db, 1)
    calls_before = sandbox.stats()["calls_total"]
    cpu_before = cpu_seconds(peer)
    start = time.monotonic()
    for uid in uids:
        send(uid)
    _wait_rows(db, n + 1)
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(peer) - cpu_before
    calls = sandbox.stats()["calls_total"] - calls_before
    stop(peer)
    return Naive(
        jobs_per_second=round(n / elapsed, 1),
        calls_per_job=round(calls / n, 3),
        cpu_per_1000=round(cpu / n * 1000, 2),
    )


def _p(uids: list[str]) -> list[dict[str, str]]:
    return [{"imp_uid": u} for u in uids]


def _payments(sandbox: SandboxControl, tag: str, n: int, latency_ms: int) -> list[str]:
    uids = [f"imps_{tag}_{i:06d}" for i in range(n)]
    sandbox.create_payments([{"imp_uid": u, "amount": 5000} for u in uids])
    sandbox.set_faults(latency_ms=latency_ms)
    return uids


def _unique_memory(proc: Any) -> float:
    """Megabytes of memory the worker's processes hold that no other process shares."""
    total = 0
    try:
        p = psutil.Process(proc.pid)
        for each in [p, *p.children(recursive=True)]:
            total += each.memory_full_info().uss
    except psutil.NoSuchProcess:
        pass
    return total / 2**20


def _wait_terminal(db: str, pattern: str, n: int, timeout: float = 300) -> None:
    query = f"SELECT count(*) FROM jobs WHERE imp_uid LIKE %s AND status IN {TERMINAL}"
    _wait_count(db, query, (pattern,), n, timeout)


def _wait_rows(db: str, n: int, timeout: float = 300) -> None:
    _wait_count(db, "SELECT count(*) FROM naive_jobs", (), n, timeout)


def _wait_count(db: str, query: str, params: tuple[str, ...], n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(db, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(query, params).fetchone()
            if row and row[0] >= n:
                return
            time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {n} rows: {query}")


if __name__ == "__main__":
    main()
