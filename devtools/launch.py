"""The command lines of the service's processes, in one place.

`stockout dev`, the tests, the chaos run and the benchmarks all start the service exactly as
an operator would, through these.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL_SCOPES = ("events:write", "jobs:read", "jobs:write", "webhooks:write")


def migrate_command() -> list[str]:
    return [sys.executable, "-m", "alembic", "upgrade", "head"]


def api_command(port: int, host: str = "127.0.0.1", *, access_log: bool = False) -> list[str]:
    args = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", host, "--port", str(port)]
    return args if access_log else [*args, "--no-access-log"]


def worker_command(
    *,
    concurrency: int = 32,
    name: str = "worker",
    loglevel: str = "INFO",
    beat_schedule: Path | None = None,
) -> list[str]:
    """`celery -A worker worker` on the threads pool; with a schedule file, beat runs inside."""
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "-P",
        "threads",
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--loglevel",
        loglevel,
    ]
    return args if beat_schedule is None else [*args, "-B", "-s", str(beat_schedule)]


def beat_command(schedule: Path, loglevel: str = "INFO") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "beat",
        "-s",
        str(schedule),
        "--loglevel",
        loglevel,
    ]


def sandbox_command(
    port: int,
    seed: int = 0,
    imp_key: str | None = None,
    imp_secret: str | None = None,
    confirm_url: str | None = None,
    notice_url: str | None = None,
    merchants: Sequence[str] = (),
) -> list[str]:
    """`stockout sandbox`; confirm_url/notice_url are given to payments created without them;
    `merchants` are more accounts, `KEY:SECRET[:TIER]` each."""
    args = [sys.executable, "-m", "app.cli", "sandbox", "--port", str(port), "--seed", str(seed)]
    for merchant in merchants:
        args += ["--merchant", merchant]
    for flag, value in (
        ("--imp-key", imp_key),
        ("--imp-secret", imp_secret),
        ("--confirm-url", confirm_url),
        ("--notice-url", notice_url),
    ):
        if value is not None:
            args += [flag, value]
    return args


def create_key(env: dict[str, str], name: str, scopes: tuple[str, ...] = ALL_SCOPES) -> str:
    """`stockout keys create`: the key is the last line of its stdout."""
    args = [sys.executable, "-m", "app.cli", "keys", "create", name]
    for scope in scopes:
        args += ["--scope", scope]
    out = subprocess.run(args, env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]
