"""Run the iamport sandbox in a subprocess on a free port, as `stockout sandbox` would."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from devtools.embedded import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
IMP_KEY = "sandbox_key"
IMP_SECRET = "sandbox_secret"


@contextlib.contextmanager
def running_sandbox(
    *,
    imp_key: str = IMP_KEY,
    imp_secret: str = IMP_SECRET,
    token_ttl: float = 1800,
    seed: int = 0,
    refusal_style: str = "mixed",
    merchants: Sequence[str] = (),
) -> Iterator[str]:
    """Start a sandbox server and yield its base URL; it is stopped on exit. `merchants` are
    more accounts, `KEY:SECRET[:TIER]` each."""
    port = free_port()
    code = (
        "from devtools.sandbox.server import run; "
        f"run('127.0.0.1', {port}, {imp_key!r}, {imp_secret!r}, {token_ttl!r}, {seed!r}, "
        f"{refusal_style!r}, merchants={list(merchants)!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        try:
            wait_for_port(port, timeout=20)
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError(f"sandbox exited with {proc.returncode}") from None
            raise
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
