"""`stockout reconcile`: a reconciliation round on demand, as beat runs it, on this machine's
database and gateway credentials. Progress on a terminal; a closing table (or JSON)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app import logs
from app.config import get_settings
from app.jobs.reconcile import Summary, UnknownAccountName, reconcile_all
from app.kit import dispatch
from app.kit.redis_conn import get_redis
from app.upstream.accounts import AccountsError
from app.webhooks import outbox

AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _fail(message: str, code: int = 1) -> typer.Exit:
    # Plain and unwrapped: one line, whatever the terminal's width.
    sys.stderr.write(f"error: {message}\n")
    return typer.Exit(code)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 time (`2026-12-05T00:00:00Z`, a date alone is midnight UTC) or an age
    (`90m`, `36h`, `3d`) back from now; ValueError otherwise."""
    match = AGE.fullmatch(text)
    if match:
        ago = timedelta(**{UNITS[match.group(2)]: float(match.group(1))})
        return (now or datetime.now(UTC)) - ago
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give an RFC 3339 time (2026-12-05T00:00:00Z) or an age (36h, 3d)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


Advance = Callable[[int], None]


@contextmanager
def _progress(show: bool) -> Iterator[Callable[[str, int], Advance] | None]:
    """A bar per account on a terminal (stderr); nothing otherwise."""
    if not show:
        yield None
        return
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )

    def start(account: str, total: int) -> Advance:
        task = bars.add_task(account, total=total)
        return lambda n: bars.advance(task, n)

    with bars:
        yield start


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "0"


def summary_table(summaries: list[Summary], dry_run: bool) -> Table:
    title = "reconciliation (dry run: nothing changed)" if dry_run else "reconciliation"
    table = Table(
        "account", "looked up", "unchanged", "moved", "drift", "errors", "lookups", title=title
    )
    for s in summaries:
        if s.skipped:
            table.add_row(s.account, f"[dim]skipped: {s.skipped}[/]", "", "", "", "", "")
            continue
        table.add_row(
            s.account,
            str(s.looked_up),
            str(s.unchanged),
            _counts(dict(s.moved)),
            _counts(dict(s.drift)),
            f"[red]{s.errors}[/]" if s.errors else "0",
            str(s.calls),
        )
    return table


def reconcile(
    account: Annotated[
        str | None, typer.Option("--account", help="only this account (default: every one)")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="finished jobs since this RFC 3339 time or age (36h, 3d); "
            "default RECONCILE_WINDOW_HOURS",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="look up and count, change nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the summary as JSON on stdout")] = False,
) -> None:
    """Look the payments of open and recently finished jobs up, as beat's reconcile does:
    settle what they prove, record drift, never send a cancel or refund."""
    try:
        start = parse_since(since) if since is not None else None
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    settings = get_settings()
    # The table says what happened; the log (stderr, never stdout) only what went wrong.
    logs.configure("WARNING", settings.log_json)
    try:
        settings.require_urls()
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    show = not as_json and sys.stderr.isatty()
    try:
        with get_redis() as client, _progress(show) as progress:
            summaries = reconcile_all(
                settings,
                client,
                on_terminal=outbox.record_terminal,
                on_drift=outbox.record_drift,
                account=account,
                since=start,
                dry_run=dry_run,
                progress=progress,
            )
    except (UnknownAccountName, AccountsError) as exc:
        raise _fail(str(exc)) from None
    dispatch.drain()  # the jobs handed back to their runs are announced before we exit
    if as_json:
        body = {"dry_run": dry_run, "accounts": [s.as_dict() for s in summaries]}
        print(json.dumps(body, indent=2))
    else:
        Console().print(summary_table(summaries, dry_run))
        for s in summaries:
            for message in dict.fromkeys(s.messages):
                sys.stderr.write(f"{s.account}: {message}\n")
    if any(s.errors for s in summaries):
        raise typer.Exit(1)


def register(cli: typer.Typer) -> None:
    """Add `stockout reconcile` to the `stockout` command."""
    cli.command("reconcile")(reconcile)
