"""Operators' commands: `stockout jobs list|show|retry` and `stockout stats`.

They talk to Postgres directly, through the same functions as the API (app/listing.py), so a
terminal shows exactly what `GET /v1/jobs` would.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.config import get_settings
from app.db import unit_of_work
from app.errors import ProblemError
from app.jobs.status import ALL, JobStatus
from app.listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    JobFilters,
    job_stats,
    list_attempts,
    list_jobs,
    require_job,
)
from app.schemas import JobPublic
from app.steer import retry_job

jobs_cli = typer.Typer(help="Jobs: list, show, retry.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _fail(exc: ProblemError) -> typer.Exit:
    err.print(f"[red]{exc.code}:[/] {exc.detail}")
    return typer.Exit(1)


def _when(value: object) -> str:
    return "" if value is None else str(value)[:19].replace("T", " ")


def _job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a job id") from None


@jobs_cli.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option(help=" | ".join(ALL))] = None,
    imp_uid: Annotated[str | None, typer.Option("--imp-uid")] = None,
    merchant_uid: Annotated[str | None, typer.Option("--merchant-uid")] = None,
    sku: Annotated[str | None, typer.Option()] = None,
    event_id: Annotated[str | None, typer.Option("--event-id")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of a previous page")] = None,
) -> None:
    """Jobs, newest first."""
    if status is not None and status not in ALL:
        raise typer.BadParameter(f"status must be one of {', '.join(ALL)}")
    try:
        with unit_of_work() as uow:
            page = list_jobs(
                uow.conn, JobFilters(status, imp_uid, merchant_uid, sku, event_id), limit, cursor
            )
    except ProblemError as exc:
        raise _fail(exc) from None
    table = Table()
    # Ids are what an operator copies into the next command: never truncated.
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True)
    for name in ("imp_uid", "attempts", "payment", "error", "created", "finished"):
        table.add_column(name)
    for j in page.items:
        table.add_row(
            str(j.id),
            _styled(j.status),
            j.imp_uid,
            str(j.attempts),
            j.payment_status or "",
            (j.error.message or "") if j.error else "",
            _when(j.created_at),
            _when(j.finished_at),
        )
    out.print(table)
    if page.next_cursor:
        err.print(f"more: --cursor {page.next_cursor}")


def _styled(status: str) -> str:
    colors = {
        JobStatus.CANCELLED: "green",
        JobStatus.REFUNDED: "cyan",
        JobStatus.NEEDS_REFUND: "yellow",
        JobStatus.FAILED: "red",
    }
    color = colors.get(JobStatus(status))
    return f"[{color}]{status}[/]" if color else status


def _show(job: JobPublic) -> None:
    facts = Table.grid(padding=(0, 2))
    for name, value in (
        ("id", str(job.id)),
        ("imp_uid", job.imp_uid),
        ("merchant_uid", job.merchant_uid or ""),
        ("status", _styled(job.status)),
        ("attempts", str(job.attempts)),
        ("next attempt", _when(job.next_attempt_at)),
        ("payment status", job.payment_status or ""),
        ("events", ", ".join(job.event_ids)),
        ("created", _when(job.created_at)),
        ("updated", _when(job.updated_at)),
        ("finished", _when(job.finished_at)),
        ("error", job.error.model_dump_json() if job.error else ""),
        ("cancellation", job.cancellation.model_dump_json() if job.cancellation else ""),
    ):
        facts.add_row(f"[bold]{name}[/]", value)
    out.print(facts)


@jobs_cli.command("show")
def jobs_show(job_id: str) -> None:
    """One job and every upstream call made for it."""
    ident = _job_id(job_id)
    try:
        with unit_of_work() as uow:
            job = require_job(uow.conn, ident)
            attempts = list_attempts(uow.conn, ident)
    except ProblemError as exc:
        raise _fail(exc) from None
    _show(job)
    table = Table("n", "call", "started", "ms", "http", "code", "outcome", "message")
    for a in attempts:
        table.add_row(
            str(a.n),
            a.call,
            _when(a.started_at),
            "" if a.duration_ms is None else str(a.duration_ms),
            "" if a.http_status is None else str(a.http_status),
            "" if a.code is None else str(a.code),
            a.outcome or "in flight",
            a.message or "",
        )
    out.print(table)


@jobs_cli.command("retry")
def jobs_retry(job_id: str) -> None:
    """Put a failed job back to queued (only a failed one)."""
    ident = _job_id(job_id)
    try:
        with unit_of_work() as uow:
            job = retry_job(uow, ident, get_settings())
    except ProblemError as exc:
        raise _fail(exc) from None
    from app.dispatch import drain

    # The unit of work handed the job to the publisher thread; give it a moment before exit
    # (if the broker is unreachable, the sweep publishes the job shortly).
    drain(2.0)
    err.print(f"job {job.id} is queued again")
    _show(job)


def stats() -> None:
    """Jobs by status, the oldest waiting job's age, and recent finishes."""
    with unit_of_work() as uow:
        s = job_stats(uow.conn)
    table = Table("status", "jobs", "finished last minute", "finished last hour")
    for status in ALL:
        table.add_row(
            _styled(status),
            str(s.counts.get(status, 0)),
            str(s.finished_last_minute.get(status, "")),
            str(s.finished_last_hour.get(status, "")),
        )
    out.print(table)
    age = s.oldest_waiting_age_seconds
    out.print("oldest waiting job: " + ("none" if age is None else f"{age:.0f} s"))


def register(cli: typer.Typer) -> None:
    """Add the operators' commands to the `stockout` command."""
    cli.add_typer(jobs_cli, name="jobs")
    cli.command("stats")(stats)
