"""`stockout accounts list|check`: the merchant accounts as configured, and whether each one's
gateway takes its credentials. Neither ever prints a secret."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.config import get_settings
from app.upstream.accounts import Account, AccountsError, load_accounts, read_accounts
from app.upstream.errors import GatewayError, NotFound
from app.upstream.iamport.client import IamportClient
from app.upstream.portone.client import PortOneClient

accounts_cli = typer.Typer(help="Merchant accounts (ACCOUNTS_FILE).", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    # Plain, unwrapped: one line, whatever the terminal's width.
    sys.stderr.write(f"error: {message}\n")
    return typer.Exit(1)


def _read() -> dict[str, Account]:
    try:
        return read_accounts(get_settings())
    except AccountsError as exc:
        raise _fail(str(exc)) from None


def _secrets(account: Account) -> str:
    lines = []
    for name, secret in account.secrets.items():
        state = f"ok, {secret.source}" if secret.resolves else f"MISSING, {secret.problem}"
        lines.append(f"{name}: {state}")
    return "\n".join(lines)


@accounts_cli.command("list")
def accounts_list() -> None:
    """Every account: name, api, tier or store, max_rps, and whether each secret resolves."""
    accounts = _read()
    table = Table("name", "api", "tier / store_id", "max_rps", "secrets")
    for account in accounts.values():
        where = account.tier if account.api == "v1" else account.store_id
        table.add_row(
            account.name, account.api, where or "", f"{account.max_rps:g}", _secrets(account)
        )
    Console().print(table)
    try:
        load_accounts(get_settings())
    except AccountsError as exc:
        # What the API, the worker and beat would refuse to start with.
        raise _fail(str(exc)) from None


@accounts_cli.command("check")
def accounts_check(
    name: Annotated[str | None, typer.Argument(help="one account; default: all")] = None,
) -> None:
    """Authenticate each account against its gateway: `ok` or the error (exit 1 if any fails)."""
    accounts = _read()
    if name is not None:
        if name not in accounts:
            raise _fail(f"no account {name}; the accounts are {', '.join(accounts)}")
        accounts = {name: accounts[name]}
    timeout = get_settings().iamport_timeout_seconds
    failed = False
    for account in accounts.values():
        problem = _check(account, timeout)
        failed = failed or problem is not None
        print(f"{account.name}: {problem or 'ok'}")
    if failed:
        raise typer.Exit(1)


# A paymentId no shop uses: PortOne answers PAYMENT_NOT_FOUND to a secret it takes, 401 else.
CHECK_PAYMENT_ID = "stockout-accounts-check"


def _check(account: Account, timeout: float) -> str | None:
    """None when the gateway takes the account's credentials; else what went wrong."""
    if account.api == "v2":
        return _check_v2(account)
    if account.imp_key is None:
        return "imp_key: not set"
    secret = account.secrets.get("imp_secret")
    if secret is None or secret.value is None:
        return f"imp_secret: {secret.problem if secret else 'not set'}"
    client = IamportClient(
        base_url=account.base_url,
        imp_key=account.imp_key.get_secret_value(),
        imp_secret=secret.value.get_secret_value(),
        timeout=timeout,
        tier=account.tier,
    )
    try:
        client.fetch_token()
    except GatewayError as exc:
        return str(exc)
    finally:
        client.close()
    return None


def _check_v2(account: Account) -> str | None:
    """PortOne V2 has no token exchange: a lookup of a payment no shop has proves the secret
    and the store (not found), or says why not."""
    secret = account.secrets.get("api_secret")
    if secret is None or secret.value is None:
        return f"api_secret: {secret.problem if secret else 'not set'}"
    client = PortOneClient.for_account(account)
    try:
        client.look_up(CHECK_PAYMENT_ID)
    except NotFound:
        return None
    except GatewayError as exc:
        return str(exc)
    finally:
        client.close()
    return None
