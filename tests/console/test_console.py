"""The operator console in a real headless Chromium against a real API (uvicorn), Postgres and
Redis. Jobs are created through the API and put into their statuses with SQL."""

from __future__ import annotations

import re
from typing import Any

import httpx
import psycopg
import pytest

from app.console.routes import CSP
from app.kit.db import unit_of_work
from app.main import app as the_app
from app.operators.keys import create_key
from tests.console.conftest import Tab
from tests.console.seed import Seeded, seed
from tests.support.factories import api_key

ALL = ("events:write", "jobs:read", "jobs:write")


@pytest.fixture
def writer(service_env: dict[str, str]) -> str:
    with unit_of_work() as uow:
        return create_key(uow.conn, "ops-jiwoo", list(ALL)).key


@pytest.fixture
def data(console_url: str, service_env: dict[str, str], writer: str) -> Seeded:
    return seed(console_url, service_env["DATABASE_URL"], writer)


def count(tab: Tab, selector: str, n: int) -> None:
    """Wait until `selector` matches n elements (the page's CSP forbids evaluated strings)."""
    from playwright.sync_api import expect

    expect(tab.page.locator(selector)).to_have_count(n)


def job_status(db: str, job_id: str) -> str:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def actions(db: str, job_id: str) -> list[tuple[str, str]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT action, key_name FROM operator_actions WHERE job_id = %s ORDER BY id", (job_id,)
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def assert_key_never_in_a_url(tab: Tab, key: str) -> None:
    assert tab.requests, "the page made no requests"
    for request in tab.requests:
        assert key not in request.url, f"the key leaked into {request.url}"
        assert "cookie" not in request.headers
    api_calls = [r for r in tab.requests if "/v1/" in r.url]
    assert api_calls and all(r.headers.get("authorization") == f"Bearer {key}" for r in api_calls)


def test_sign_in_shows_the_overview_with_a_strict_policy(
    tab: Tab, data: Seeded, writer: str
) -> None:
    response = tab.page.goto(f"{tab.base}/console")
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    tab.sign_in(writer)
    cards = tab.page.locator("#status-cards")
    cards.locator("[data-status=cancelled] .card-value").filter(has_text="22").wait_for()
    assert cards.locator("[data-status=needs_refund] .card-value").inner_text() == "4"
    assert cards.locator("[data-status=failed] .card-value").inner_text() == "3"
    tab.page.locator("#finished-chart svg rect").first.wait_for()
    assert tab.page.locator("#finished-chart svg rect").count() >= 5
    tab.page.locator("#upstream-latency td", has_text="cancel").first.wait_for()
    assert tab.page.locator("#badge-needs_refund").inner_text() == "4"
    # The key stays in this tab's sessionStorage, nowhere else.
    assert tab.page.evaluate("Object.values(sessionStorage)") == [writer]
    assert tab.page.evaluate("localStorage.length") == 0
    assert tab.page.context.cookies() == []
    tab.shot("overview")
    assert not [e for e in tab.errors if "Content Security Policy" in e], tab.errors
    assert_key_never_in_a_url(tab, writer)


def test_filter_jobs_open_one_and_read_its_timeline(tab: Tab, data: Seeded, writer: str) -> None:
    tab.sign_in(writer)
    tab.go("#/jobs")
    tab.page.locator("#jobs-table tbody tr[data-id]").first.wait_for()
    assert tab.page.locator("#jobs-table tbody tr[data-id]").count() == 36
    tab.page.select_option("#f-status", "failed")
    tab.page.click("#job-filters button[type=submit]")
    count(tab, "#jobs-table tbody tr[data-id]", 3)
    statuses = tab.page.locator("#jobs-table tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.status)"
    )
    assert statuses == ["failed"] * 3
    assert "status=failed" in tab.page.url
    # A second filter narrows to one job.
    failed = data.first("failed")
    tab.page.fill("#f-imp_uid", failed["imp_uid"])
    tab.page.click("#job-filters button[type=submit]")
    count(tab, "#jobs-table tbody tr[data-id]", 1)
    tab.go("#/jobs?sku=SKU-BLUE-MUG")
    count(tab, "#jobs-table tbody tr[data-id]", 6)
    tab.go("#/jobs?status=failed")
    count(tab, "#jobs-table tbody tr[data-id]", 3)
    tab.shot("jobs")

    tab.page.click(f"#jobs-table a[href='#/jobs/{failed['id']}']")
    timeline = tab.page.locator("#timeline li")
    timeline.nth(6).wait_for()
    titles = timeline.locator("strong").all_inner_texts()
    assert titles[0] == "Job created"
    assert titles[1:6] == [
        "token call #1: ok",
        "cancel call #2: timeout",
        "lookup call #3: ok",
        "cancel call #4: not_found",
        "lookup call #5: not_found",
    ]
    assert titles[-1] == "Finished: failed"
    assert "HTTP 504" in timeline.nth(2).inner_text()
    assert_key_never_in_a_url(tab, writer)


def test_retry_failed_jobs_from_the_queue(
    tab: Tab, data: Seeded, writer: str, service_env: dict[str, str]
) -> None:
    db = service_env["DATABASE_URL"]
    first, second, third = data.by_status["failed"]
    tab.sign_in(writer)
    tab.go("#/queues/failed")
    tab.page.locator("#queue-table tr[data-id]").nth(2).wait_for()
    tab.page.check(f"#queue-table input.pick[data-id='{first['id']}']")
    tab.page.check(f"#queue-table input.pick[data-id='{second['id']}']")
    tab.page.click("#bulk")
    dialog = tab.page.locator("#confirm")
    dialog.wait_for(state="visible")
    assert "Put 2 failed jobs back to queued" in dialog.inner_text()
    # Cancelling the dialog changes nothing.
    tab.page.click("#confirm-cancel")
    assert job_status(db, first["id"]) == "failed"
    tab.page.click("#bulk")
    tab.page.click("#confirm-ok")
    count(tab, "#queue-table tr[data-id]", 1)
    assert job_status(db, first["id"]) == "queued"
    assert job_status(db, second["id"]) == "queued"
    assert job_status(db, third["id"]) == "failed"
    me = httpx.get(f"{tab.base}/v1/me", headers={"Authorization": f"Bearer {writer}"}).json()
    assert actions(db, first["id"]) == [("retry", me["name"])]
    # The job's timeline shows who retried it.
    tab.go(f"#/jobs/{first['id']}")
    tab.page.locator("#timeline li.action-retry").wait_for()
    assert f"retry by {me['name']}" in tab.page.locator("#timeline li.action-retry").inner_text()
    assert me["id"] in tab.page.locator("#timeline li.action-retry").inner_text()
    tab.shot("job-timeline")
    assert_key_never_in_a_url(tab, writer)


def test_the_refund_dialog_says_what_will_happen(
    tab: Tab, data: Seeded, writer: str, service_env: dict[str, str]
) -> None:
    db = service_env["DATABASE_URL"]
    tab.sign_in(writer)
    tab.go("#/queues/needs_refund")
    tab.page.locator("#queue-table tr[data-id]").nth(3).wait_for()
    tab.shot("needs-refund-queue")
    tab.page.check("#select-all")
    tab.page.click("#bulk")
    text = tab.page.locator("#confirm").inner_text()
    assert "Refund 4 payments totalling" in text
    assert "cannot be undone" in text
    assert data.first("needs_refund")["imp_uid"] in text
    tab.shot("refund-dialog")
    tab.page.click("#confirm-cancel")
    assert all(job_status(db, j["id"]) == "needs_refund" for j in data.by_status["needs_refund"])
    # "Keep" sets a job aside in this tab; nothing is sent.
    kept = data.first("needs_refund")
    tab.page.click(f"#queue-table tr[data-id='{kept['id']}'] button[data-action=keep]")
    count(tab, "#queue-table tr[data-id]", 3)
    assert job_status(db, kept["id"]) == "needs_refund"


def _has_route(pattern: str) -> bool:
    return any(re.fullmatch(pattern, getattr(r, "path", "")) for r in the_app.routes)


def _has_refund_route() -> bool:
    return _has_route(r"/v1/jobs/\{\w+\}/refund")


@pytest.mark.skipif(not _has_refund_route(), reason="needs POST /v1/jobs/{id}/refund")
def test_refund_a_held_job(
    tab: Tab, data: Seeded, writer: str, service_env: dict[str, str]
) -> None:
    db = service_env["DATABASE_URL"]
    held = data.first("needs_refund")
    tab.sign_in(writer)
    tab.go(f"#/jobs/{held['id']}")
    tab.page.click("#refund")
    assert "Refund 1 payment" in tab.page.locator("#confirm").inner_text()
    tab.page.click("#confirm-ok")
    tab.page.locator("#toast", has_text="Refund requested for 1 of 1").wait_for()
    tab.page.locator("#timeline li.action-refund").wait_for()
    assert "refund by ops-jiwoo" in tab.page.locator("#timeline li.action-refund").inner_text()
    assert [a for a, _ in actions(db, held["id"])] == ["refund"]


def test_a_read_only_key_sees_no_action_buttons(
    tab: Tab, data: Seeded, service_env: dict[str, str]
) -> None:
    reader = api_key("jobs:read")
    tab.sign_in(reader)
    assert tab.page.locator("#who-mode").inner_text() == "read only"
    tab.go("#/queues/failed")
    tab.page.locator("#queue-table tr[data-id]").nth(2).wait_for()
    assert tab.page.locator("#queue-table button").count() == 0
    assert tab.page.locator("#queue-table input[type=checkbox]").count() == 0
    assert tab.page.locator("#bulk").count() == 0
    assert "jobs:write" in tab.page.locator(".notice").inner_text()
    failed = data.first("failed")
    tab.go(f"#/jobs/{failed['id']}")
    tab.page.locator("#timeline li").first.wait_for()
    assert tab.page.locator("#job-actions button").count() == 0
    tab.go("#/queues/needs_refund")
    tab.page.locator("#queue-table tr[data-id]").nth(3).wait_for()
    assert tab.page.locator("#queue-table button").count() == 0
    # The API refuses the action anyway.
    r = httpx.post(
        f"{tab.base}/v1/jobs/{failed['id']}/retry", headers={"Authorization": f"Bearer {reader}"}
    )
    assert r.status_code == 403
    assert job_status(service_env["DATABASE_URL"], failed["id"]) == "failed"
    assert_key_never_in_a_url(tab, reader)


def test_events_show_progress_and_their_jobs(tab: Tab, data: Seeded, writer: str) -> None:
    tab.sign_in(writer)
    tab.go("#/events")
    rows = tab.page.locator("#events-table tbody tr")
    rows.nth(5).wait_for()
    newest = data.events[-1]["event_id"]
    assert newest in rows.first.inner_text()
    progress = [m.group(0) for t in rows.all_inner_texts() if (m := re.search(r"\d+ of \d+", t))]
    assert len(progress) == 6 and all(p.endswith("of 6") for p in progress)
    tab.shot("events")
    tab.page.click(f"#events-table a[href='#/events/{newest}?account=default']")
    tab.page.locator("#event-jobs tbody tr").nth(5).wait_for()
    assert "of 6 jobs terminal" in tab.page.locator(".title-row").inner_text()


def test_a_wrong_key_is_refused_at_sign_in(tab: Tab, console_url: str) -> None:
    tab.page.goto(f"{console_url}/console")
    tab.page.fill("#key", "sk_nope_nope")
    tab.page.click("#signin button[type=submit]")
    tab.page.locator("#signin-error", has_text="unknown").wait_for()
    assert tab.page.evaluate("sessionStorage.length") == 0


def _has_webhook_routes() -> bool:
    return _has_route(r"/v1/webhook-endpoints")


def grant(db: str, key: str, *scopes: str) -> None:
    """Give a key more scopes directly (this branch's key factory may not know them all)."""
    prefix = key.split("_")[1]
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE api_keys SET scopes = scopes || %s::varchar[] WHERE prefix = %s",
            (list(scopes), prefix),
        )


