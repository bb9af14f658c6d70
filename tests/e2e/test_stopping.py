"""SIGTERM stops every process within 15 s, whatever state it and its dependencies are in.

Each test brings a real process (worker, beat, uvicorn) into one state, sends SIGTERM to that
process alone (as Kubernetes does to PID 1), and asserts it exits within 15 s with status 0
or 143 and no traceback in its output; where a worker held jobs, they are still in Postgres,
unfinished or finished, never gone (their lease hands them to another worker).

Each test owns the Redis it breaks (killed or frozen), never the session's. "Postgres gone"
is a port that accepts TCP connections and never answers: a server that died without closing
its sockets, the hardest case for a client (a refused connection fails at once).
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from celery import Celery

from devtools.embedded import EmbeddedRedis, free_port, wait_for_port
from devtools.launch import ROOT, api_command, beat_command
from devtools.sandbox.control import SandboxControl
from tests.support.processes import start_worker, stop, wait_until

pytestmark = pytest.mark.slow

STOP_WITHIN = 15.0
CLEAN_EXITS = (0, 143, -signal.SIGTERM)  # 143 from a shell; -15 as Popen reports it
HANG_MS = 60_000  # every sandbox call: longer than any stop may take
_n = itertools.count()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, to kill or freeze without touching the session's."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)  # a frozen server cannot be killed cleanly
    server.stop()


@pytest.fixture
def env(stack_env: dict[str, str], own_redis: EmbeddedRedis) -> dict[str, str]:
    return stack_env | {"REDIS_URL": own_redis.url}


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose listen backlog completes TCP handshakes, and nothing ever answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def enqueue(db: str, redis_url: str, sandbox: SandboxControl, n: int) -> list[str]:
    """`n` queued jobs in Postgres, their messages on `redis_url`'s queue."""
    from app.kit.dispatch import QUEUE, send_now

    batch = next(_n)
    uids = [f"imps_stop{batch}_{i}" for i in range(n)]
    sandbox.create_payments([{"imp_uid": u, "status": "ready", "amount": 1000} for u in uids])
    with psycopg.connect(db, autocommit=True) as conn:
        ids = [
            str(row[0])
            for u in uids
            for row in conn.execute(
                "INSERT INTO jobs (imp_uid, due_at) VALUES (%s, now()) RETURNING id", (u,)
            ).fetchall()
        ]
    celery = Celery("stop-test", broker=redis_url, set_as_current=False)
    celery.conf.task_default_queue = QUEUE
    try:
        send_now(ids, celery=celery)
    finally:
        celery.close()
    return ids


