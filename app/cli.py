"""The `stockout` command: API keys, the embedded stack, the sandbox, and operators' views."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.auth import Scope, create_key, list_keys, revoke_key
from app.cli_ops import register as register_operations
from app.cli_webhooks import webhooks_cli
from app.db import unit_of_work

cli = typer.Typer(
    help="stockout-cancel: cancel CVS barcodes at iamport for orders we cannot ship.",
    no_args_is_help=True,
)
keys = typer.Typer(help="API keys.", no_args_is_help=True)
cli.add_typer(keys, name="keys")
cli.add_typer(webhooks_cli, name="webhooks")
register_operations(cli)
err = Console(stderr=True)


@keys.command("create")
def keys_create(
    name: str,
    scope: Annotated[
        list[Scope],
        typer.Option("--scope", help="events:write, jobs:read, jobs:write or webhooks:write"),
    ],
) -> None:
    """Create a key; the key alone is the last line printed."""
    with unit_of_work() as uow:
        new = create_key(uow.conn, name, [s.value for s in scope])
    err.print(
        f"created key {new.id} ({new.name}) with scopes {', '.join(new.scopes)}; it is shown only once"
    )
    print(new.key)


@keys.command("list")
def keys_list() -> None:
    """Every key (never the secret)."""
    table = Table("id", "name", "prefix", "scopes", "created", "revoked")
    with unit_of_work() as uow:
        for k in list_keys(uow.conn):
            table.add_row(
                str(k["id"]),
                str(k["name"]),
                str(k["prefix"]),
                ", ".join(k["scopes"]),
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


@cli.command()
def dev(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the API's port")] = 8000,
    sandbox_port: Annotated[int, typer.Option(help="the iamport sandbox's port")] = 8001,
    postgres_port: Annotated[int, typer.Option(help="embedded Postgres")] = 54329,
    redis_port: Annotated[int, typer.Option(help="embedded Redis")] = 63799,
    data_dir: Annotated[Path, typer.Option(help="where Postgres and Redis keep their data")] = Path(
        ".stockout"
    ),
    concurrency: int = 32,
    real_iamport: Annotated[
        bool,
        typer.Option(
            "--real-iamport",
            help="call the real iamport with IAMPORT_IMP_KEY/SECRET instead of the sandbox",
        ),
    ] = False,
) -> None:
    """Run the whole stack: Postgres, Redis, migrations, API, worker, beat and the sandbox."""
    from app.dev import Ports, run_dev

    # Ctrl-C and SIGTERM both end in an orderly shutdown.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    ports = Ports(api=port, sandbox=sandbox_port, postgres=postgres_port, redis=redis_port)
    raise typer.Exit(run_dev(host, ports, data_dir, concurrency, real_iamport))


@cli.command()
def demo(
    env_file: Annotated[Path, typer.Option(help="the settings `stockout dev` wrote")] = Path(
        ".stockout/env"
    ),
) -> None:
    """The whole story against a running `stockout dev`, step by step."""
    from app.demo import run_demo

    raise typer.Exit(run_demo(env_file))


@cli.command()
def sandbox(
    port: int = 8090,
    host: str = "127.0.0.1",
    imp_key: str = "sandbox_key",
    imp_secret: str = "sandbox_secret",  # noqa: S107 (the simulator's own credential)
    token_ttl: int = 1800,
    seed: int = 0,
    confirm_url: Annotated[
        str | None, typer.Option(help="confirm_url of payments created without one")
    ] = None,
    notice_url: Annotated[
        str | None, typer.Option(help="notice_url of payments created without one")
    ] = None,
) -> None:
    """Run the iamport simulator."""
    from app.sandbox.server import run

    run(
        host=host,
        port=port,
        imp_key=imp_key,
        imp_secret=imp_secret,
        token_ttl=token_ttl,
        seed=seed,
        confirm_url=confirm_url,
        notice_url=notice_url,
    )


def main() -> None:
    """Entry point of the `stockout` console script."""
    try:
        cli()
    except RuntimeError as exc:  # configuration problems: a message, not a traceback
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
