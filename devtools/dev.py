"""`stockout dev`: the whole service on one machine, with pip-installed Postgres and Redis."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from rich.console import Console

from devtools import launch
from devtools.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    postgres_bin_dir,
    redis_server_binary,
    wait_for_port,
)
from devtools.sandbox.control import SandboxControl

console = Console(stderr=True)
SANDBOX_KEY, SANDBOX_SECRET = "sandbox_key", "sandbox_secret"
# The sandbox's own PortOne V2 store, and the dev stack's V2 account that uses it.
SANDBOX_STORE, SANDBOX_V2_SECRET = "store-sandbox", "portone_sandbox_secret"
V2_ACCOUNT = "v2"
EXTRAS_HINT = (
    "stockout dev needs Postgres and Redis: the embedded ones come with the dev install "
    "(`pip install -r requirements-dev.lock`, or `make run`), which production installs "
    "leave out; or put initdb/pg_ctl and redis-server on PATH"
)
# Variables a shell may export for a real deployment; dev ignores them unless told otherwise.
REAL_IAMPORT_VARS = ("IAMPORT_IMP_KEY", "IAMPORT_IMP_SECRET", "IAMPORT_BASE_URL")


class DevError(RuntimeError):
    """A problem the person starting `stockout dev` can fix; printed as one line."""


class StopAsked(BaseException):
    """SIGINT or SIGTERM reached `stockout dev`: stop everything, and say it was asked for."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name


def _ask_to_stop(signum: int, _frame: object) -> None:
    # Later signals during the stop are ignored: the stop is bounded already (Children.stop).
    for name in STOP_SIGNALS:
        signal.signal(name, signal.SIG_IGN)
    raise StopAsked(signum)


