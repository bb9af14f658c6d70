"""The API refuses to start without its stores or with a bad accounts file, answers any 5xx as
problem details, and warns when the till guard is off."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from devtools.embedded import free_port
from devtools.launch import ROOT, api_command


def test_refuses_to_start_without_database_and_redis() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        api_command(free_port()), env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DATABASE_URL, REDIS_URL not set" in result.stderr
    assert "stockout dev" in result.stderr


def test_an_unexpected_error_is_a_problem_500(service_env: dict[str, str]) -> None:
    from app.main import create_app

    app = create_app()

    def boom() -> None:
        raise ZeroDivisionError("a bug")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "internal_error"
    assert "a bug" not in r.text


def _startup_log(env: dict[str, str]) -> str:
    """What `uvicorn app.main:app` logs up to "startup complete"."""
    proc = subprocess.Popen(
        api_command(free_port()),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "startup complete" in line or "startup failed" in line:
                break
    finally:
        proc.terminate()
        proc.wait(20)
    return "".join(lines)


def test_an_empty_hook_token_is_a_loud_warning(service_env: dict[str, str]) -> None:
    env = {**os.environ, **service_env, "IAMPORT_WEBHOOK_TOKEN": ""}
    log = _startup_log(env)
    assert "till guard is OFF" in log
    assert "startup complete" in log
    assert "till guard is OFF" not in _startup_log({**env, "IAMPORT_WEBHOOK_TOKEN": "set"})


def test_sweep_noise_is_dropped_at_info() -> None:
    import logging

    from app.kit.dispatch import SWEEP_TASK
    from app.logs import QUIET_TASK, QuietSweeps

    assert QUIET_TASK == SWEEP_TASK

    def record(name: str, msg: str, args: object, level: int = logging.INFO) -> logging.LogRecord:
        r = logging.LogRecord(name, level, __file__, 1, msg, None, None)
        r.args = args  # type: ignore[assignment]
        return r

    quiet = QuietSweeps()
    received = {"name": SWEEP_TASK, "id": "1", "args": "()", "kwargs": "{}"}
    assert not quiet.filter(record("celery.worker.strategy", "Task %(name)s received", received))
    done = {"name": SWEEP_TASK, "id": "1", "runtime": 0.01, "return_value": 0}
    assert not quiet.filter(record("celery.app.trace", "Task succeeded: %(return_value)s", done))
    assert quiet.filter(
        record("celery.app.trace", "Task succeeded: %(return_value)s", {**done, "return_value": 3})
    )
    beat = ("sweep", SWEEP_TASK)
    assert not quiet.filter(record("celery.beat", "Scheduler: Sending due task %s (%s)", beat))
    other = {"name": "stockout.cancel", "id": "2", "args": "()", "kwargs": "{}"}
    assert quiet.filter(record("celery.worker.strategy", "Task %(name)s received", other))
    assert quiet.filter(record("celery.app.trace", "failed", done, logging.ERROR))


def test_a_served_api_logs_a_traceback_as_one_json_record() -> None:
    # uvicorn's own loggers print a failed startup's traceback as many plain lines; through
    # the service's handler it is one JSON record, like every other line it writes.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        api_command(free_port()),
        env={**env, "LOG_JSON": "true"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    tracebacks = [r for r in records if "Traceback (most recent call last)" in json.dumps(r)]
    assert len(tracebacks) == 1
    assert "DATABASE_URL, REDIS_URL not set" in tracebacks[0]["event"]


BAD_ACCOUNTS = [
    pytest.param(
        '[accounts.main]\napi = "v1"\nimp_key = "k"\nimp_secret = "inline-secret-value"\n',
        "account main: imp_secret: a secret is given by reference only",
        id="inline-secret",
    ),
    pytest.param(
        '[accounts.main]\napi = "v1"\nimp_key = "k"\nimp_secret_env = "T_UNSET_SECRET"\n',
        "account main: imp_secret: variable T_UNSET_SECRET is not set",
        id="unset-secret",
    ),
    pytest.param(
        '[accounts.shop2]\napi = "v2"\nstore_id = "s"\nimp_key = "k"\n',
        "account shop2: imp_key: a v1 field",
        id="v1-field-on-v2",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_ACCOUNTS)
def test_refuses_to_start_with_a_bad_accounts_file(
    service_env: dict[str, str], tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    env = {**os.environ, **service_env, "ACCOUNTS_FILE": str(path)}
    env.pop("T_UNSET_SECRET", None)
    result = subprocess.run(
        api_command(free_port()), env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cannot start: ACCOUNTS_FILE {path}: {expected}")
    assert "inline-secret-value" not in result.stderr + result.stdout


def test_starts_with_a_good_accounts_file(service_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(
        '[accounts.main]\napi = "v1"\nimp_key = "k"\nimp_secret_env = "T_MAIN_SECRET"\n'
    )
    env = {**os.environ, **service_env, "ACCOUNTS_FILE": str(path), "T_MAIN_SECRET": "s"}
    assert "startup complete" in _startup_log(env)