def statuses(db: str, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT id::text, status FROM jobs WHERE id = ANY(%s::uuid[])", (ids,))
        return dict(rows.fetchall())


def running(db: str, ids: list[str]) -> int:
    return sum(1 for s in statuses(db, ids).values() if s == "running")


def assert_kept(db: str, ids: list[str]) -> None:
    """Every job is still there: unfinished (its lease gives it to the next worker) or done."""
    found = statuses(db, ids)
    assert sorted(found) == sorted(ids), "a job vanished"
    known = {"queued", "running", "retry_wait", "cancelled", "needs_refund", "failed"}
    assert set(found.values()) <= known


def terminate(proc: subprocess.Popen[bytes], log: Path) -> float:
    """SIGTERM to the process alone; assert a clean exit in time; how long it took."""
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        stop(proc, signal.SIGKILL)
        pytest.fail(f"still running {STOP_WITHIN:.0f} s after SIGTERM:\n{tail(log)}")
    took = time.monotonic() - started
    # Children (job processes) must be gone too: nothing of the group may outlive the stop.
    wait_until(lambda: not group_alive(proc.pid), 2, "the process group to be gone")
    text = log.read_text(errors="replace")
    assert code in CLEAN_EXITS, f"exit status {code}:\n{tail(log)}"
    assert "Traceback" not in text, tail(log)
    return took


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def unread_by(port: int) -> bool:
    """Whether a client wrote to the server on `port` something the server has not read: a
    frozen Redis has been asked something (Linux's /proc/net/tcp, receive queue > 0)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, queues = fields[1], fields[4]
        if int(local.split(":")[1], 16) == port and int(queues.split(":")[1], 16) > 0:
            return True
    return False


def freeze(server: EmbeddedRedis) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def start(env: dict[str, str], log: Path, name: str = "w1") -> subprocess.Popen[bytes]:
    return start_worker(env, log, beat=False, name=name)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_consuming(redis_url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the worker takes messages off its queue (it is connected and consuming)."""
    import redis

    from app.kit.dispatch import QUEUE

    client = redis.Redis.from_url(redis_url)
    probe = Celery("probe", broker=redis_url, set_as_current=False)
    probe.conf.task_default_queue = QUEUE
    try:
        probe.send_task("stockout.cancel_jobs", args=[[]], queue=QUEUE)
        wait_until(
            lambda: proc.poll() is None and client.llen(QUEUE) == 0,
            timeout,
            "the worker to consume",
        )
    finally:
        probe.close()
        client.close()


# -- the worker ---------------------------------------------------------------------------------


def test_idle_worker(env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    proc = start(env, log)
    try:
        wait_consuming(env["REDIS_URL"], proc)
        terminate(proc, log)
    finally:
        stop(proc)


def test_busy_worker_with_iamport_hanging(
    env: dict[str, str], sandbox: SandboxControl, tmp_path: Path
) -> None:
    db = env["DATABASE_URL"]
    sandbox.set_faults(latency_ms=HANG_MS)
    log = tmp_path / "w.log"
    # A client timeout past any stop's end: the job threads are still waiting on iamport (its
    # getToken, which all of them wait for) when the stop must be over.
    proc = start(env | {"IAMPORT_TIMEOUT_SECONDS": "30"}, log)
    try:
        ids = enqueue(db, env["REDIS_URL"], sandbox, 12)
        wait_until(lambda: running(db, ids) >= 4, 30, "jobs in flight")
        terminate(proc, log)
    finally:
        stop(proc)
    assert_kept(db, ids)
    assert running(db, ids) >= 1  # held under a lease, for the next worker


def test_worker_in_a_paced_reconciliation_round(
    env: dict[str, str], sandbox: SandboxControl, tmp_path: Path
) -> None:
    db = env["DATABASE_URL"]
    uids = [f"imps_stop_rec_{i:03}" for i in range(300)]
    sandbox.create_payments([{"imp_uid": u, "status": "paid"} for u in uids])
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (account, imp_uid, status, finished_at) "
            "SELECT 'default', u, 'needs_refund', now() FROM unnest(%s::text[]) AS u",
            (uids,),
        )
    log = tmp_path / "w.log"
    # 0.1 lookups a second: the round's second batch waits ten seconds.
    proc = start(env | {"IAMPORT_MAX_RPS": "1", "RECONCILE_RPS_SHARE": "0.1"}, log)
    probe = Celery("probe", broker=env["REDIS_URL"], set_as_current=False)
    try:
        from app.kit.dispatch import QUEUE, RECONCILE_TASK

        probe.send_task(RECONCILE_TASK, queue=QUEUE)
        batch = [e for e in sandbox.calls() if e["call"] == "lookup" and e["imp_uid"] is None]
        wait_until(
            lambda: any(e["call"] == "lookup" and e["imp_uid"] is None for e in sandbox.calls()),
            30,
            "the round's first batch",
        )
        took = terminate(proc, log)
    finally:
        probe.close()
        stop(proc)
    assert not batch
    assert took < 8  # the round ended between batches: no wait for the watchdog
    lookups = [e for e in sandbox.calls() if e["call"] == "lookup"]
    assert len(lookups) == 1 and {e["call"] for e in sandbox.calls()} <= {"token", "lookup"}


def test_worker_after_its_redis_was_killed(
    env: dict[str, str], own_redis: EmbeddedRedis, sandbox: SandboxControl, tmp_path: Path
) -> None:
    db = env["DATABASE_URL"]
    sandbox.set_faults(latency_ms=HANG_MS)
    log = tmp_path / "w.log"
    proc = start(env, log)
    try:
        ids = enqueue(db, env["REDIS_URL"], sandbox, 6)
        wait_until(lambda: running(db, ids) >= 2, 30, "jobs in flight")
        own_redis.stop()
        wait_until(
            lambda: "Connection to broker lost" in log.read_text(errors="replace"),
            15,
            "the worker to see its broker gone",
        )
        terminate(proc, log)
    finally:
        stop(proc)
    assert_kept(db, ids)


def test_worker_with_its_redis_frozen(
    env: dict[str, str], own_redis: EmbeddedRedis, sandbox: SandboxControl, tmp_path: Path
) -> None:
    db = env["DATABASE_URL"]
    sandbox.set_faults(latency_ms=HANG_MS)
    log = tmp_path / "w.log"
    proc = start(env, log)
    try:
        ids = enqueue(db, env["REDIS_URL"], sandbox, 6)
        wait_until(lambda: running(db, ids) >= 2, 30, "jobs in flight")
        freeze(own_redis)
        wait_until(lambda: unread_by(own_redis.port), 15, "the worker to ask the frozen Redis")
        terminate(proc, log)
    finally:
        stop(proc)
    assert_kept(db, ids)


def test_worker_with_postgres_unreachable(
    env: dict[str, str], blackhole: int, sandbox: SandboxControl, tmp_path: Path
) -> None:
    db = env["DATABASE_URL"]
    dead = f"postgresql://postgres@127.0.0.1:{blackhole}/postgres"
    log = tmp_path / "w.log"
    proc = start(env | {"DATABASE_URL": dead}, log)
    try:
        wait_consuming(env["REDIS_URL"], proc)
        # Messages whose jobs the worker cannot even claim: its threads wait on the database.
        ids = enqueue(db, env["REDIS_URL"], sandbox, 6)
        import redis

        from app.kit.dispatch import QUEUE

        client = redis.Redis.from_url(env["REDIS_URL"])
        wait_until(lambda: client.llen(QUEUE) == 0, 15, "the worker to take the messages")
        client.close()
        terminate(proc, log)
    finally:
        stop(proc)
    assert set(statuses(db, ids).values()) == {"queued"}


def test_worker_started_after_a_sibling_was_killed(
    env: dict[str, str], own_redis: EmbeddedRedis, sandbox: SandboxControl, tmp_path: Path
) -> None:
    """The reported case: a sibling killed while it held messages (left unacked in Redis), a
    second worker on the same broker that ran jobs, then Redis stopped, then this worker."""
    db = env["DATABASE_URL"]
    sandbox.set_faults(latency_ms=HANG_MS)
    first_log = tmp_path / "w1.log"
    first = start(env, first_log, name="w1")
    try:
        held = enqueue(db, env["REDIS_URL"], sandbox, 6)
        wait_until(lambda: running(db, held) >= 2, 30, "the sibling's jobs in flight")
    finally:
        stop(first, signal.SIGKILL)
    sandbox.clear_faults()
    log = tmp_path / "w2.log"
    proc = start(env, log, name="w2")
    try:
        ids = enqueue(db, env["REDIS_URL"], sandbox, 6)
        wait_until(
            lambda: running(db, ids) == 0 and set(statuses(db, ids).values()) == {"cancelled"},
            30,
            "w2 to run jobs",
        )
        sandbox.set_faults(latency_ms=HANG_MS)
        more = enqueue(db, env["REDIS_URL"], sandbox, 4)
        wait_until(lambda: running(db, more) >= 1, 30, "w2's jobs in flight")
        own_redis.process.terminate()  # type: ignore[union-attr]
        wait_until(
            lambda: "Connection to broker lost" in log.read_text(errors="replace"),
            15,
            "the worker to see its broker gone",
        )
        terminate(proc, log)
    finally:
        stop(proc)
    assert_kept(db, held + ids + more)


# -- beat and the API ---------------------------------------------------------------------------


def test_beat_with_its_redis_frozen(
    env: dict[str, str], own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    import redis

    from app.kit.dispatch import QUEUE

    log = tmp_path / "beat.log"
    proc = spawn(beat_command(tmp_path / "schedule", loglevel="WARNING"), env, log)
    try:
        client = redis.Redis.from_url(own_redis.url)
        wait_until(lambda: client.llen(QUEUE) > 0, 30, "beat to send its sweeps")
        client.close()
        freeze(own_redis)
        wait_until(lambda: unread_by(own_redis.port), 15, "beat to send to the frozen Redis")
        terminate(proc, log)
    finally:
        stop(proc)


@pytest.fixture
def api_env(env: dict[str, str], key: str) -> dict[str, str]:
    return env | {"LOG_JSON": "true"}


def start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    return spawn(api_command(port), env, log), f"http://127.0.0.1:{port}"


def test_api_with_its_redis_frozen(
    api_env: dict[str, str], own_redis: EmbeddedRedis, key: str, tmp_path: Path
) -> None:
    import httpx

    from tests.support.factories import auth

    log = tmp_path / "api.log"
    proc, url = start_api(api_env, log)
    try:
        wait_for_port(int(url.rsplit(":", 1)[1]))
        freeze(own_redis)
        body = {"event_id": f"stop-{next(_n)}", "sku": "SKU-1", "payments": [{"imp_uid": "x1"}]}
        r = httpx.post(f"{url}/v1/stockout-events", json=body, headers=auth(key), timeout=30)
        assert r.status_code == 202, r.text
        wait_until(lambda: unread_by(own_redis.port), 15, "the API to ask the frozen Redis")
        terminate(proc, log)
    finally:
        stop(proc)


def test_api_with_postgres_unreachable(
    api_env: dict[str, str], blackhole: int, tmp_path: Path
) -> None:
    log = tmp_path / "api.log"
    dead = f"postgresql://postgres@127.0.0.1:{blackhole}/postgres"
    proc, _ = start_api(api_env | {"DATABASE_URL": dead}, log)
    try:
        wait_until(lambda: unread_by(blackhole), 30, "the API to wait on the database")
        terminate(proc, log)
    finally:
        stop(proc)
