"""The dev tools' commands on `stockout`: the local stack, the demo and the iamport sandbox.

Registered through the `stockout.commands` entry point of the dev install, so the product's
command has them only where this package is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def register(cli: typer.Typer) -> None:
    """Add `dev`, `demo` and `sandbox` to the product's command."""
    cli.command()(dev)
    cli.command()(demo)
    cli.command()(sandbox)


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
    from devtools.dev import Ports, StopAsked, run_dev, stop_on_signals

    stop_on_signals()
    ports = Ports(api=port, sandbox=sandbox_port, postgres=postgres_port, redis=redis_port)
    try:
        status = run_dev(host, ports, data_dir, concurrency, real_iamport)
    except StopAsked as asked:  # before everything was up: what had started is stopped
        Console(stderr=True).print(f"stopped before it was up, as asked ({asked.signal_name})")
        status = 0
    raise typer.Exit(status)


def demo(
    env_file: Annotated[Path, typer.Option(help="the settings `stockout dev` wrote")] = Path(
        ".stockout/env"
    ),
) -> None:
    """The whole story against a running `stockout dev`, step by step."""
    from devtools.demo import run_demo

    raise typer.Exit(run_demo(env_file))


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
    merchant: Annotated[
        list[str] | None,
        typer.Option(
            # Not "KEY:SECRET:TIER": rich's help would render ":SECRET:" as an emoji.
            help="another merchant account as KEY:SECRET, with :TIER appended for a "
            "sub-merchant of the agency KEY; repeat for more",
            metavar="KEY:SECRET[:TIER]",
        ),
    ] = None,
    v2_store: Annotated[
        list[str] | None,
        typer.Option(
            "--v2-store",
            help="a PortOne V2 store as STORE_ID:SECRET, served beside the default one "
            "(store-sandbox); repeat for more",
            metavar="STORE_ID:SECRET",
        ),
    ] = None,
    v2_idempotency_ttl: Annotated[
        float, typer.Option(help="seconds a PortOne V2 Idempotency-Key is kept")
    ] = 3 * 3600,
) -> None:
    """Run the iamport (V1) and PortOne V2 simulator."""
    from devtools.sandbox.merchants import parse_merchant
    from devtools.sandbox.server import run
    from devtools.sandbox.v2_state import parse_store

    try:
        merchants = [parse_merchant(m) for m in merchant or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--merchant") from None
    try:
        stores = [parse_store(s) for s in v2_store or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--v2-store") from None

    run(
        host=host,
        port=port,
        imp_key=imp_key,
        imp_secret=imp_secret,
        token_ttl=token_ttl,
        seed=seed,
        confirm_url=confirm_url,
        notice_url=notice_url,
        merchants=merchants,
        v2_stores=stores,
        idempotency_ttl=v2_idempotency_ttl,
    )
