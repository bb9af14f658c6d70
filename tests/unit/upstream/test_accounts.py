"""The accounts file, read from real files: what it makes, and one line for each way it is bad."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.upstream.accounts import DEFAULT, AccountsError, load_accounts, read_accounts

SECRET = "s3cr3t-VALUE-never-shown"
GOOD_V1 = """
[accounts.main]
api = "v1"
imp_key = "imp_apikey"
imp_secret_env = "T_MAIN_SECRET"
tier = "A01"
max_rps = 7
base_url = "http://127.0.0.1:9/"
webhook_token_env = "T_MAIN_TOKEN"
on_paid = "refund"
"""
GOOD_V2 = """
[accounts.shop2]
api = "v2"
api_secret_file = "{secret_file}"
store_id = "store-0a1b2c"
webhook_secret_env = "T_SHOP2_WHSEC"
"""


def settings(**over: object) -> Settings:
    base: dict[str, object] = {
        "iamport_imp_key": SecretStr("env_key"),
        "iamport_imp_secret": SecretStr("env_secret"),
        "iamport_webhook_token": SecretStr("env_token"),
        "iamport_base_url": "https://api.iamport.kr",
        "iamport_max_rps": 20.0,
        "on_paid": "hold",
        "accounts_file": "",
    }
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("T_MAIN_SECRET", SECRET)
    monkeypatch.setenv("T_MAIN_TOKEN", SECRET + "-token")
    monkeypatch.setenv("T_SHOP2_WHSEC", SECRET + "-whsec")
    path = tmp_path / "shop2_portone"
    path.write_text(SECRET + "-v2\n")
    return path


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    return str(path)


def test_without_the_file_iamport_variables_make_default() -> None:
    accounts = load_accounts(settings())
    assert list(accounts) == [DEFAULT]
    a = accounts[DEFAULT]
    assert (a.api, a.base_url, a.max_rps, a.on_paid, a.tier) == (
        "v1",
        "https://api.iamport.kr",
        20.0,
        "hold",
        None,
    )
    assert a.imp_key is not None and a.imp_key.get_secret_value() == "env_key"
    assert a.secret("imp_secret") == "env_secret"
    assert a.secret("webhook_token") == "env_token"


def test_without_the_file_nothing_is_required() -> None:
    # As before: the API starts without credentials (only the worker needs them).
    a = load_accounts(settings(iamport_imp_key=None, iamport_imp_secret=None))[DEFAULT]
    assert a.imp_key is None and a.secret("imp_secret") is None
    assert a.secrets["imp_secret"].problem == "IAMPORT_IMP_SECRET is not set"


def test_a_file_of_two_accounts(tmp_path: Path, secrets: Path) -> None:
    path = write(tmp_path, GOOD_V1 + GOOD_V2.format(secret_file=secrets))
    accounts = load_accounts(settings(accounts_file=path))
    assert list(accounts) == ["main", "shop2"]  # no `default` unless the file names it
    main, shop2 = accounts["main"], accounts["shop2"]
    assert (main.api, main.tier, main.max_rps, main.base_url, main.on_paid) == (
        "v1",
        "A01",
        7.0,
        "http://127.0.0.1:9",
        "refund",
    )
    assert main.secret("imp_secret") == SECRET  # from the variable
    assert main.secret("webhook_token") == SECRET + "-token"
    assert (shop2.api, shop2.store_id, shop2.max_rps, shop2.on_paid) == (
        "v2",
        "store-0a1b2c",
        20.0,
        "hold",
    )
    assert shop2.secret("api_secret") == SECRET + "-v2"  # from the file, newline stripped
    assert shop2.secret("webhook_secret") == SECRET + "-whsec"
    assert SECRET not in repr(accounts)


def test_defaults_come_from_the_settings(tmp_path: Path, secrets: Path) -> None:
    text = '[accounts.default]\napi = "v1"\nimp_key = "k"\nimp_secret_env = "T_MAIN_SECRET"\n'
    a = load_accounts(settings(accounts_file=write(tmp_path, text), iamport_max_rps=3))
    assert list(a) == [DEFAULT]
    assert (a[DEFAULT].base_url, a[DEFAULT].max_rps, a[DEFAULT].on_paid) == (
        "https://api.iamport.kr",
        3.0,
        "hold",
    )
    assert "webhook_token" not in a[DEFAULT].secrets


V1 = '[accounts.main]\napi = "v1"\nimp_key = "k"\nimp_secret_env = "T_MAIN_SECRET"\n'
V2 = '[accounts.shop2]\napi = "v2"\nstore_id = "s"\napi_secret_env = "T_MAIN_SECRET"\n'

BAD = [
    pytest.param("[accounts.main\n", "not TOML", id="not-toml"),
    pytest.param("", "names no account", id="empty"),
    pytest.param('title = "x"\n' + V1, "unknown key title", id="unknown-top-level"),
    pytest.param(V1 + 'colour = "red"\n', "account main: colour: unknown field", id="unknown"),
    pytest.param(V1.replace("main", "Main"), "account Main: name:", id="upper-case-name"),
    pytest.param(V1.replace("main", "-main"), "account -main: name:", id="leading-dash"),
    pytest.param(V1.replace("main", "m" * 41), "name: must be", id="long-name"),
    pytest.param(V1.replace('"v1"', '"v3"'), "account main: api: must be", id="bad-api"),
    pytest.param(V1.replace('api = "v1"\n', ""), "account main: api: missing", id="no-api"),
    pytest.param(V1 + 'store_id = "s"\n', "main: store_id: a v2 field", id="v2-field-on-v1"),
    pytest.param(V2 + 'tier = "A01"\n', "shop2: tier: a v1 field", id="v1-field-on-v2"),
    pytest.param(V2 + 'imp_key = "k"\n', "shop2: imp_key: a v1 field", id="imp-key-on-v2"),
    pytest.param(V1.replace('imp_key = "k"\n', ""), "main: imp_key: missing", id="no-imp-key"),
    pytest.param(V2.replace('store_id = "s"\n', ""), "shop2: store_id: missing", id="no-store"),
    pytest.param(
        V1.replace('imp_secret_env = "T_MAIN_SECRET"\n', ""),
        "main: imp_secret: missing",
        id="no-secret",
    ),
    pytest.param(
        V1 + f'imp_secret = "{SECRET}"\n',
        "main: imp_secret: a secret is given by reference",
        id="inline",
    ),
    pytest.param(
        V2 + f'webhook_secret = "{SECRET}"\n',
        "shop2: webhook_secret: a secret is given by reference",
        id="inline-v2",
    ),
    pytest.param(
        V1.replace("T_MAIN_SECRET", "T_UNSET_VARIABLE"),
        "main: imp_secret: variable T_UNSET_VARIABLE is not set",
        id="unset-variable",
    ),
    pytest.param(
        V1.replace('imp_secret_env = "T_MAIN_SECRET"', 'imp_secret_file = "/nonexistent/x"'),
        "main: imp_secret: file /nonexistent/x cannot be read",
        id="unreadable-file",
    ),
    pytest.param(
        V1 + 'imp_secret_file = "/nonexistent/x"\n', "main: imp_secret: give", id="env-and-file"
    ),
    pytest.param(
        V1.replace('imp_secret_env = "T_MAIN_SECRET"', 'imp_secret_file = "/dev/null"'),
        "main: imp_secret: file /dev/null is empty",
        id="empty-file",
    ),
    pytest.param(
        V2.replace('api_secret_env = "T_MAIN_SECRET"', 'api_secret_env = "T_UNSET_VARIABLE"'),
        "shop2: api_secret: variable T_UNSET_VARIABLE is not set",
        id="unset-variable-v2",
    ),
    pytest.param(V1 + 'tier = "a1"\n', "account main: tier:", id="bad-tier"),
    pytest.param(V1 + "max_rps = 0\n", "account main: max_rps:", id="zero-rps"),
    pytest.param(V1 + 'max_rps = "20"\n', "account main: max_rps:", id="string-rps"),
    pytest.param(V1 + 'on_paid = "keep"\n', "account main: on_paid:", id="bad-on-paid"),
    pytest.param(V1 + 'base_url = "ftp://x"\n', "account main: base_url:", id="bad-url"),
    pytest.param(V1 + 'imp_key = ""\n', "not TOML", id="duplicate-key"),
    pytest.param('[accounts]\nmain = "v1"\n', "account main: must be a table", id="not-a-table"),
    pytest.param(
        V1
        + 'webhook_token_env = "T_MAIN_SECRET"\n'
        + V1.replace("main", "other")
        + 'webhook_token_env = "T_MAIN_SECRET"\n',
        "account other: webhook_token: the same token as account main's",
        id="shared-token",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_a_bad_file_is_one_line_naming_account_and_field(
    tmp_path: Path, secrets: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(AccountsError) as caught:
        load_accounts(settings(accounts_file=path))
    message = str(caught.value)
    assert expected in message
    assert message.startswith(f"ACCOUNTS_FILE {path}: ")
    assert "\n" not in message
    assert SECRET not in message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AccountsError, match="cannot be read"):
        load_accounts(settings(accounts_file=str(tmp_path / "absent.toml")))


def test_read_accounts_keeps_a_secret_that_does_not_resolve(tmp_path: Path) -> None:
    path = write(tmp_path, V1.replace("T_MAIN_SECRET", "T_UNSET_VARIABLE"))
    account = read_accounts(settings(accounts_file=path))["main"]
    secret = account.secrets["imp_secret"]
    assert not secret.resolves and secret.source == "variable T_UNSET_VARIABLE"


def test_a_v2_webhook_secret_that_is_no_standard_webhooks_secret_is_refused(
    tmp_path: Path, secrets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_SHOP2_WHSEC", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,whsec_!!!")
    path = write(tmp_path, GOOD_V2.format(secret_file=secrets))
    with pytest.raises(AccountsError) as caught:
        load_accounts(settings(accounts_file=path))
    assert "account shop2: webhook_secret: not a Standard Webhooks secret" in str(caught.value)
    assert "MfKQ9r8" not in str(caught.value)


def test_a_v1_accounts_own_timeout_is_its_clients_deadline(tmp_path: Path, secrets: Path) -> None:
    """Its jobs' leases are made from the account's timeout, so its calls must end by it."""
    import redis

    from app.upstream.iamport import IamportClient

    text = GOOD_V1 + "timeout_seconds = 3\n"
    s = settings(accounts_file=write(tmp_path, text), iamport_timeout_seconds=10)
    main = load_accounts(s)["main"]
    client = IamportClient.for_account(main, s, redis.Redis(port=1))  # never reached here
    try:
        assert main.timeout_seconds == 3
        assert client._http.timeout == 3
    finally:
        client.close()
