"""`stockout dev`: the whole service on one machine, with pip-installed Postgres and Redis."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console

from app import launch
from app.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port

console = Console(stderr=True)
SANDBOX_KEY, SANDBOX_SECRET = "sandbox_key", "sandbox_secret"


@dataclass
class Children:
    """The service's processes, stopped in reverse order of start."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path
    ) -> subprocess.Popen[bytes]:
        log = (log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.procs.append((name, proc))
        return proc

    def dead(self) -> list[str]:
        return [name for name, p in self.procs if p.poll() is not None]

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(url: str, timeout: float = 60) -> None:
    """Wait until /readyz answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}/readyz did not answer 200 within {timeout}s")


def run_dev(host: str, port: int, data_dir: Path, concurrency: int) -> None:
    """Start everything, print the URL and a key, and stop everything on Ctrl-C."""
    data_dir = data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o755)
    children = Children()
    with ExitStack() as stack:
        console.print(f"[bold]stockout dev[/] data in {data_dir}")
        pg = EmbeddedPostgres(data_dir / "postgres")
        pg.start()
        stack.callback(pg.stop)
        redis_server = EmbeddedRedis(data_dir / "redis")
        redis_server.start()
        stack.callback(redis_server.stop)
        stack.callback(children.stop)
        console.print(f"  postgres  {pg.url}\n  redis     {redis_server.url}")

        env = dict(
            os.environ,
            DATABASE_URL=pg.url,
            REDIS_URL=redis_server.url,
            IAMPORT_WEBHOOK_TOKEN=os.environ.get("IAMPORT_WEBHOOK_TOKEN")
            or secrets.token_urlsafe(16),
            LOG_JSON=os.environ.get("LOG_JSON", "true"),
        )
        if not os.environ.get("IAMPORT_IMP_KEY"):
            sandbox_port = free_port()
            children.start("sandbox", launch.sandbox_command(sandbox_port), env, logs)
            wait_for_port(sandbox_port)
            env.update(
                IAMPORT_BASE_URL=f"http://127.0.0.1:{sandbox_port}",
                IAMPORT_IMP_KEY=SANDBOX_KEY,
                IAMPORT_IMP_SECRET=SANDBOX_SECRET,
            )
            console.print(
                f"  sandbox   {env['IAMPORT_BASE_URL']} (iamport simulator; control API under /__control)"
            )

        subprocess.run(
            launch.migrate_command(), env=env, check=True, cwd=launch.ROOT, capture_output=True
        )
        key = launch.create_key(env, "dev")
        url = f"http://{host}:{port}"
        children.start("api", launch.api_command(port, host), env, logs)
        worker = launch.worker_command(concurrency=concurrency, name="dev-worker")
        children.start("worker", worker, env, logs)
        children.start("beat", launch.beat_command(data_dir / "celerybeat-schedule"), env, logs)
        wait_ready(url)
        console.print(f"\n[bold green]stockout-cancel is up[/] at {url}  (logs in {logs})")
        console.print(f"  API docs  {url}/docs")
        console.print(
            f"  webhooks  {url}/v1/iamport/cvs-confirm?token=…  (token in IAMPORT_WEBHOOK_TOKEN)"
        )
        console.print("  Ctrl-C stops everything.")
        print(f"URL={url}", flush=True)
        print(f"API_KEY={key}", flush=True)
        try:
            while not children.dead():
                time.sleep(0.5)
            console.print(f"[red]stopped unexpectedly:[/] {', '.join(children.dead())}; see {logs}")
        except KeyboardInterrupt:
            console.print("\nstopping…")
