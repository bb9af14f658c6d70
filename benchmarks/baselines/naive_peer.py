"""The naive Celery peer: what a first attempt at the worker looks like.

A task per payment on Celery's default pool (prefork, one process per core), `requests`, a new
token before every call (as the official iamport-rest-client does), no timeout, and one UPDATE
to record the outcome. Run as `celery -A benchmarks.baselines.naive_peer worker` with
REDIS_URL, DATABASE_URL, IAMPORT_BASE_URL, IAMPORT_IMP_KEY and IAMPORT_IMP_SECRET set.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
import requests
from celery import Celery

QUEUE = "naive"
TASK = "naive.cancel"
TABLE = "CREATE TABLE IF NOT EXISTS naive_jobs (imp_uid text PRIMARY KEY, status text NOT NULL)"

app = Celery("naive", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_default_queue=QUEUE, task_ignore_result=True, worker_hijack_root_logger=False)
_conn: psycopg.Connection[Any] | None = None


def _db() -> psycopg.Connection[Any]:
    global _conn
    if _conn is None:
        url = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
        _conn = psycopg.connect(url, autocommit=True)
    return _conn


@app.task(name=TASK)
def cancel(imp_uid: str) -> None:
    base = os.environ["IAMPORT_BASE_URL"]
    credentials = {
        "imp_key": os.environ["IAMPORT_IMP_KEY"],
        "imp_secret": os.environ["IAMPORT_IMP_SECRET"],
    }
    token = requests.post(f"{base}/users/getToken", json=credentials).json()["response"][
        "access_token"
    ]
    answer = requests.delete(f"{base}/cvs/{imp_uid}", headers={"Authorization": token}).json()
    status = "cancelled" if answer["code"] == 0 else "failed"
    _db().execute(
        "INSERT INTO naive_jobs (imp_uid, status) VALUES (%s, %s) "
        "ON CONFLICT (imp_uid) DO UPDATE SET status = excluded.status",
        (imp_uid, status),
    )