ENDPOINT = {
    "id": "6d0f5a8e-4a3c-4f7e-9a51-0b8f1c2d3e4f",
    "url": "https://orders.example/hooks/stockout",
    "event_types": ["job.cancelled", "job.needs_refund"],
    "description": "orders service",
    "enabled": True,
    "created_at": "2026-11-25T06:00:00Z",
}


@pytest.mark.skipif(
    _has_webhook_routes(), reason="the server has the webhook API: see the next test"
)
def test_webhook_pages_degrade_and_deliveries_join_the_timeline(
    tab: Tab, data: Seeded, writer: str, service_env: dict[str, str]
) -> None:
    """Without the webhook API the page says so; with contract-shaped answers (served by the
    browser here) the job's deliveries appear in its one timeline."""
    grant(service_env["DATABASE_URL"], writer, "webhooks:write")
    tab.sign_in(writer)
    assert tab.page.locator("#nav-webhooks").is_visible()
    tab.go("#/webhooks")
    tab.page.locator(".notice", has_text="no webhook endpoints API").wait_for()

    job = data.first("cancelled")
    delivery = {
        "message_id": "msg_1",
        "event_type": "job.cancelled",
        "job_id": job["id"],
        "event_id": None,
        "status": "delivered",
        "attempts": 2,
        "last_http_status": 200,
        "last_error": None,
        "next_attempt_at": None,
        "created_at": "2026-11-25T06:00:05Z",
        "delivered_at": "2026-11-25T06:00:09Z",
    }
    other = {**delivery, "message_id": "msg_2", "job_id": data.first("failed")["id"]}
    answers = {
        "/v1/webhook-endpoints": {"items": [ENDPOINT]},
        f"/v1/webhook-endpoints/{ENDPOINT['id']}/deliveries": {
            "items": [other, delivery],
            "next_cursor": None,
        },
    }

    def fulfil(route: Any) -> None:
        path = route.request.url.split(tab.base, 1)[1].split("?", 1)[0]
        if path in answers:
            route.fulfill(status=200, json=answers[path])
        else:
            route.continue_()

    tab.page.route(re.compile(r".*/v1/webhook-endpoints.*"), fulfil)
    tab.go(f"#/jobs/{job['id']}")
    hook = tab.page.locator("#timeline li.webhook")
    hook.wait_for()
    assert hook.count() == 1
    text = hook.inner_text()
    assert "job.cancelled" in text and ENDPOINT["url"] in text and "delivered" in text
    assert "2 attempts" in text


