"""The process's Postgres connections, and the one transaction owner: the unit of work.

Plain psycopg on one pool per process (API, worker and CLI alike). A unit of work is one
transaction; what it asks to publish goes to the broker only after it has committed, so a job
is never announced before it exists, and a broker that is down or frozen never holds up the
commit (the sweeps publish whatever a lost message leaves behind).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, LiteralString

from psycopg import AsyncConnection, Connection
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from app.config import get_settings

_pool: ConnectionPool | None = None
_pool_lock = threading.Lock()
POOL_MAX_SIZE = 64
# Wait this long for a free connection before answering 503: fail fast, never hang.
POOL_WAIT_SECONDS = 5.0
# A connection handed out this recently worked a moment ago (its last user would have met a
# broken one, and the pool drops a broken connection when it comes back): no round trip to
# check it. Older ones are checked before use, so one that died with a Postgres restart is
# replaced. Noted at hand-out, not at return: a pool `reset` hook would send every return
# through the pool's maintenance worker, a thread hop (or task) per use.
FRESH_SECONDS = 1.0
_handed_out_at: weakref.WeakKeyDictionary[Connection[Any] | AsyncConnection[Any], float] = (
    weakref.WeakKeyDictionary()
)


def _check(conn: Connection[Any]) -> None:
    now = time.monotonic()
    if now - _handed_out_at.get(conn, 0.0) > FRESH_SECONDS:
        ConnectionPool.check_connection(conn)
    _handed_out_at[conn] = now


async def _check_async(conn: AsyncConnection[Any]) -> None:
    now = time.monotonic()
    if now - _handed_out_at.get(conn, 0.0) > FRESH_SECONDS:
        await AsyncConnectionPool.check_connection(conn)
    _handed_out_at[conn] = now


def pool() -> ConnectionPool:
    """The process's connection pool, made on first use (after a fork, never before)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            settings = get_settings()
            settings.require_urls()
            _pool = ConnectionPool(
                settings.libpq_url,
                min_size=1,
                max_size=POOL_MAX_SIZE,
                timeout=POOL_WAIT_SECONDS,
                kwargs={"autocommit": True, "connect_timeout": 3},
                # A connection that died with a Postgres restart is replaced, never handed out.
                check=_check,
                open=True,
                name="stockout",
            )
        return _pool


def close_pool() -> None:
    """Close the pool (tests, process shutdown); the next use makes a new one."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


class UnitOfWork:
    """One transaction on `conn`, and what to wake once it has committed: the one after-commit
    channel, for job runs and webhook deliveries alike."""

    def __init__(self, conn: Connection[Any]) -> None:
        self.conn = conn
        self.to_publish: list[uuid.UUID] = []
        self.to_wake: set[uuid.UUID] = set()

    def publish(self, job_ids: Iterable[uuid.UUID]) -> None:
        """Announce these jobs to the workers after the commit (never before, never on failure)."""
        self.to_publish.extend(job_ids)

    def wake_endpoints(self, endpoint_ids: Iterable[uuid.UUID]) -> None:
        """Wake these webhook endpoints' senders after the commit."""
        self.to_wake.update(endpoint_ids)

    def after_commit(self) -> None:
        """Hand what was collected to the publisher (called once the transaction committed)."""
        from app.kit.dispatch import publish_later

        if self.to_publish or self.to_wake:
            publish_later(self.to_publish, sorted(self.to_wake))
        self.to_publish, self.to_wake = [], set()


@contextmanager
def unit_of_work(conn: Connection[Any] | None = None) -> Iterator[UnitOfWork]:
    """A transaction that commits when the block ends cleanly, then publishes what it collected.

    On `conn` when given (a worker's own connection), else on one from the pool."""
    with contextlib.ExitStack() as stack:
        if conn is None:
            conn = stack.enter_context(pool().connection())
        uow = UnitOfWork(conn)
        with conn.transaction():
            yield uow
    uow.after_commit()


# -- on the event loop -------------------------------------------------------------------------


@asynccontextmanager
async def loop_pool(
    name: str, max_size: int, wait_seconds: float, **connect: Any
) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """A pool of async connections for work done on the API's event loop, without a worker
    thread (the API key check, the common intake, iamport's confirm hook); open while the
    block runs. Connections are checked as the thread pool's are."""
    settings = get_settings()
    conns: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.libpq_url,
        min_size=1,
        max_size=max_size,
        timeout=wait_seconds,
        kwargs={"autocommit": True, "connect_timeout": 3, **connect},
        check=_check_async,
        open=False,
        name=name,
    )
    # Not waiting: the API starts while Postgres is still coming up (requests answer 503).
    await conns.open(wait=False)
    try:
        yield conns
    finally:
        await conns.close()


def rows(conn: Connection[Any], sql: LiteralString | str, params: Any = None) -> list[Any]:
    """All rows of a query, with attribute access."""
    cur = conn.cursor(row_factory=namedtuple_row)
    return cur.execute(sql, params).fetchall()
