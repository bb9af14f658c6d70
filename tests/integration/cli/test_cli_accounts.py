"""`stockout accounts list|check` as an operator runs them, against real files and the sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devtools.launch import ROOT
from devtools.sandbox.control import SandboxControl

SECRET = "sandbox_secret"  # the sandbox's credentials: what a good account holds
WRONG = "wrong-secret-never-shown"


def stockout(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IAMPORT_", "ACCOUNTS_FILE", "STOCKOUT_API"))
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "accounts", *args],
        cwd=ROOT,
        env={**clean, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def accounts_file(tmp_path: Path, sandbox_url: str) -> Path:
    secret_file = tmp_path / "good_secret"
    secret_file.write_text(SECRET + "\n")
    path = tmp_path / "accounts.toml"
    path.write_text(
        f"""
[accounts.good]
api = "v1"
imp_key = "sandbox_key"
imp_secret_file = "{secret_file}"
tier = "A01"
max_rps = 7
base_url = "{sandbox_url}"
webhook_token_env = "T_GOOD_TOKEN"

[accounts.bad]
api = "v1"
imp_key = "sandbox_key"
imp_secret_env = "T_BAD_SECRET"
base_url = "{sandbox_url}"

[accounts.shop2]
api = "v2"
api_secret_env = "T_SHOP2_SECRET"
store_id = "store-0a1b2c"
base_url = "{sandbox_url}"

[accounts.shop3]
api = "v2"
api_secret_env = "T_SHOP3_SECRET"
store_id = "store-sandbox"
base_url = "{sandbox_url}"
"""
    )
    return path


ENV = {
    "T_GOOD_TOKEN": "good-hook-token",
    "T_BAD_SECRET": WRONG,
    "T_SHOP2_SECRET": WRONG + "2",
    "T_SHOP3_SECRET": "portone_sandbox_secret",  # the sandbox's own V2 store
}


def no_secret(result: subprocess.CompletedProcess[str]) -> None:
    for value in (SECRET, WRONG, "good-hook-token"):
        assert value not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_list_shows_each_account_and_whether_its_secrets_resolve(
    tmp_path: Path, sandbox_url: str
) -> None:
    path = accounts_file(tmp_path, sandbox_url)
    result = stockout("list", env={"ACCOUNTS_FILE": str(path), **ENV})
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert set(rows) >= {"good", "bad", "shop2"}
    assert [c.strip() for c in rows["good"].split("│")[2:5]] == ["v1", "A01", "7"]
    assert [c.strip() for c in rows["shop2"].split("│")[2:5]] == ["v2", "store-0a1b2c", "20"]
    assert f"imp_secret: ok, file {tmp_path / 'good_secret'}" in result.stdout
    assert "webhook_token: ok, variable T_GOOD_TOKEN" in result.stdout
    assert "api_secret: ok, variable T_SHOP2_SECRET" in result.stdout
    no_secret(result)


def test_list_shows_a_secret_that_does_not_resolve_and_exits_1(
    tmp_path: Path, sandbox_url: str
) -> None:
    path = accounts_file(tmp_path, sandbox_url)
    env = {"ACCOUNTS_FILE": str(path), **ENV}
    del env["T_BAD_SECRET"]
    result = stockout("list", env=env)
    assert result.returncode == 1
    assert "imp_secret: MISSING, variable T_BAD_SECRET is not set" in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"error: ACCOUNTS_FILE {path}: account bad: imp_secret: variable T_BAD_SECRET is not set"
    ]
    no_secret(result)


def test_list_of_a_bad_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text('[accounts.main]\napi = "v1"\nimp_key = "k"\nimp_secret = "inline"\n')
    result = stockout("list", env={"ACCOUNTS_FILE": str(path)})
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: ACCOUNTS_FILE {path}: account main: imp_secret: ")
    assert "inline" not in line


def test_without_the_file_list_shows_default(sandbox_url: str) -> None:
    env = {"IAMPORT_IMP_KEY": "sandbox_key", "IAMPORT_IMP_SECRET": SECRET}
    result = stockout("list", env=env)
    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout and "imp_secret: ok, IAMPORT_IMP_SECRET" in result.stdout
    no_secret(result)


def test_check_authenticates_each_account_at_its_gateway(
    tmp_path: Path, sandbox_url: str, sandbox: SandboxControl
) -> None:
    # `good` is the sub-merchant A01 of the sandbox's own account; the sandbox refuses a Tier
    # it does not know, as iamport does.
    sandbox.add_merchant("sandbox_key", SECRET, "A01")
    path = accounts_file(tmp_path, sandbox_url)
    result = stockout("check", env={"ACCOUNTS_FILE": str(path), **ENV})
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "good: ok"
    assert lines[1].startswith("bad: iamport token: unauthorized, http 401")
    assert lines[2].startswith("shop2: portone lookup: unauthorized, http 401")
    assert lines[3] == "shop3: ok"
    assert len(lines) == 4
    no_secret(result)

    one = stockout("check", "good", env={"ACCOUNTS_FILE": str(path), **ENV})
    assert (one.returncode, one.stdout) == (0, "good: ok\n")


def test_check_of_an_unknown_account_is_one_line(tmp_path: Path, sandbox_url: str) -> None:
    path = accounts_file(tmp_path, sandbox_url)
    result = stockout("check", "nope", env={"ACCOUNTS_FILE": str(path), **ENV})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: no account nope; the accounts are good, bad, shop2, shop3"
    ]


def test_check_without_the_file_uses_the_iamport_variables(
    sandbox_url: str, sandbox: object
) -> None:
    env = {
        "IAMPORT_IMP_KEY": "sandbox_key",
        "IAMPORT_IMP_SECRET": SECRET,
        "IAMPORT_BASE_URL": sandbox_url,
    }
    result = stockout("check", env=env)
    assert (result.returncode, result.stdout) == (0, "default: ok\n"), result.stderr
    bad = stockout("check", "default", env={**env, "IAMPORT_IMP_SECRET": WRONG})
    assert bad.returncode == 1 and bad.stdout.startswith("default: iamport token: unauthorized")
    no_secret(bad)
