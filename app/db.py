"""The engine and the one transaction owner for the HTTP side."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from app.config import get_settings


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine: a small pool, stale connections detected before use."""
    settings = get_settings()
    settings.require_urls()
    return create_engine(
        settings.database_url,
        pool_size=20,
        max_overflow=20,
        pool_timeout=5,
        # A connection that died with a Postgres restart is found and replaced, never served.
        pool_pre_ping=True,
        # Fail fast while Postgres is down: the API answers 503 instead of hanging.
        connect_args={"connect_timeout": 3},
    )


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits when the block ends cleanly and rolls back otherwise."""
    with Session(get_engine(), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
