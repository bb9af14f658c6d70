"""`stockout dev` as a newcomer meets it: the README's curl steps as written, the demo, one
instance per folder, one dev key across runs, and a non-zero exit when a process dies."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devtools.dev import read_env_file
from devtools.embedded import free_port
from devtools.launch import ROOT
from tests.support.processes import wait_until

pytestmark = pytest.mark.slow


def readme_curl_steps() -> str:
    """The shell block that follows "The same by hand, with curl" in the README."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"The same by hand, with curl:\s*```sh\n(.*?)```", text, re.S)
    assert match, "the README lost its curl steps"
    return match.group(1)


class Dev:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ports = [free_port() for _ in range(4)]
        self.args = [
            sys.executable,
            "-m",
            "app.cli",
            "dev",
            "--concurrency",
            "4",
            *("--port", str(ports[0]), "--sandbox-port", str(ports[1])),
            *("--postgres-port", str(ports[2]), "--redis-port", str(ports[3])),
        ]
        # A shell set up for production must not make dev call the real iamport.
        self.env = {
            **os.environ,
            "IAMPORT_IMP_KEY": "live-key",
            "IAMPORT_IMP_SECRET": "live-secret",
            "IAMPORT_BASE_URL": "http://127.0.0.1:9",
            "LOG_LEVEL": "WARNING",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.folder / "dev.out").unlink(missing_ok=True)
        with (self.folder / "dev.out").open("wb") as out:
            self.proc = subprocess.Popen(
                self.args, cwd=self.folder, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(
            lambda: "API_KEY=" in self.output() or self.proc.poll() is not None,  # type: ignore[union-attr]
            120,
            "stockout dev to come up",
            interval=0.3,
        )
        assert self.proc.poll() is None, self.output()

    def output(self) -> str:
        return (self.folder / "dev.out").read_text(errors="replace")

    def settings(self) -> dict[str, str]:
        return read_env_file(self.folder / ".stockout" / "env")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    tmp_path.chmod(0o755)
    running = Dev(tmp_path)
    try:
        yield running
    finally:
        running.stop()
        # pytest's folders are private (mode 700), so as root the cluster went to /var/tmp.
        location = tmp_path / ".stockout" / "postgres" / "LOCATION"
        if location.exists():
            cluster = re.search(r"(/var/tmp/stockout-pgdata-[0-9a-f]+)", location.read_text())
            if cluster:
                shutil.rmtree(cluster.group(1), ignore_errors=True)


def test_a_newcomers_first_hour(dev: Dev) -> None:
    dev.start()
    env_file = dev.folder / ".stockout" / "env"
    settings = dev.settings()
    assert set(settings) >= {
        "API_URL",
        "API_KEY",
        "SANDBOX",
        "DATABASE_URL",
        "REDIS_URL",
        "IAMPORT_WEBHOOK_TOKEN",
    }
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "set -a; . " in dev.output()

    # The README's steps, exactly as written.
    steps = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_curl_steps()],
        cwd=dev.folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert steps.returncode == 0, steps.stderr
    assert re.search(r'"allowed":\s*false', steps.stdout), steps.stdout
    headers = {"Authorization": f"Bearer {settings['API_KEY']}"}

    def cancelled() -> bool:
        r = httpx.get(f"{settings['API_URL']}/v1/stockout-events/demo-1", headers=headers)
        status: str = r.json()["jobs"][0]["status"]
        return status == "cancelled"

    wait_until(cancelled, 60, "the README's job to be cancelled (by the sandbox)")
    truth = httpx.get(f"{settings['SANDBOX']}/__control/payments/imps_demo_1").json()
    assert truth["status"] == "cancelled"  # the sandbox did it, not the exported "live" iamport

    # A second start in the same folder points at the first.
    again = subprocess.run(
        dev.args, cwd=dev.folder, env=dev.env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1
    assert f"already running in this folder at {settings['API_URL']}" in again.stderr

    # The demo runs against it and no step fails (steps not offered yet are skipped).
    demo = subprocess.run(
        [sys.executable, "-m", "app.cli", "demo"],
        cwd=dev.folder,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert re.search(r"barcodes cancelled\s+│ ok", demo.stdout), demo.stdout
    assert re.search(r"blocked at the till\s+│ ok", demo.stdout), demo.stdout
    assert re.search(r"held, then refunded\s+│ ok", demo.stdout), demo.stdout
    assert re.search(r"virtual account closed\s+│ ok", demo.stdout), demo.stdout
    assert re.search(r"V2: paid, refunded\s+│ ok", demo.stdout), demo.stdout

    # The operator's commands, in a shell that loaded the env file (and exports a live key),
    # see the stack's own accounts and reach the sandbox.
    check = subprocess.run(
        [
            "bash",
            "-euo",
            "pipefail",
            "-c",
            "set -a; . .stockout/env; set +a; stockout accounts check",
        ],
        cwd=dev.folder,
        capture_output=True,
        text=True,
        timeout=60,
        env={**dev.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "default" in check.stdout and "v2" in check.stdout, check.stdout

    # A process that dies takes `stockout dev` down with a non-zero status...
    assert dev.proc is not None
    workers = [
        p for p in psutil.Process(dev.proc.pid).children() if "worker" in " ".join(p.cmdline())
    ]
    assert workers
    workers[0].kill()
    assert dev.proc.wait(60) != 0
    assert "stopped unexpectedly: worker" in dev.output()

    # ...and the next start keeps the same key and token.
    dev.start()
    assert dev.settings()["API_KEY"] == settings["API_KEY"]
    assert dev.settings()["IAMPORT_WEBHOOK_TOKEN"] == settings["IAMPORT_WEBHOOK_TOKEN"]
    assert httpx.get(f"{settings['API_URL']}/v1/stats", headers=headers).status_code == 200


def test_a_taken_port_is_one_plain_line(dev: Dev) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = [*dev.args]
        args[args.index("--port") + 1] = str(port)
        result = subprocess.run(
            args, cwd=dev.folder, env=dev.env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: port {port} (for the API) is already in use; stop what holds it or pass --port N"
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_dev_alone_stops_everything_as_asked(dev: Dev, signum: int) -> None:
    """SIGTERM or SIGINT to `stockout dev` alone (not its process group, as a supervisor or
    `kill` sends it) stops every process it started within 15 s, and it says it was asked to."""
    dev.start()
    assert dev.proc is not None
    children = psutil.Process(dev.proc.pid).children(recursive=True)
    assert len(children) >= 5  # postgres, redis, sandbox, api, worker, beat and theirs
    dev.proc.send_signal(signum)
    assert dev.proc.wait(15) == 0
    out = dev.output()
    assert f"stopping, as asked ({signal.Signals(signum).name})" in out
    assert "stopped unexpectedly" not in out
    _, alive = psutil.wait_procs(children, timeout=1)
    # An orphan's zombie is dead already (this machine's init may be slow to reap it).
    running = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert [" ".join(p.cmdline()) for p in running] == []
