"""Intake and the till guard while Redis is frozen: `make bench-frozen-redis`.

24 concurrent clients against one uvicorn process: half post 1-payment events, half ask the
confirm hook (as iamport does while a customer stands at the till). First with Redis alive,
then with Redis stopped by SIGSTOP (frozen, not gone: connections hang instead of failing).
Prints p50/p99 of both in each phase, and checks every event was accepted with 202.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from benchmarks.common import percentile, running_stack

_ids = itertools.count()


def load(url: str, key: str, clients: int, seconds: float) -> dict[str, list[float]]:
    """Half the clients post events, half ask the confirm hook; latencies by kind."""
    stop = time.monotonic() + seconds
    out: dict[str, list[float]] = {"intake": [], "confirm": [], "errors": []}
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as http:
            while time.monotonic() < stop:
                n = next(_ids)
                t = time.perf_counter()
                if i % 2 == 0:
                    body = {
                        "event_id": f"frozen-{n}",
                        "sku": "S",
                        "payments": [{"imp_uid": f"imps_fr_{n}"}],
                    }
                    status = http.post("/v1/stockout-events", json=body).status_code
                    kind, ok = "intake", status == 202
                else:
                    body = {"imp_uid": f"imps_fr_{max(0, n - 5)}", "status": "ready"}
                    status = http.post(
                        "/v1/iamport/cvs-confirm?token=bench-hook", json=body
                    ).status_code
                    kind, ok = "confirm", status in (200, 409)
                dt = time.perf_counter() - t
                with lock:
                    out[kind].append(dt)
                    if not ok:
                        out["errors"].append(float(status))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    with running_stack(LOG_LEVEL="WARNING") as stack:
        key = stack.key()
        load(stack.api_url, key, 4, 1.0)  # warm up
        print(
            f"\nfrozen Redis: {args.clients} clients, {args.seconds:.0f} s a phase, 1 uvicorn process"
        )
        print(
            f"  {'phase':<14} {'what':<8} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
        )
        assert stack.redis.process is not None
        pid = stack.redis.process.pid
        for phase in ("redis alive", "redis frozen"):
            if phase == "redis frozen":
                os.kill(pid, signal.SIGSTOP)
            try:
                got = load(stack.api_url, key, args.clients, args.seconds)
            finally:
                os.kill(pid, signal.SIGCONT)
            for kind in ("intake", "confirm"):
                lat = got[kind]
                print(
                    f"  {phase:<14} {kind:<8} {len(lat):>8} {percentile(lat, 0.5) * 1000:>8.1f} "
                    f"{percentile(lat, 0.99) * 1000:>8.1f} {len(got['errors']):>7}"
                )


if __name__ == "__main__":
    main()