@pytest.mark.skipif(not _has_webhook_routes(), reason="needs the webhook endpoints API")
def test_webhook_endpoints_deliveries_and_replay(
    tab: Tab, data: Seeded, writer: str, service_env: dict[str, str]
) -> None:
    db = service_env["DATABASE_URL"]
    grant(db, writer, "webhooks:write")
    r = httpx.post(
        f"{tab.base}/v1/webhook-endpoints",
        json={"url": "http://127.0.0.1:9/hooks/stockout", "description": "orders service"},
        headers={"Authorization": f"Bearer {writer}"},
    )
    assert r.status_code == 201, r.text
    endpoint = r.json()
    tab.sign_in(writer)
    tab.go("#/webhooks")
    tab.page.click(f"a[href='#/webhooks/{endpoint['id']}']")
    tab.page.locator("#deliveries table").wait_for()
    tab.page.fill("#replay-since", "2026-01-01T00:00")
    tab.page.click("form button[type=submit]:has-text('Replay')")
    assert endpoint["url"] in tab.page.locator("#confirm").inner_text()
    tab.page.click("#confirm-ok")
    tab.page.locator("#toast", has_text="Replaying").wait_for()
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT action FROM operator_actions WHERE endpoint_id = %s", (endpoint["id"],)
        ).fetchall()
    assert [r[0] for r in rows] == ["replay"]


