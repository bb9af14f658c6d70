"""The accounts migration on a database with rows: they become `default`'s, readers go on
reading while it runs, and the keys are per account afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.support.stack import ROOT


def alembic(url: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env=dict(os.environ, DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def fresh_db(database_url: str) -> Iterator[str]:
    name = f"mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_existing_rows_become_defaults_and_readers_are_not_blocked(fresh_db: str) -> None:
    alembic(fresh_db, "upgrade", "0005")
    with psycopg.connect(fresh_db) as conn:
        conn.execute(
            "INSERT INTO events (event_id, sku, reason, content_hash) "
            "VALUES ('evt-1', 'SKU', 'out of stock', 'h')"
        )
        job = conn.execute("INSERT INTO jobs (imp_uid) VALUES ('imps_1') RETURNING id").fetchone()
        assert job is not None
        conn.execute(
            "INSERT INTO event_jobs (event_id, job_id, position) VALUES ('evt-1', %s, 1)", job
        )
        conn.execute(
            "INSERT INTO api_keys (name, prefix, secret_hash, scopes) "
            "VALUES ('k', 'p1', 'h', ARRAY['jobs:read'])"
        )

    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    def read() -> None:
        nonlocal reads
        # A reader that a long lock would stop: any wait over 2 s counts as downtime.
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("SET statement_timeout = '2s'")
            while not stop.is_set():
                try:
                    conn.execute(
                        "SELECT count(*) FROM jobs j JOIN event_jobs l ON l.job_id = j.id "
                        "JOIN events e ON e.event_id = l.event_id"
                    ).fetchone()
                    reads += 1
                except psycopg.Error as exc:
                    failures.append(type(exc).__name__)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        alembic(fresh_db, "upgrade", "head")
    finally:
        stop.set()
        reader.join(timeout=10)
    assert failures == [] and reads > 0

    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT account FROM jobs").fetchall() == [("default",)]
        assert conn.execute("SELECT account FROM events").fetchall() == [("default",)]
        assert conn.execute("SELECT account FROM event_jobs").fetchall() == [("default",)]
        assert conn.execute("SELECT accounts FROM api_keys").fetchall() == [(None,)]
        # The same event_id and imp_uid in another account are new rows; in the same, refused.
        conn.execute(
            "INSERT INTO events (account, event_id, sku, reason, content_hash) "
            "VALUES ('shop2', 'evt-1', 'SKU', 'r', 'h')"
        )
        conn.execute("INSERT INTO jobs (account, imp_uid) VALUES ('shop2', 'imps_1')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO jobs (account, imp_uid) VALUES ('default', 'imps_1')")
        conn.rollback()
        # A link must name an event of its own account.
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                "INSERT INTO event_jobs (account, event_id, job_id, position) "
                "VALUES ('shop3', 'evt-1', %s, 1)",
                job,
            )
        conn.rollback()

    alembic(fresh_db, "downgrade", "0005")
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT event_id FROM event_jobs").fetchall() == [("evt-1",)]
