"""Operators' commands: `stockout jobs list|show|retry|refund` and `stockout stats`.

They go through the REST API (app/cli/client.py), never the database: an operator needs only the
API's URL and a key, and sees exactly what `GET /v1/jobs` shows.
"""

from __future__ import annotations

import json as jsonlib
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.cli.client import ApiError, api_request
from app.jobs.status import JobStatus

STATUSES = tuple(s.value for s in JobStatus)
PAGE = 500
MAX_PAGES = 20  # an id prefix is looked for among the newest 10,000 jobs

jobs_cli = typer.Typer(help="Jobs: list, show, retry, refund.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]


def _print_json(value: Any) -> None:
    print(jsonlib.dumps(value, indent=2, ensure_ascii=False))


def _when(value: object) -> str:
    return "" if value is None else str(value)[:19].replace("T", " ")


def _styled(status: str) -> str:
    color = (
        {
            JobStatus.CANCELLED: "green",
            JobStatus.REFUNDED: "green",
            JobStatus.NEEDS_REFUND: "yellow",
            JobStatus.FAILED: "red",
        }.get(JobStatus(status))
        if status in STATUSES
        else None
    )
    return f"[{color}]{status}[/]" if color else status


def parse_age(text: str) -> timedelta:
    """`90s`, `30m`, `2h`, `1d` as a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r}: use a number and s, m, h or d, e.g. 2h")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: float(match.group(1))})


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    """Jobs as rows; ids and imp_uids are what an operator copies, so they are never cut."""
    table = Table()
    for name, values in (
        ("id", [j["id"] for j in jobs]),
        ("payment_id", [payment_id_of(j) for j in jobs]),
    ):
        widest = max((len(str(v)) for v in values), default=len(name))
        table.add_column(name, no_wrap=True, min_width=widest)
    table.add_column("account", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=12)
    table.add_column("attempts", justify="right")
    table.add_column("payment")
    table.add_column("created", no_wrap=True)
    table.add_column("error", overflow="fold")
    for j in jobs:
        error = j.get("error") or {}
        table.add_row(
            j["id"],
            payment_id_of(j),
            j.get("account") or "",
            _styled(j["status"]),
            str(j["attempts"]),
            j.get("payment_status") or "",
            _when(j["created_at"]),
            error.get("message") or "",
        )
    return table


def _list_page(params: dict[str, Any]) -> dict[str, Any]:
    page: dict[str, Any] = api_request("GET", "/v1/jobs", params=params)
    return page


def _all_jobs(params: dict[str, Any], max_pages: int = MAX_PAGES) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor = None
    for _ in range(max_pages):
        page = _list_page({**params, "limit": PAGE, "cursor": cursor})
        jobs += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return jobs


def payment_id_of(job: dict[str, Any]) -> str:
    """The job's payment id (an API older than V2 accounts shows only imp_uid)."""
    return str(job.get("payment_id") or job.get("imp_uid") or "")


def resolve_job(ref: str) -> dict[str, Any]:
    """A job by full id, by payment id (an imp_uid or a V2 paymentId), or by a unique id
    prefix."""
    try:
        job: dict[str, Any] = api_request("GET", f"/v1/jobs/{uuid.UUID(ref)}")
        return job
    except ValueError:
        pass
    by_uid = _list_page({"payment_id": ref, "limit": 1})["items"]
    if by_uid:
        found: dict[str, Any] = by_uid[0]
        return found
    if not re.fullmatch(r"[0-9a-fA-F-]{1,36}", ref):
        raise ApiError(f"no job with payment id {ref}")
    matches = [j for j in _all_jobs({}) if j["id"].startswith(ref.lower())]
    if not matches:
        raise ApiError(f"no job whose id starts with {ref} (nor with that payment id)")
    if len(matches) > 1:
        ids = ", ".join(j["id"] for j in matches[:5])
        raise ApiError(f"{ref} matches {len(matches)} jobs ({ids}...): give more of the id")
    return matches[0]


@jobs_cli.command("list")
def jobs_list(
    account: Annotated[str | None, typer.Option(help="one account's jobs")] = None,
    status: Annotated[str | None, typer.Option(help=" | ".join(STATUSES))] = None,
    imp_uid: Annotated[str | None, typer.Option("--imp-uid")] = None,
    merchant_uid: Annotated[str | None, typer.Option("--merchant-uid")] = None,
    sku: Annotated[str | None, typer.Option()] = None,
    event_id: Annotated[str | None, typer.Option("--event-id", "--event")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of a previous page")] = None,
    json: JsonFlag = False,
) -> None:
    """Jobs, newest first."""
    params = {
        "account": account,
        "status": status,
        "imp_uid": imp_uid,
        "merchant_uid": merchant_uid,
        "sku": sku,
        "event_id": event_id,
        "limit": limit,
        "cursor": cursor,
    }
    page = _list_page(params)
    if json:
        _print_json(page)
        return
    out.print(jobs_table(page["items"]))
    if page.get("next_cursor"):
        err.print(f"more: --cursor {page['next_cursor']}", soft_wrap=True, highlight=False)


def _show(job: dict[str, Any]) -> None:
    facts = Table.grid(padding=(0, 2))
    for name, value in (
        ("id", job["id"]),
        ("payment_id", payment_id_of(job)),
        ("merchant_uid", job.get("merchant_uid") or ""),
        ("status", _styled(job["status"])),
        ("attempts", str(job["attempts"])),
        ("next attempt", _when(job.get("next_attempt_at"))),
        ("payment status", job.get("payment_status") or ""),
        ("events", ", ".join(job.get("event_ids", []))),
        ("created", _when(job.get("created_at"))),
        ("updated", _when(job.get("updated_at"))),
        ("finished", _when(job.get("finished_at"))),
        ("error", jsonlib.dumps(job["error"]) if job.get("error") else ""),
        ("cancellation", jsonlib.dumps(job["cancellation"]) if job.get("cancellation") else ""),
        ("refund", jsonlib.dumps(job["refund"]) if job.get("refund") else ""),
    ):
        facts.add_row(f"[bold]{name}[/]", value)
    out.print(facts)


@jobs_cli.command("show")
def jobs_show(
    ref: Annotated[str, typer.Argument(help="job id, a unique prefix of it, or an imp_uid")],
    json: JsonFlag = False,
) -> None:
    """One job and every upstream call made for it."""
    job = resolve_job(ref)
    attempts = api_request("GET", f"/v1/jobs/{job['id']}/attempts")["items"]
    if json:
        _print_json({"job": job, "attempts": attempts})
        return
    _show(job)
    table = Table("n", "call", "started", "ms", "http", "code", "outcome", "message")
    for a in attempts:
        table.add_row(
            str(a["n"]),
            a["call"],
            _when(a["started_at"]),
            "" if a.get("duration_ms") is None else str(a["duration_ms"]),
            "" if a.get("http_status") is None else str(a["http_status"]),
            "" if a.get("code") is None else str(a["code"]),
            a.get("outcome") or "in flight",
            a.get("message") or "",
        )
    out.print(table)


@jobs_cli.command("retry")
def jobs_retry(
    ref: Annotated[str, typer.Argument(help="job id, a unique prefix of it, or an imp_uid")],
    json: JsonFlag = False,
) -> None:
    """Put a failed job back to queued (only a failed one)."""
    job = api_request("POST", f"/v1/jobs/{resolve_job(ref)['id']}/retry")
    if json:
        _print_json(job)
        return
    err.print(f"job {job['id']} is queued again")
    _show(job)


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise ApiError("refusing to refund without a terminal to ask: pass --yes")
    if not typer.confirm(question, default=False):
        raise typer.Exit(1)


def _refund(job_id: str) -> dict[str, Any]:
    try:
        job: dict[str, Any] = api_request("POST", f"/v1/jobs/{job_id}/refund")
    except ApiError as exc:
        # The job was just found, so a 404 here means the API has no such endpoint.
        if exc.status in (404, 405):
            raise ApiError("this API has no refund endpoint (POST /v1/jobs/{id}/refund)") from None
        raise
    return job


@jobs_cli.command("refund")
def jobs_refund(
    ref: Annotated[
        str | None, typer.Argument(help="job id, a unique prefix of it, or an imp_uid")
    ] = None,
    event: Annotated[
        str | None, typer.Option("--event", help="every needs_refund job of this event")
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="every needs_refund job created before this, e.g. 2h"),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    json: JsonFlag = False,
) -> None:
    """Refund a needs_refund job's payment at iamport (asks first unless --yes)."""
    if (ref is None) == (event is None and older_than is None):
        raise typer.BadParameter("give a job, or --event and/or --older-than (not both)")
    if ref is not None:
        job = resolve_job(ref)
        if not json:
            out.print(jobs_table([job]))
        _confirm(f"refund {payment_id_of(job)} (job {job['id']})?", yes)
        refunded = _refund(job["id"])
        if json:
            _print_json(refunded)
        else:
            err.print(
                f"refund of {payment_id_of(refunded)} is under way: status {refunded['status']}"
            )
        return
    jobs = _all_jobs({"status": JobStatus.NEEDS_REFUND.value, "event_id": event})
    if older_than is not None:
        cutoff = datetime.now(UTC) - parse_age(older_than)
        jobs = [j for j in jobs if datetime.fromisoformat(j["created_at"]) < cutoff]
    if not jobs:
        err.print("no needs_refund job matches; nothing to do")
        return
    if not json:
        out.print(jobs_table(jobs))
    _confirm(f"refund these {len(jobs)} payments?", yes)
    results = []
    for j in jobs:
        try:
            results.append(_refund(j["id"]))
        except ApiError as exc:
            err.print(f"{j['id']} {payment_id_of(j)}: {exc}", highlight=False)
            if exc.status is None or exc.code is None:
                raise  # not this job's problem: the API is unreachable or lacks the endpoint
    if json:
        _print_json({"items": results})
    else:
        err.print(f"{len(results)} of {len(jobs)} refunds under way")
    if len(results) < len(jobs):
        raise typer.Exit(1)


def stats(
    account: Annotated[str | None, typer.Option(help="one account's figures")] = None,
    json: JsonFlag = False,
) -> None:
    """Jobs by status, the oldest waiting job's age, and recent finishes."""
    s = api_request("GET", "/v1/stats", params={"account": account} if account else None)
    if json:
        _print_json(s)
        return
    table = Table("status", "jobs", "finished last minute", "finished last hour")
    for status in [*STATUSES, *sorted(set(s["counts"]) - set(STATUSES))]:
        table.add_row(
            _styled(status),
            str(s["counts"].get(status, 0)),
            str(s["finished_last_minute"].get(status, "")),
            str(s["finished_last_hour"].get(status, "")),
        )
    out.print(table)
    age = s.get("oldest_waiting_age_seconds")
    out.print("oldest waiting job: " + ("none" if age is None else f"{age:.0f} s"))


def register(cli: typer.Typer) -> None:
    """Add the operators' commands to the `stockout` command."""
    cli.add_typer(jobs_cli, name="jobs")
    cli.command("stats")(stats)
