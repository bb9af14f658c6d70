"""Intake benchmark: `make bench-ingest`.

POST /v1/stockout-events at 32 concurrent clients for 10 s each, with 1-payment and 20-payment
events, against uvicorn (1 process) with real Postgres and Redis and no worker, beside the
intake floor measured in the same run with the same load: a bare FastAPI endpoint storing the
event with one INSERT (benchmarks/baselines/bare_ingest.py), same Postgres, same uvicorn flags.

The three loads take turns in short rounds (bare, 1 payment, 20 payments, then again), each
figure summed over its rounds: a shared machine that speeds up or slows down mid-run then
moves all three alike instead of skewing their ratios.

Goals: 1-payment events/s >= 0.7 of the floor's and p99 <= 1.5x its p99; with 20 payments per
event, jobs accepted/s >= 10x the 1-payment event rate.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from dataclasses import dataclass

import aiohttp

from benchmarks.common import emit, percentile, running_stack

_ids = itertools.count()


@dataclass(frozen=True)
class Load:
    events: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]

    def __add__(self, other: Load) -> Load:
        statuses = dict(self.statuses)
        for k, v in other.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
        return Load(
            self.events + other.events,
            self.seconds + other.seconds,
            self.latencies + other.latencies,
            statuses,
        )

    @property
    def per_second(self) -> float:
        return self.events / self.seconds

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


async def _load(url: str, key: str, payments: int, clients: int, seconds: float, tag: str) -> Load:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:
        start = time.perf_counter()
        stop_at = start + seconds

        async def client() -> None:
            while time.perf_counter() < stop_at:
                n = next(_ids)
                body = {
                    "event_id": f"{tag}-{payments}-{n}",
                    "sku": "SKU-1",
                    "payments": [
                        {"imp_uid": f"imps_{tag}_{n}_{k}", "merchant_uid": f"o-{n}-{k}"}
                        for k in range(payments)
                    ],
                }
                t = time.perf_counter()
                async with http.post("/v1/stockout-events", json=body) as r:
                    await r.read()
                    status = r.status
                latencies.append(time.perf_counter() - t)
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return Load(len(latencies), elapsed, latencies, statuses)


def load(url: str, key: str, payments: int, clients: int, seconds: float, tag: str) -> Load:
    """`clients` concurrent keep-alive clients posting events for `seconds`, one asyncio loop."""
    return asyncio.run(_load(url, key, payments, clients, seconds, tag))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10, help="per load, over all rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with running_stack(LOG_LEVEL="WARNING") as stack:
        key = stack.key()
        bare_url = stack.start_uvicorn("bare", "benchmarks.baselines.bare_ingest:app")
        # Warm both at the measured concurrency (imports, pools grown, plans prepared) so the
        # figures are of steady state.
        load(stack.api_url, key, 1, args.clients, 2.0, "warm")
        load(bare_url, key, 1, args.clients, 2.0, "warm")
        each = args.seconds / args.rounds
        bare = one = twenty = Load(0, 0.0, [], {})
        for r in range(args.rounds):
            bare += load(bare_url, key, 1, args.clients, each, f"bare{r}")
            one += load(stack.api_url, key, 1, args.clients, each, f"one{r}")
            twenty += load(stack.api_url, key, 20, args.clients, each, f"twenty{r}")

    rate_ratio = one.per_second / bare.per_second
    p99_ratio = one.p(0.99) / bare.p(0.99)
    jobs_ratio = twenty.per_second * 20 / one.per_second
    figures = {
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "bare": _figures(bare, 1),
        "events_1": _figures(one, 1),
        "events_20": _figures(twenty, 20),
        "ratio_rate_1_vs_bare": round(rate_ratio, 3),
        "ratio_p99_1_vs_bare": round(p99_ratio, 3),
        "ratio_jobs_20_vs_events_1": round(jobs_ratio, 2),
        "goals_met": rate_ratio >= 0.7 and p99_ratio <= 1.5 and jobs_ratio >= 10,
    }
    if not args.json:
        print(
            f"\nintake benchmark: {args.clients} concurrent clients, {args.seconds:g} s each "
            f"in {args.rounds} rounds, uvicorn 1 process, no worker"
        )
        print(f"  {'':<36} {'events/s':>9} {'jobs/s':>8} {'p50 ms':>7} {'p99 ms':>7}  statuses")
        for name, run, n in (
            ("bare FastAPI, one INSERT (floor)", bare, 1),
            ("POST /v1/stockout-events, 1 payment", one, 1),
            ("POST /v1/stockout-events, 20 payments", twenty, 20),
        ):
            print(
                f"  {name:<36} {run.per_second:>9.0f} {run.per_second * n:>8.0f} "
                f"{run.p(0.5):>7.1f} {run.p(0.99):>7.1f}  {run.statuses}"
            )
    emit(
        figures,
        args.json,
        [
            ("events/s, 1 payment / floor", f"{rate_ratio:.2f}", "goal >= 0.70"),
            ("p99, 1 payment / floor", f"{p99_ratio:.2f}", "goal <= 1.50"),
            ("jobs/s at 20 payments / events/s at 1", f"{jobs_ratio:.1f}", "goal >= 10"),
        ],
    )


def _figures(run: Load, payments: int) -> dict[str, object]:
    return {
        "events_per_second": round(run.per_second, 1),
        "jobs_per_second": round(run.per_second * payments, 1),
        "p50_ms": round(run.p(0.5), 1),
        "p99_ms": round(run.p(0.99), 1),
        "statuses": {str(k): v for k, v in run.statuses.items()},
    }


if __name__ == "__main__":
    main()
