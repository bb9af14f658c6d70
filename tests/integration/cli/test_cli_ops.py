"""The operator commands talk to a running API over REST, as an operator's terminal would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from app.cli.jobs import jobs_table, parse_age
from devtools.embedded import free_port, wait_for_port
from devtools.launch import ROOT, api_command
from tests.support.factories import auth, event


@pytest.fixture
def live_api(service_env: dict[str, str], key: str) -> Iterator[tuple[str, str]]:
    """`uvicorn app.main:app` on the test database; (url, key)."""
    port = free_port()
    proc = subprocess.Popen(
        api_command(port),
        env={**os.environ, **service_env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}", key
    finally:
        proc.terminate()
        proc.wait(20)


def stockout(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STOCKOUT_API")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env={**clean, "COLUMNS": "100", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """The command in process (the subprocess form above is for the error paths)."""
    from app.cli.main import cli

    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": "100", **(env or {})})
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_commands_over_rest(
    live_api: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, key = live_api
    body = event(2, prefix="imps_410124208172")
    created = httpx.post(f"{url}/v1/stockout-events", json=body, headers=auth(key)).json()
    job: dict[str, Any] = created["jobs"][0]
    monkeypatch.chdir(tmp_path)
    for name in ("STOCKOUT_API_URL", "STOCKOUT_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    # Settings from the environment...
    env = {"STOCKOUT_API_URL": url, "STOCKOUT_API_KEY": key}
    listed = run("jobs", "list", "--json", "--event", body["event_id"], env=env)
    assert {j["id"] for j in json.loads(listed.stdout)["items"]} == {
        j["id"] for j in created["jobs"]
    }
    # ...or from .stockout/env, as `stockout dev` writes it.
    (tmp_path / ".stockout").mkdir()
    (tmp_path / ".stockout" / "env").write_text(f"API_URL={url}\nAPI_KEY={key}\n")
    by_prefix = run("jobs", "show", job["id"][:8], "--json")
    assert json.loads(by_prefix.stdout)["job"]["id"] == job["id"]
    by_uid = run("jobs", "show", job["imp_uid"])
    assert job["id"] in by_uid.stdout and job["imp_uid"] in by_uid.stdout
    stats = json.loads(run("stats", "--json").stdout)
    assert sum(stats["counts"].values()) == 2
    nothing = run("jobs", "refund", "--older-than", "2h", "--yes")
    assert nothing.exit_code == 0 and "nothing to do" in nothing.stderr
    # Refunding asks first; without a terminal to ask, it refuses.
    asked = stockout("jobs", "refund", job["id"], cwd=tmp_path)
    assert "pass --yes" in one_line_error(asked)
    # A queued job is not refundable (409), or this API has no refund yet (404): one line.
    refused = stockout("jobs", "refund", job["id"], "--yes", cwd=tmp_path)
    assert "not_refundable" in one_line_error(refused) or "no refund endpoint" in refused.stderr
    missing = run("jobs", "show", "ffffffff")
    assert "no job whose id starts with ffffffff" in str(missing.exception)


def test_configuration_and_connection_problems_are_one_line(tmp_path: Path) -> None:
    unset = stockout("stats", cwd=tmp_path)
    assert "STOCKOUT_API_URL" in one_line_error(unset)
    env = {"STOCKOUT_API_URL": f"http://127.0.0.1:{free_port()}", "STOCKOUT_API_KEY": "sk_x_y"}
    down = stockout("jobs", "list", cwd=tmp_path, env=env)
    line = one_line_error(down)
    assert "cannot reach the API" in line and "sk_x_y" not in line


def test_tables_never_cut_an_imp_uid() -> None:
    uid = "imps_" + "9" * 59  # the longest imp_uid the API accepts
    job: dict[str, Any] = {
        "id": "3f1c9a52-8d4e-4b7a-9c1e-2a6f0d5b7e93",
        "imp_uid": uid,
        "status": "needs_refund",
        "attempts": 3,
        "payment_status": "paid",
        "created_at": "2026-11-25T06:00:01Z",
        "error": {"message": "a long upstream message " * 5},
    }
    console = Console(width=120, record=True)
    console.print(jobs_table([job]))
    text = console.export_text()
    assert uid in text and job["id"] in text


def test_ages() -> None:
    assert parse_age("2h").total_seconds() == 7200
    assert parse_age("90s").total_seconds() == 90
    with pytest.raises(Exception, match=r"e\.g\. 2h"):
        parse_age("two hours")
