"""`stockout webhooks …` against a real API process: JSON output, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.embedded import free_port, wait_for_port
from devtools.launch import ROOT, api_command
from tests.support.processes import service_env as process_env
from tests.support.processes import stop
from tests.support.webhooks import hooks_key


@pytest.fixture
def api_url(service_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = process_env(**service_env, WEBHOOK_ALLOW_PRIVATE_URLS="true")
    log = (tmp_path / "api.log").open("ab")
    proc = subprocess.Popen(
        api_command(port),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def run(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The `stockout` command in this process (the API it talks to is a real process)."""
    from typer.testing import CliRunner

    from app.cli.main import cli

    unset: dict[str, str | None] = {"STOCKOUT_API_URL": None, "STOCKOUT_API_KEY": None}
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, ["webhooks", *args], env={**unset, **env})
    finally:
        os.chdir(previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_webhooks_commands(api_url: str, tmp_path: Path) -> None:
    key = hooks_key()
    env = {"STOCKOUT_API_URL": api_url, "STOCKOUT_API_KEY": key}
    added = run(
        ["add", "http://127.0.0.1:9/hook", "--type", "job.failed", "--description", "x"], env
    )
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_")

    listed = run(["list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    [endpoint] = json.loads(listed.stdout)["items"]
    assert endpoint["event_types"] == ["job.failed"] and "secret" not in endpoint
    assert secret not in listed.stdout
    assert endpoint["id"] in run(["list"], env).stdout

    rotated = run(["rotate", endpoint["id"]], env)
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip().splitlines()[-1]
    assert new.startswith("whsec_") and new != secret

    page = run(["deliveries", endpoint["id"], "--status", "failed", "--json"], env)
    assert json.loads(page.stdout) == {"items": [], "next_cursor": None}
    replayed = run(["replay", endpoint["id"], "--since", "2026-01-01T00:00:00Z", "--json"], env)
    assert json.loads(replayed.stdout) == {"messages": 0}

    # The file .stockout/env, where no environment variable says otherwise.
    (tmp_path / ".stockout").mkdir()
    (tmp_path / ".stockout" / "env").write_text(f"API_URL={api_url}\nAPI_KEY={key}\n")
    assert run(["rm", endpoint["id"]], {}, cwd=tmp_path).returncode == 0
    one_line_error(run(["rm", endpoint["id"]], {}, cwd=tmp_path), "404", "not_found")

    # Errors: one line each, never a traceback or the key.
    one_line_error(run(["add", "ftp://example.com/"], env), "422", "invalid_url")
    one_line_error(run(["list"], {}, cwd=ROOT / "tests"), "STOCKOUT_API_URL")
    unreachable = {"STOCKOUT_API_URL": f"http://127.0.0.1:{free_port()}", "STOCKOUT_API_KEY": key}
    result = run(["list"], unreachable)
    one_line_error(result, "cannot reach")
    assert key not in result.stderr
