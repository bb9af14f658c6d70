"""A whole stack in processes for the benchmarks: Postgres, Redis, sandbox, API, workers."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from app.config import Settings
from devtools.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port
from devtools.launch import ROOT, api_command, beat_command, create_key
from tests.support.processes import service_env, stop
from tests.support.sandbox import running_sandbox
from tests.support.stack import migrate

# The service's worker exactly as an operator starts it: no pool or concurrency flags.
WORKER = [sys.executable, "-m", "celery", "-A", "worker", "worker"]
NAIVE_PEER = [sys.executable, "-m", "celery", "-A", "benchmarks.baselines.naive_peer", "worker"]
# The tests' environment makes sweeps quick and retries fast; a benchmark measures the service
# as it ships. (With a 2 s dispatch grace and a sweep every 0.5 s, the sweep sent again, as if
# their messages were lost, a third of the jobs that merely waited in a few seconds' backlog.)
SHIPPED = {
    name.upper(): str(Settings.model_fields[name].default)
    for name in (
        "sweep_interval_seconds",
        "dispatch_grace_seconds",
        "cancel_settle_seconds",
        "cancel_retry_base_seconds",
        "cancel_retry_max_seconds",
    )
}


@dataclass
class Stack:
    env: dict[str, str]
    api_url: str
    sandbox_url: str
    logs: Path
    redis: EmbeddedRedis
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def key(self) -> str:
        return create_key(self.env, "bench")

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """A process of the stack, logging to `name`.log and stopped with it."""
        proc = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env=self.env,
            stdout=(self.logs / f"{name}.log").open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_uvicorn(self, name: str, app: str) -> str:
        """uvicorn with the API's own flags serving `app`; its URL."""
        port = free_port()
        args = [app if a == "app.main:app" else a for a in api_command(port)]
        self.start(name, [*args, "--log-level", "warning"])
        wait_for_port(port)
        return f"http://127.0.0.1:{port}"

    def start_beat(self) -> subprocess.Popen[bytes]:
        return self.start("beat", beat_command(self.logs / "beat.schedule", loglevel="WARNING"))


def cpu_seconds(proc: subprocess.Popen[bytes], children: bool = True) -> float:
    """User + system CPU of a process (and its children) so far."""
    total = 0.0
    try:
        p = psutil.Process(proc.pid)
        for each in [p, *p.children(recursive=True)] if children else [p]:
            t = each.cpu_times()
            total += t.user + t.system
    except psutil.NoSuchProcess:
        pass
    return total


def process_count(proc: subprocess.Popen[bytes]) -> int:
    try:
        return 1 + len(psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return 0


@contextmanager
def running_stack(**env_overrides: str) -> Iterator[Stack]:
    """Postgres, Redis, the sandbox and the API; workers are started by the benchmark."""
    with tempfile.TemporaryDirectory(prefix="stockout-bench-") as d:
        base = Path(d)
        base.chmod(0o755)
        pg = EmbeddedPostgres(base / "pg", fast_unsafe=True)
        pg.start()
        redis = EmbeddedRedis(base / "redis")
        redis.start()
        stack: Stack | None = None
        try:
            migrate(pg.url)
            with running_sandbox(seed=1) as sandbox_url:
                env = service_env(
                    **SHIPPED,
                    DATABASE_URL=pg.url,
                    REDIS_URL=redis.url,
                    IAMPORT_BASE_URL=sandbox_url,
                    IAMPORT_WEBHOOK_TOKEN="bench-hook",
                    **env_overrides,
                )
                stack = Stack(env=env, api_url="", sandbox_url=sandbox_url, logs=base, redis=redis)
                stack.api_url = stack.start_uvicorn("api", "app.main:app")
                yield stack
        finally:
            for p in stack.procs if stack else []:
                stop(p)
            redis.stop()
            pg.stop("immediate")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def emit(figures: dict[str, Any], as_json: bool, table: list[tuple[str, str, str]]) -> None:
    """Print the figures as a compact table (what, figure, against) or as one JSON object."""
    if as_json:
        print(json.dumps(figures, indent=2, sort_keys=True))
        return
    width = max(len(r[0]) for r in table)
    fig_width = max(len(r[1]) for r in table)
    for what, figure, against in table:
        print(f"  {what:<{width}}  {figure:>{fig_width}}  {against}".rstrip())
