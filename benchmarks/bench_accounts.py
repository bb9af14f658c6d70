"""Accounts benchmark: `make bench-accounts`.

Does serving several merchant accounts cost throughput? The service's worker as it ships
(`celery -A worker worker`), the sandbox answering after 50 ms, every account's max_rps out of
the way, 2,000 payments a run. Measured in one invocation, on the same machine:
- one account configured, every payment its own (the baseline);
- four accounts configured, the payments spread evenly over them;
- four accounts configured, every payment one account's (the others idle): what the per-account
  share of the job threads costs a busy account while the others have nothing to do.
Goal: the four-account runs within noise (10%) of the one-account run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.common import WORKER, Stack, cpu_seconds, emit, running_stack
from devtools.sandbox.control import SandboxControl
from tests.support.processes import stop

TERMINAL = "('cancelled','needs_refund','failed')"


def accounts_file(path: Path, n: int) -> dict[str, str]:
    """An accounts file of `n` v1 accounts, a0..a{n-1}; the variables their secrets are in."""
    env: dict[str, str] = {}
    text = []
    for i in range(n):
        env[f"BENCH_A{i}_SECRET"] = f"bench-secret-{i}"
        text.append(
            f'[accounts.a{i}]\napi = "v1"\nimp_key = "bench_key_{i}"\n'
            f'imp_secret_env = "BENCH_A{i}_SECRET"\nmax_rps = 100000\n'
        )
    path.write_text("".join(text))
    return env


def run(
    stack: Stack, sandbox: SandboxControl, accounts: int, busy: int, args: Any, tag: str
) -> dict[str, float]:
    """One measured run: `args.payments` payments over the first `busy` of `accounts`."""
    db = stack.env["DATABASE_URL"]
    sandbox.reset()
    sandbox.add_merchants(
        [{"imp_key": f"bench_key_{i}", "imp_secret": f"bench-secret-{i}"} for i in range(accounts)]
    )
    sandbox.set_faults(latency_ms=args.latency_ms)
    worker = stack.start(f"worker-{tag}", WORKER)
    beat = stack.start_beat()
    headers = {"Authorization": f"Bearer {stack.key()}"}
    try:
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=30) as http:
            # Warm every account's token and pool, and the worker's processes.
            warm = {i: _payments(sandbox, f"warm{tag}{i}", i, 16) for i in range(accounts)}
            for i, mine in warm.items():
                _post(http, f"warm-{tag}-{i}", i, mine)
            _wait(db, f"imps_warm{tag}%", 16 * accounts)
            per_account = args.payments // busy
            plan = {i: _payments(sandbox, f"{tag}{i}", i, per_account) for i in range(busy)}
            per_event = max(1, per_account // (args.events // busy))
            bodies = [
                (f"{tag}-{i}-{k}", i, mine[k : k + per_event])
                for i, mine in plan.items()
                for k in range(0, len(mine), per_event)
            ]
            bodies.sort(key=lambda b: b[0].rsplit("-", 1)[1])  # the accounts interleaved
            cpu_before = cpu_seconds(worker)
            start = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda b: _post(http, *b), bodies))
            _wait(db, f"imps_{tag}%", per_account * busy)
            elapsed = time.monotonic() - start
            cpu = cpu_seconds(worker) - cpu_before
    finally:
        stop(worker)
        stop(beat)
    n = per_account * busy
    return {"jobs_per_second": round(n / elapsed, 1), "cpu_per_1000": round(cpu / n * 1000, 2)}


def _payments(sandbox: SandboxControl, tag: str, account: int, n: int) -> list[str]:
    uids = [f"imps_{tag}_{k:06d}" for k in range(n)]
    spec = {"imp_key": f"bench_key_{account}", "amount": 5000}
    sandbox.create_payments([{"imp_uid": u, **spec} for u in uids])
    return uids


def _post(http: httpx.Client, event_id: str, account: int, uids: list[str]) -> None:
    body = {
        "account": f"a{account}",
        "event_id": event_id,
        "sku": "SKU-1",
        "payments": [{"imp_uid": u} for u in uids],
    }
    http.post("/v1/stockout-events", json=body).raise_for_status()


def _wait(db: str, pattern: str, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    sql = f"SELECT count(*) FROM jobs WHERE imp_uid LIKE %s AND status IN {TERMINAL}"
    with psycopg.connect(db, autocommit=True) as conn:
        while True:
            row = conn.execute(sql, (pattern,)).fetchone()
            if row is not None and int(row[0]) >= n:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern}: {row} of {n} terminal")
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each kind, interleaved")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results: dict[str, list[dict[str, float]]] = {"1 account": [], "4 spread": [], "4, 1 busy": []}
    with (
        running_stack(IAMPORT_TIMEOUT_SECONDS="10", LOG_LEVEL="WARNING", **_file(1)) as one,
        SandboxControl(one.sandbox_url) as sandbox,
    ):
        for r in range(args.rounds):
            results["1 account"].append(run(one, sandbox, 1, 1, args, f"one{r}"))
    with (
        running_stack(IAMPORT_TIMEOUT_SECONDS="10", LOG_LEVEL="WARNING", **_file(4)) as four,
        SandboxControl(four.sandbox_url) as sandbox,
    ):
        for r in range(args.rounds):
            results["4 spread"].append(run(four, sandbox, 4, 4, args, f"spread{r}"))
            results["4, 1 busy"].append(run(four, sandbox, 4, 1, args, f"busy{r}"))

    best = {k: max(v, key=lambda x: x["jobs_per_second"]) for k, v in results.items()}
    base = best["1 account"]["jobs_per_second"]
    figures = {
        "payments": args.payments,
        "latency_ms": args.latency_ms,
        "runs": results,
        "ratio_4_spread_vs_1": round(best["4 spread"]["jobs_per_second"] / base, 3),
        "ratio_4_one_busy_vs_1": round(best["4, 1 busy"]["jobs_per_second"] / base, 3),
    }
    if not args.json:
        print(
            f"\naccounts benchmark: {args.payments} payments a run, upstream {args.latency_ms} ms"
        )
        print(f"  {'':<14} {'jobs/s (each run)':>24} {'CPU s/1000 (each run)':>24}")
        for name, runs in results.items():
            rates = ", ".join(f"{x['jobs_per_second']:.0f}" for x in runs)
            cpus = ", ".join(f"{x['cpu_per_1000']:.2f}" for x in runs)
            print(f"  {name:<14} {rates:>24} {cpus:>24}")
    emit(
        figures,
        args.json,
        [
            ("best jobs/s, 4 accounts spread / 1", f"{figures['ratio_4_spread_vs_1']:.2f}", "≈ 1"),
            ("best jobs/s, 4 (1 busy) / 1", f"{figures['ratio_4_one_busy_vs_1']:.2f}", "≈ 1"),
        ],
    )


def _file(n: int) -> dict[str, str]:
    """ACCOUNTS_FILE of `n` accounts and their secrets, for running_stack's environment."""
    path = Path(tempfile.mkdtemp(prefix="stockout-bench-accounts-")) / "accounts.toml"
    path.parent.chmod(0o755)
    return {"ACCOUNTS_FILE": str(path), **accounts_file(path, n)}


if __name__ == "__main__":
    main()
