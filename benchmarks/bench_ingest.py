"""Ingestion benchmark: `make bench-ingest`.

Events per second and p50/p99 latency of POST /v1/stockout-events at 32 concurrent clients,
for 1-payment and 20-payment events, against uvicorn with real Postgres and Redis (no worker
running, so the API has the machine to itself apart from the load generator).
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from benchmarks.common import percentile, running_stack

_ids = itertools.count()


def run(
    url: str, key: str, payments: int, clients: int, seconds: float
) -> tuple[int, list[float], dict[int, int]]:
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def client(_: int) -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as http:
            while time.monotonic() < stop:
                n = next(_ids)
                body = {
                    "event_id": f"ingest-{payments}-{n}",
                    "sku": "SKU-1",
                    "payments": [
                        {"imp_uid": f"imps_ing_{n}_{k}", "merchant_uid": f"o-{n}-{k}"}
                        for k in range(payments)
                    ],
                }
                t = time.perf_counter()
                status = http.post("/v1/stockout-events", json=body).status_code
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    codes[status] = codes.get(status, 0) + 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return len(latencies), latencies, codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn processes")
    args = parser.parse_args()
    with running_stack(workers=0, LOG_LEVEL="WARNING") as stack:
        key = stack.key()
        run(stack.api_url, key, 1, 4, 1.0)  # warm up
        print(
            f"\ningestion benchmark: {args.clients} concurrent clients, {args.seconds:.0f} s each, 1 uvicorn process"
        )
        print(
            f"  {'payments/event':>14} {'events/s':>9} {'jobs/s':>8} {'p50 ms':>7} {'p99 ms':>7}  statuses"
        )
        for payments in (1, 20):
            n, lat, codes = run(stack.api_url, key, payments, args.clients, args.seconds)
            eps = n / args.seconds
            print(
                f"  {payments:>14} {eps:>9.0f} {eps * payments:>8.0f} {percentile(lat, 0.5) * 1000:>7.1f} "
                f"{percentile(lat, 0.99) * 1000:>7.1f}  {codes}"
            )


if __name__ == "__main__":
    main()
