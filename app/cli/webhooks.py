"""`stockout webhooks add|list|rotate|rm|deliveries|replay`, over the REST API."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from app.cli.client import ApiError, api_request

webhooks_cli = typer.Typer(help="Webhook endpoints (through the API).", no_args_is_help=True)
out = Console()
err = Console(stderr=True)
BASE = "/v1/webhook-endpoints"
JsonFlag = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]


def _call(method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    try:
        return api_request(method, path, json=body, params=params)
    except ApiError as exc:
        # Plain, unwrapped: one line, whatever the terminal's width.
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(1) from None


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _types(value: Any) -> str:
    return "all" if value is None else ", ".join(value)


@webhooks_cli.command("add")
def add(
    url: str,
    event_type: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            help="job.cancelled, job.needs_refund, job.refunded, job.failed, job.drift, event.completed (repeat; default all)",
        ),
    ] = None,
    description: Annotated[str | None, typer.Option()] = None,
    as_json: JsonFlag = False,
) -> None:
    """Register an endpoint; its secret is printed once, as the last line."""
    body: dict[str, Any] = {"url": url, "event_types": event_type or None}
    if description is not None:
        body["description"] = description
    endpoint = _call("POST", BASE, body)
    if as_json:
        _json(endpoint)
        return
    err.print(
        f"endpoint {endpoint['id']} for {_types(endpoint['event_types'])}; the secret is shown only once"
    )
    print(endpoint["secret"])


@webhooks_cli.command("list")
def list_(as_json: JsonFlag = False) -> None:
    """Every endpoint (never a secret)."""
    data = _call("GET", BASE)
    if as_json:
        _json(data)
        return
    table = Table("url", "types", "description", "created")
    table.add_column("id", no_wrap=True, min_width=36)
    for e in data["items"]:
        table.add_row(
            e["url"],
            _types(e["event_types"]),
            e["description"] or "",
            e["created_at"][:19],
            e["id"],
        )
    out.print(table)


@webhooks_cli.command("rotate")
def rotate(endpoint_id: str, as_json: JsonFlag = False) -> None:
    """A new secret (printed once, last line); the old one also signs for 24 hours."""
    endpoint = _call("POST", f"{BASE}/{endpoint_id}/rotate-secret")
    if as_json:
        _json(endpoint)
        return
    err.print(f"new secret for {endpoint['id']}; the old one also signs for 24 hours")
    print(endpoint["secret"])


@webhooks_cli.command("rm")
def rm(endpoint_id: str, as_json: JsonFlag = False) -> None:
    """Delete an endpoint: nothing more is sent to it."""
    _call("DELETE", f"{BASE}/{endpoint_id}")
    if as_json:
        _json({"deleted": endpoint_id})
        return
    err.print(f"deleted {endpoint_id}")


@webhooks_cli.command("deliveries")
def deliveries(
    endpoint_id: str,
    status: Annotated[str | None, typer.Option(help="pending | delivered | failed")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    cursor: Annotated[str | None, typer.Option()] = None,
    as_json: JsonFlag = False,
) -> None:
    """The endpoint's messages, newest first."""
    page = _call(
        "GET",
        f"{BASE}/{endpoint_id}/deliveries",
        params={"status": status, "limit": limit, "cursor": cursor},
    )
    if as_json:
        _json(page)
        return
    table = Table("type", "status", "attempts", "last http", "last error", "created")
    table.add_column("message", no_wrap=True, min_width=36)
    for d in page["items"]:
        table.add_row(
            d["event_type"],
            d["status"],
            str(d["attempts"]),
            str(d["last_http_status"] or ""),
            d["last_error"] or "",
            d["created_at"][:19],
            d["message_id"],
        )
    out.print(table)
    if page["next_cursor"]:
        err.print(f"more: --cursor {page['next_cursor']}")


@webhooks_cli.command("replay")
def replay(
    endpoint_id: str,
    since: Annotated[str, typer.Option(help="RFC 3339 time, e.g. 2026-11-25T00:00:00Z")],
    as_json: JsonFlag = False,
) -> None:
    """Send every message created since then again (same webhook-id)."""
    answer = _call("POST", f"{BASE}/{endpoint_id}/replay", {"since": since})
    if as_json:
        _json(answer)
        return
    err.print(f"{answer['messages']} message(s) queued again")
