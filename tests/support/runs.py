"""Run one job's run in this process, as a worker thread would (no broker involved)."""

from __future__ import annotations

import random
import uuid

from app.config import get_settings
from app.jobs import store
from app.jobs.run import run_job
from app.kit.db import pool
from app.kit.redis_conn import get_redis
from app.upstream.iamport.client import IamportClient
from app.webhooks import outbox


def run_now(job_id: str | uuid.UUID) -> str:
    """Claim the job and run it once; its recorded status, or "not_claimed"."""
    settings = get_settings()
    client = IamportClient.from_settings(settings, get_redis())
    try:
        with pool().connection() as conn:
            job = store.claim(
                conn, uuid.UUID(str(job_id)), settings.lease_seconds, settings.cancel_settle_seconds
            )
            if job is None:
                return "not_claimed"
            return run_job(conn, client, job, settings, random.Random(0), outbox.record_terminal)
    finally:
        client.close()