# SIGHUP too: the children have sessions of their own, so a closed terminal reaches only us.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stop_on_signals() -> None:
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP sent to `stockout dev` alone ends in an orderly stop."""
    for name in STOP_SIGNALS:
        signal.signal(name, _ask_to_stop)


@dataclass(frozen=True)
class Ports:
    """Stable defaults, so the URLs in .stockout/env and the README stay the same."""

    api: int = 8000
    sandbox: int = 8001
    postgres: int = 54329
    redis: int = 63799


# The children get this long to stop; with Postgres and Redis after them, `stockout dev`
# ends well within the 15 s a process supervisor gives.
STOP_SECONDS = 8.0


@dataclass
class Children:
    """The service's processes, stopped in reverse order of start."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path
    ) -> subprocess.Popen[bytes]:
        log = (log_dir / f"{name}.log").open("ab")
        # A session of its own: a terminal's Ctrl-C reaches `stockout dev` alone, which stops
        # the children in order, instead of every child dying at once (and being counted dead).
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def dead(self) -> list[str]:
        return [name for name, p in self.procs if p.poll() is not None]

    def stop(self) -> None:
        """SIGTERM to every child at once; whatever still runs after STOP_SECONDS is killed
        (its jobs are taken up again when their leases end), so the whole stop stays bounded."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (as `stockout dev` writes them); {} when the file is missing."""
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip().strip("'\"")
    return values


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Write the dev stack's settings for `set -a; . .stockout/env; set +a`; owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# written by `stockout dev`; load with: set -a; . .stockout/env; set +a"]
    lines += [f"{k}={v}" for k, v in values.items()]
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on host:port (or we may not bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(ports: Ports, host: str) -> None:
    """One plain error naming the taken port and the option that moves it."""
    for what, port, flag, h in (
        ("the API", ports.api, "--port", host),
        ("the iamport sandbox", ports.sandbox, "--sandbox-port", "127.0.0.1"),
        ("Postgres", ports.postgres, "--postgres-port", "127.0.0.1"),
        ("Redis", ports.redis, "--redis-port", "127.0.0.1"),
    ):
        if port_taken(port, h):
            raise DevError(
                f"port {port} (for {what}) is already in use; stop what holds it or pass {flag} N"
            )


def running_instance(pid_file: Path) -> str | None:
    """The URL of a `stockout dev` still running from this folder, if any."""
    try:
        info = json.loads(pid_file.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(info.get("url", "?"))


def check_extras() -> None:
    """Fail early, in one line, when neither the wheels nor system servers are there."""
    try:
        postgres_bin_dir()
        redis_server_binary()
    except EmbeddedServerError:
        raise DevError(EXTRAS_HINT) from None


def key_still_valid(database_url: str, key: str, scopes: tuple[str, ...]) -> bool:
    """Whether a dev key from an earlier run still works here with every scope."""
    parts = key.split("_", 2)
    if len(parts) != 3:
        return False
    digest = hashlib.sha256(parts[2].encode()).hexdigest()
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT scopes FROM api_keys WHERE prefix = %s AND secret_hash = %s "
                "AND revoked_at IS NULL",
                (parts[1], digest),
            ).fetchone()
    except psycopg.Error:
        return False
    return row is not None and set(scopes) <= set(row[0])


def write_accounts(data_dir: Path, sandbox_url: str, token: str, whsec: str) -> Path:
    """The dev stack's accounts against the sandbox: `default` (iamport V1, the sandbox's own
    merchant) and `v2` (PortOne V2, the sandbox's own store); secrets in files beside it."""
    secrets_dir = data_dir / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    secrets_dir.chmod(0o700)
    files = {
        "default_imp_secret": SANDBOX_SECRET,
        "default_webhook_token": token,
        "v2_api_secret": SANDBOX_V2_SECRET,
        "v2_webhook_secret": whsec,
    }
    for name, value in files.items():
        path = secrets_dir / name
        path.write_text(value + "\n")
        path.chmod(0o600)
    accounts = data_dir / "accounts.toml"
    accounts.write_text(
        "# Written by `stockout dev` on each start: both gateways, against the sandbox.\n"
        "[accounts.default]\n"
        'api = "v1"\n'
        f'imp_key = "{SANDBOX_KEY}"\n'
        f'imp_secret_file = "{secrets_dir / "default_imp_secret"}"\n'
        f'webhook_token_file = "{secrets_dir / "default_webhook_token"}"\n'
        f'base_url = "{sandbox_url}"\n'
        "\n"
        f"[accounts.{V2_ACCOUNT}]\n"
        'api = "v2"\n'
        f'store_id = "{SANDBOX_STORE}"\n'
        f'api_secret_file = "{secrets_dir / "v2_api_secret"}"\n'
        f'webhook_secret_file = "{secrets_dir / "v2_webhook_secret"}"\n'
        f'base_url = "{sandbox_url}"\n'
    )
    return accounts


def new_webhook_secret() -> str:
    """A Standard Webhooks secret, as PortOne's console hands them out."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def wait_ready(url: str, children: Children, timeout: float = 60) -> None:
    """Wait until /readyz answers 200 (or a child dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if children.dead():
            raise DevError(f"{', '.join(children.dead())} stopped during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise DevError(f"{url}/readyz did not answer 200 within {timeout:.0f}s")


def run_dev(
    host: str,
    ports: Ports,
    data_dir: Path,
    concurrency: int,
    real_iamport: bool = False,
) -> int:
    """Start everything, write .stockout/env, and stop everything on Ctrl-C; the exit status."""
    data_dir = data_dir.resolve()
    pid_file = data_dir / "dev.pid"
    running = running_instance(pid_file)
    if running:
        raise DevError(f"stockout dev is already running in this folder at {running}")
    check_extras()
    check_ports(ports, host)
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o755)
    env_file = data_dir / "env"
    previous = read_env_file(env_file)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{ports.api}"
    children = Children()
    with ExitStack() as stack:
        pid_file.write_text(json.dumps({"pid": os.getpid(), "url": url}))
        stack.callback(pid_file.unlink, missing_ok=True)
        console.print(f"[bold]stockout dev[/] data in {data_dir}")
        pg = EmbeddedPostgres(data_dir / "postgres", port=ports.postgres)
        pg.start()
        stack.callback(pg.stop)
        redis_server = EmbeddedRedis(data_dir / "redis", port=ports.redis)
        redis_server.start()
        stack.callback(redis_server.stop)
        stack.callback(children.stop)

        # The hook token is kept across runs, like the key: URLs written down stay valid.
        token = previous.get("IAMPORT_WEBHOOK_TOKEN") or secrets.token_urlsafe(16)
        env = {k: v for k, v in os.environ.items() if real_iamport or k not in REAL_IAMPORT_VARS}
        env.update(
            DATABASE_URL=pg.url,
            REDIS_URL=redis_server.url,
            IAMPORT_WEBHOOK_TOKEN=token,
            LOG_JSON=os.environ.get("LOG_JSON", "true"),
            # Dev and demo receivers listen on this machine.
            WEBHOOK_ALLOW_PRIVATE_URLS="true",
            # The sandbox never goes on working on a call it did not answer: no need to wait
            # the production default (minutes) before calling again after an outage.
            CANCEL_SETTLE_SECONDS=os.environ.get("CANCEL_SETTLE_SECONDS", "3"),
        )
        sandbox_url = ""
        whsec = v2_account = ""
        if real_iamport:
            if not (env.get("IAMPORT_IMP_KEY") and env.get("IAMPORT_IMP_SECRET")):
                raise DevError("--real-iamport needs IAMPORT_IMP_KEY and IAMPORT_IMP_SECRET")
            console.print(
                "[bold white on red] REAL IAMPORT [/] "
                f"[bold red]cancels go to {env.get('IAMPORT_BASE_URL', 'https://api.iamport.kr')} "
                "with your credentials: real barcodes will be voided[/]"
            )
        else:
            sandbox_url = f"http://127.0.0.1:{ports.sandbox}"
            hooks = f"{url}/v1/iamport"
            children.start(
                "sandbox",
                launch.sandbox_command(
                    ports.sandbox,
                    confirm_url=f"{hooks}/cvs-confirm?token={token}",
                    notice_url=f"{hooks}/notifications?token={token}",
                ),
                env,
                logs,
            )
            wait_for_port(ports.sandbox)
            env.update(
                IAMPORT_BASE_URL=sandbox_url,
                IAMPORT_IMP_KEY=SANDBOX_KEY,
                IAMPORT_IMP_SECRET=SANDBOX_SECRET,
            )
            if not env.get("ACCOUNTS_FILE"):
                # A PortOne V2 account beside the iamport one; the sandbox signs its store's
                # webhooks and sends them to the account's hook.
                whsec = previous.get("V2_WEBHOOK_SECRET") or new_webhook_secret()
                env["ACCOUNTS_FILE"] = str(write_accounts(data_dir, sandbox_url, token, whsec))
                v2_account = V2_ACCOUNT
                hook = f"{url}/v1/portone/webhooks/{V2_ACCOUNT}"
                with SandboxControl(sandbox_url) as control:
                    control.v2.add_store(SANDBOX_STORE, SANDBOX_V2_SECRET, hook, whsec)

        migrated = subprocess.run(
            launch.migrate_command(), env=env, cwd=launch.ROOT, capture_output=True, text=True
        )
        if migrated.returncode != 0:
            (logs / "migrate.log").write_text(migrated.stdout + migrated.stderr)
            raise DevError(f"migrations failed; see {logs / 'migrate.log'}")
        from app.operators.keys import Scope

        scopes = tuple(s.value for s in Scope)
        key = previous.get("API_KEY", "")
        if not key_still_valid(pg.url, key, scopes):
            key = launch.create_key(env, "dev", scopes)
        children.start("api", launch.api_command(ports.api, host), env, logs)
        worker = launch.worker_command(concurrency=concurrency, name="dev-worker")
        children.start("worker", worker, env, logs)
        children.start("beat", launch.beat_command(data_dir / "celerybeat-schedule"), env, logs)
        wait_ready(url, children)
        write_env_file(
            env_file,
            {
                "API_URL": url,
                "API_KEY": key,
                "SANDBOX": sandbox_url,
                "DATABASE_URL": pg.url,
                "REDIS_URL": redis_server.url,
                "IAMPORT_WEBHOOK_TOKEN": token,
                "V2_ACCOUNT": v2_account,
                "V2_WEBHOOK_SECRET": whsec,
                # So `stockout accounts check`, `reconcile` and `keys create --account` in a
                # shell that loaded this file see the stack's accounts, not the shell's own.
                **({"ACCOUNTS_FILE": env["ACCOUNTS_FILE"]} if env.get("ACCOUNTS_FILE") else {}),
            },
        )
        console.print(f"\n[bold green]stockout-cancel is up[/] at {url}  (logs in {logs})")
        console.print(f"  API docs  {url}/docs")
        if sandbox_url:
            console.print(
                f"  sandbox   {sandbox_url}  (iamport and PortOne V2 simulator; control API "
                "/__control)"
            )
        if v2_account:
            console.print(
                f"  accounts  default (iamport V1) and {v2_account} (PortOne V2, store "
                f"{SANDBOX_STORE}) in {_shown(Path(env['ACCOUNTS_FILE']))}"
            )
        console.print(f"  settings  {env_file}  (API_URL, API_KEY, SANDBOX, DATABASE_URL, ...)")
        console.print("  try it    [bold]stockout demo[/]   or, for the README's curl steps:")
        console.print(f"            set -a; . {_shown(env_file)}; set +a")
        console.print("  Ctrl-C stops everything.")
        print(f"API_URL={url}", flush=True)
        print(f"API_KEY={key}", flush=True)
        try:
            while not children.dead():
                time.sleep(0.5)
        except StopAsked as asked:
            console.print(f"\nstopping, as asked ({asked.signal_name})…")
            return 0
        console.print(f"[red]stopped unexpectedly:[/] {', '.join(children.dead())}; see {logs}")
        return 1
    return 1  # not reached: the with block returns


def _shown(path: Path) -> str:
    """`path` relative to the current folder when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
