"""The `stockout` command: API keys, accounts and operators' views; the dev tools add theirs where installed."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.cli.accounts import accounts_cli
from app.cli.jobs import register as register_operations
from app.cli.reconcile import register as register_reconcile
from app.cli.webhooks import webhooks_cli
from app.config import get_settings
from app.kit.db import unit_of_work
from app.operators.keys import Scope, create_key, list_keys, revoke_key
from app.upstream.accounts import AccountsError, accounts_of

cli = typer.Typer(
    help="stockout-cancel: cancel CVS barcodes at iamport for orders we cannot ship.",
    no_args_is_help=True,
)
keys = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(keys, name="keys")
cli.add_typer(webhooks_cli, name="webhooks")
cli.add_typer(accounts_cli, name="accounts")
register_operations(cli)
register_reconcile(cli)
# The dev install adds `dev`, `demo` and `sandbox` (devtools); the runtime install has none.
for _plugin in entry_points(group="stockout.commands"):
    _plugin.load()(cli)
err = Console(stderr=True)


@keys.command("create")
def keys_create(
    name: str,
    scope: Annotated[
        list[Scope],
        typer.Option("--scope", help="events:write, jobs:read, jobs:write or webhooks:write"),
    ],
    account: Annotated[
        list[str] | None,
        typer.Option(
            "--account",
            help="bind the key to this account (repeat for several); none: every account",
        ),
    ] = None,
) -> None:
    """Create a key; the key alone is the last line printed."""
    bound = sorted(set(account or []))
    try:
        configured = accounts_of(get_settings())
    except AccountsError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    unknown = [a for a in bound if a not in configured]
    if unknown:
        err.print(
            f"[red]error:[/] no account {unknown[0]}; the accounts are {', '.join(configured)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    with unit_of_work() as uow:
        new = create_key(uow.conn, name, [s.value for s in scope], bound or None)
    which = f"accounts {', '.join(new.accounts)}" if new.accounts else "every account"
    err.print(
        f"created key {new.id} ({new.name}) with scopes {', '.join(new.scopes)} for {which}; "
        "it is shown only once"
    )
    print(new.key)


@keys.command("list")
def keys_list() -> None:
    """Every key (never the secret)."""
    table = Table("id", "name", "prefix", "scopes", "accounts", "created", "revoked")
    with unit_of_work() as uow:
        for k in list_keys(uow.conn):
            table.add_row(
                str(k["id"]),
                str(k["name"]),
                str(k["prefix"]),
                ", ".join(k["scopes"]),
                ", ".join(k["accounts"]) if k["accounts"] else "all",
                str(k["created_at"]),
                str(k["revoked_at"] or ""),
            )
    Console().print(table)


@keys.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="the key's id or prefix")]) -> None:
    """Revoke a key: it stops working with the next request."""
    with unit_of_work() as uow:
        if not revoke_key(uow.conn, key):
            err.print(f"no active key {key}")
            raise typer.Exit(1)
    err.print(f"revoked {key}")


def main() -> None:
    """Entry point of the `stockout` console script."""
    try:
        cli()
    except RuntimeError as exc:  # configuration problems: a message, not a traceback
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