def test_a_cross_site_form_cannot_retry_even_from_a_signed_in_browser(
    tab: Tab, data: Seeded, writer: str, service_env: dict[str, str]
) -> None:
    """The key is in the console tab's sessionStorage; a form from another page carries none."""
    failed = data.first("failed")
    tab.sign_in(writer)
    other = tab.page.context.new_page()
    other.set_content(
        f'<form method="post" action="{tab.base}/v1/jobs/{failed["id"]}/retry">'
        '<input name="confirm" value="yes"><button id="go">go</button></form>'
    )
    with other.expect_response(lambda r: r.url.endswith("/retry")) as answer:
        other.click("#go")
    assert answer.value.status == 401
    assert job_status(service_env["DATABASE_URL"], failed["id"]) == "failed"
    assert actions(service_env["DATABASE_URL"], failed["id"]) == []


def test_clear_a_drift_with_a_note_from_the_drift_queue(
    tab: Tab, data: Seeded, writer: str, service_env: dict[str, str]
) -> None:
    db = service_env["DATABASE_URL"]
    job = data.by_status["cancelled"][0]
    drift = (
        '{"kind": "cancelled_but_paid", "seen_status": "paid", "seen_at": "2026-12-07T01:00:00Z"}'
    )
    with psycopg.connect(db) as conn:
        conn.execute("UPDATE jobs SET drift = %s::jsonb WHERE id = %s", (drift, job["id"]))
    tab.sign_in(writer)
    tab.go("#/queues/drift")
    row = tab.page.locator(f"#drift-table tr[data-id='{job['id']}']")
    row.wait_for()
    assert "cancelled here, paid at the gateway" in row.inner_text()
    # No note, no clearing.
    row.locator("button[data-action='clear-drift']").click()
    assert actions(db, job["id"]) == []
    row.locator("input.note").fill("paid at the till after the cancel; refunded by phone")
    row.locator("button[data-action='clear-drift']").click()
    count(tab, "#drift-table tr[data-id]", 0)
    me = httpx.get(f"{tab.base}/v1/me", headers={"Authorization": f"Bearer {writer}"}).json()
    assert actions(db, job["id"]) == [("clear_drift", me["name"])]
    tab.go(f"#/jobs/{job['id']}")
    tab.page.locator("#job-drift").wait_for()
    assert "refunded by phone" in tab.page.locator("#job-drift").inner_text()
    tab.page.locator("#timeline li.action-clear_drift").wait_for()
    assert_key_never_in_a_url(tab, writer)
