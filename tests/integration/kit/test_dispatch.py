"""The publisher thread against real Redis: a lone commit goes out at once, a burst of commits
rides in few messages, and every id arrives."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import redis

from app.config import get_settings
from app.kit import dispatch


@pytest.fixture
def broker(service_env: dict[str, str]) -> redis.Redis:
    dispatch.reset()
    client = redis.Redis.from_url(service_env["REDIS_URL"])
    client.delete(dispatch.QUEUE)
    return client


def ids_in(client: redis.Redis) -> list[list[str]]:
    """The job ids of each message in the queue (Celery's JSON body, base64 in the envelope)."""
    out = []
    for raw in client.lrange(dispatch.QUEUE, 0, -1):
        envelope = json.loads(raw)
        args, _, _ = json.loads(base64.b64decode(envelope["body"]))
        out.append(list(args[0]))
    return out


def test_a_lone_commit_is_sent_at_once(broker: redis.Redis) -> None:
    dispatch.publish_later([uuid.uuid4()])  # the thread started, the broker connected
    assert dispatch.drain()
    broker.delete(dispatch.QUEUE)
    time.sleep(dispatch.SEND_INTERVAL_SECONDS)  # idle: no send in the last interval
    job = uuid.uuid4()
    started = time.monotonic()
    dispatch.publish_later([job])
    while not broker.llen(dispatch.QUEUE) and time.monotonic() - started < 5:
        time.sleep(0.001)
    assert time.monotonic() - started < dispatch.SEND_INTERVAL_SECONDS
    assert ids_in(broker) == [[str(job)]]


def tasks_in(client: redis.Redis) -> list[tuple[str, list[str]]]:
    """(task name, first argument) of each message in the queue."""
    out = []
    for raw in client.lrange(dispatch.QUEUE, 0, -1):
        envelope = json.loads(raw)
        args, _, _ = json.loads(base64.b64decode(envelope["body"]))
        arg = args[0]
        out.append((envelope["headers"]["task"], arg if isinstance(arg, list) else [arg]))
    return out


def test_a_unit_of_work_wakes_jobs_and_webhook_endpoints_only_after_its_commit(
    broker: redis.Redis, clean_db: str
) -> None:
    """One after-commit channel: the jobs a unit of work published and the endpoints it woke
    reach the broker once it commits, and nothing of a unit of work that rolled back."""
    from app.kit.db import unit_of_work

    job, endpoint = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(RuntimeError), unit_of_work() as uow:
        uow.publish([uuid.uuid4()])
        uow.wake_endpoints([uuid.uuid4()])
        raise RuntimeError("rolled back")
    with unit_of_work() as uow:
        uow.publish([job])
        uow.wake_endpoints([endpoint, endpoint])
        uow.conn.execute("SELECT 1")
        assert dispatch.drain() and broker.llen(dispatch.QUEUE) == 0  # nothing before commit
    assert dispatch.drain()
    assert sorted(tasks_in(broker)) == [
        (dispatch.CANCEL_TASK, [str(job)]),
        (dispatch.DELIVER_TASK, [str(endpoint)]),
    ]


def test_a_burst_rides_in_few_full_messages(broker: redis.Redis) -> None:
    jobs = [uuid.uuid4() for _ in range(300)]
    for job in jobs:
        dispatch.publish_later([job])
    assert dispatch.drain()
    messages = ids_in(broker)
    # The first commit may go alone; the rest waited for the next send and share messages.
    assert len(messages) <= 2 + len(jobs) // get_settings().dispatch_batch_size
    assert all(len(m) <= get_settings().dispatch_batch_size for m in messages)
    assert sorted(i for m in messages for i in m) == sorted(str(j) for j in jobs)


def test_a_sweep_leaves_queued_jobs_alone_while_messages_wait(
    broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queued job past its grace behind a backlog is waiting, not lost: no second wake-up
    until the queue has drained. A due retry goes out either way."""
    from app.kit.db import pool
    from worker import tasks

    # The worker's Celery app took its broker address when first imported, maybe by another
    # test with another Redis; the publisher is made anew from this test's settings.
    monkeypatch.setattr(tasks, "app", dispatch.publisher())
    sweep = tasks.sweep

    with pool().connection() as conn:
        conn.execute("TRUNCATE jobs CASCADE")
        queued, retry = (
            conn.execute(
                "INSERT INTO jobs (imp_uid, status, next_attempt_at, due_at) "
                "VALUES (%s, %s, now(), now() - interval '1 second') RETURNING id",
                (f"imps_sweep_{status}", status),
            ).fetchone()[0]  # type: ignore[index]
            for status in ("queued", "retry_wait")
        )
    waiting = uuid.uuid4()
    dispatch.send_now([waiting])  # a message the workers have not taken yet
    assert sweep() == 1
    assert ids_in(broker) == [[str(retry)], [str(waiting)]]  # the newest is pushed first
    broker.delete(dispatch.QUEUE)  # the workers took everything
    assert sweep() == 1
    assert ids_in(broker) == [[str(queued)]]
