"""The intake floor: a bare FastAPI endpoint that stores an event with one INSERT.

Run as `uvicorn benchmarks.baselines.bare_ingest:app` with the API's own flags, against the
same Postgres (DATABASE_URL). No auth, no idempotency, no jobs: one INSERT and a 202.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from pydantic import BaseModel

# The same pool shape as the API's engine (20 + 20 overflow).
_pool = ConnectionPool(
    os.environ.get("DATABASE_URL", "").replace("postgresql+psycopg://", "postgresql://", 1),
    min_size=20,
    max_size=40,
    kwargs={"autocommit": True},
    open=False,
)


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    _pool.open(wait=True)
    with _pool.connection() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bare_events (event_id text PRIMARY KEY, body jsonb NOT NULL)"
        )
    yield
    _pool.close()


app = FastAPI(lifespan=_lifespan)


class Payment(BaseModel):
    imp_uid: str
    merchant_uid: str | None = None


class Event(BaseModel):
    event_id: str
    sku: str
    payments: list[Payment]


@app.post("/v1/stockout-events", status_code=202)
def post_event(event: Event) -> dict[str, str]:
    """Store the event with one INSERT."""
    with _pool.connection() as conn:
        conn.execute(
            "INSERT INTO bare_events (event_id, body) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (event.event_id, Jsonb(event.model_dump())),
        )
    return {"event_id": event.event_id, "status": "accepted"}
