"""Webhook delivery benchmark: `python -m benchmarks.bench_webhooks`.

A whole stack in processes (Postgres, Redis, API, one worker with beat), and a receiver in
this process that verifies each message and answers 204 after 10 ms. N jobs are moved to a
terminal status in one transaction through the outbox hook (record_terminal), as the jobs
store does; then one wake-up per endpoint is published. Prints messages per second from the
commit to the last message delivered, and attempts per message.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import httpx
import psycopg

from app.kit.db import UnitOfWork
from app.kit.dispatch import send_deliveries
from app.webhooks.claims import IN_FLIGHT_PER_ENDPOINT
from app.webhooks.outbox import record_terminal
from benchmarks.common import running_stack
from tests.support.settings import reset_caches
from tests.support.webhook_receiver import Receiver, running_receiver

JOBS = """
INSERT INTO jobs (imp_uid, merchant_uid, status, finished_at)
SELECT 'imps_whbench_' || i, 'order-' || i, 'cancelled', now() FROM generate_series(1, %(n)s) i
RETURNING id
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--endpoints", type=int, default=1)
    parser.add_argument("--answer-ms", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32, help="worker threads")
    args = parser.parse_args()
    delay = args.answer_ms / 1000

    def answer(_: Receiver, __: str, ___: int) -> tuple[int, float, dict[str, str]]:
        return 204, delay, {}

    with (
        running_stack(
            concurrency=args.concurrency, WEBHOOK_ALLOW_PRIVATE_URLS="true", LOG_LEVEL="WARNING"
        ) as stack,
        running_receiver(answer) as receiver,
    ):
        key = stack.key()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=stack.api_url, headers=headers) as api:
            for _ in range(args.endpoints):
                r = api.post(
                    "/v1/webhook-endpoints",
                    json={"url": receiver.url, "event_types": ["job.cancelled"]},
                )
                r.raise_for_status()
                receiver.secrets.append(r.json()["secret"])
        total = args.messages * args.endpoints
        db = stack.env["DATABASE_URL"]
        with psycopg.connect(db) as conn:
            ids = [row[0] for row in conn.execute(JOBS, {"n": args.messages}).fetchall()]
            uow = UnitOfWork(conn)
            for job_id in ids:
                record_terminal(uow, uuid.UUID(str(job_id)))
        started = time.monotonic()
        # The wake-ups the worker would publish after its commit (one sender per free slot).
        os.environ.update(REDIS_URL=stack.env["REDIS_URL"], DATABASE_URL=db)
        reset_caches()
        send_deliveries([e for e in sorted(uow.to_wake) for _ in range(IN_FLIGHT_PER_ENDPOINT)])
        while (done := len(receiver.accepted())) < total:
            if time.monotonic() - started > 600:
                raise SystemExit(f"only {done} of {total} delivered in 600 s")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        with psycopg.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*), avg(attempts) FROM webhook_messages WHERE status = 'delivered'"
            ).fetchone()
        assert row is not None
        print(
            f"{total} messages to {args.endpoints} endpoint(s), receiver answering in "
            f"{args.answer_ms:g} ms: {total / elapsed:.0f} messages/s delivered "
            f"({elapsed:.2f} s); attempts per message {float(row[1]):.3f}; "
            f"unverified {len(receiver.unverified)}; receiver max in flight {receiver.max_in_flight}"
        )


if __name__ == "__main__":
    main()
