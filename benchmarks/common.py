"""A whole stack in processes for the benchmarks: Postgres, Redis, sandbox, API, workers."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from app.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port
from app.launch import api_command, create_key
from tests.support.processes import ROOT, service_env, start_worker, stop
from tests.support.sandbox import running_sandbox
from tests.support.stack import migrate


@dataclass
class Stack:
    env: dict[str, str]
    api_url: str
    sandbox_url: str
    logs: Path
    redis: EmbeddedRedis
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker_cpu_seconds(self) -> float:
        total = 0.0
        for w in self.workers:
            try:
                p = psutil.Process(w.pid)
                for proc in [p, *p.children(recursive=True)]:
                    t = proc.cpu_times()
                    total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def key(self) -> str:
        return create_key(self.env, "bench")


@contextmanager
def running_stack(workers: int = 1, concurrency: int = 32, **env_overrides: str) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="stockout-bench-") as d:
        base = Path(d)
        base.chmod(0o755)
        pg = EmbeddedPostgres(base / "pg", fast_unsafe=True)
        pg.start()
        redis = EmbeddedRedis(base / "redis")
        redis.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            migrate(pg.url)
            with running_sandbox(seed=1) as sandbox_url:
                env = service_env(
                    DATABASE_URL=pg.url,
                    REDIS_URL=redis.url,
                    IAMPORT_BASE_URL=sandbox_url,
                    IAMPORT_WEBHOOK_TOKEN="bench-hook",
                    **env_overrides,
                )
                port = free_port()
                api = subprocess.Popen(
                    [*api_command(port), "--log-level", "warning"],
                    cwd=ROOT,
                    env=env,
                    stdout=(base / "api.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                procs.append(api)
                wait_for_port(port)
                stack = Stack(
                    env=env,
                    api_url=f"http://127.0.0.1:{port}",
                    sandbox_url=sandbox_url,
                    logs=base,
                    redis=redis,
                )
                for i in range(workers):
                    w = start_worker(
                        env,
                        base / f"worker{i}.log",
                        concurrency=concurrency,
                        beat=i == 0,
                        name=f"bench{i}",
                    )
                    stack.workers.append(w)
                    procs.append(w)
                yield stack
        finally:
            for p in procs:
                stop(p)
            redis.stop()
            pg.stop("immediate")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
