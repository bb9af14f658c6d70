"""The two URLs iamport calls: confirm_url and notifications, against a real sandbox."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from devtools.embedded import free_port
from devtools.sandbox.control import SandboxControl
from tests.support.factories import auth, event
from tests.support.runs import run_now
from tests.support.settings import reset_caches

TOKEN = "hook-secret-token"  # what service_env sets IAMPORT_WEBHOOK_TOKEN to
CONFIRM = f"/v1/iamport/cvs-confirm?token={TOKEN}"
NOTIFY = f"/v1/iamport/notifications?token={TOKEN}"


@pytest.fixture
def iamport(
    sandbox: SandboxControl, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> SandboxControl:
    """The sandbox, as the iamport that the API's notification lookups talk to."""
    monkeypatch.setenv("IAMPORT_BASE_URL", sandbox.base_url)
    reset_caches()
    return sandbox


def job_for(api: TestClient, key: str, imp_uid: str) -> dict[str, Any]:
    body = event(1)
    body["payments"] = [{"imp_uid": imp_uid, "merchant_uid": f"order-{imp_uid}"}]
    r = api.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    return r.json()["jobs"][0]  # type: ignore[no-any-return]


def confirm_body(imp_uid: str) -> dict[str, Any]:
    return {
        "event": "Galaxia.Cvs.Confirm",
        "imp_uid": imp_uid,
        "merchant_uid": "order-1",
        "status": "ready",
        "extra": {"barcode": "1234", "payType": "cash"},
    }


def db_row(db: str, job_id: str) -> dict[str, Any]:
    with psycopg.connect(db) as conn:
        cur = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,))
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
        assert row is not None
        return dict(zip(names, row, strict=True))


def set_job(db: str, job_id: str, **values: Any) -> None:
    sets = ", ".join(f"{k} = %({k})s" for k in values)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"UPDATE jobs SET {sets} WHERE id = %(id)s", {"id": job_id, **values})


# -- confirm_url ------------------------------------------------------------------------------


def test_confirm_blocks_a_payment_with_a_job_whatever_its_status(
    api: TestClient, key: str, service_env: dict[str, str]
) -> None:
    job = job_for(api, key, "imps_confirm_1")
    r = api.post(CONFIRM, json=confirm_body("imps_confirm_1"))
    assert r.status_code == 409
    assert r.json()["code"] == "payment_blocked"
    for status in ("cancelled", "failed", "needs_refund", "running"):
        set_job(service_env["DATABASE_URL"], job["id"], status=status)
        assert api.post(CONFIRM, json=confirm_body("imps_confirm_1")).status_code == 409


def test_confirm_allows_a_payment_without_a_job(api: TestClient, key: str) -> None:
    job_for(api, key, "imps_other")
    r = api.post(CONFIRM, json=confirm_body("imps_no_job"))
    assert r.status_code == 200


def test_confirm_accepts_a_form(api: TestClient, key: str) -> None:
    job_for(api, key, "imps_form")
    assert api.post(CONFIRM, data={"imp_uid": "imps_form", "status": "ready"}).status_code == 409
    assert api.post(CONFIRM, data={"imp_uid": "imps_free", "status": "ready"}).status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "/v1/iamport/cvs-confirm",
        "/v1/iamport/cvs-confirm?token=wrong",
        "/v1/iamport/cvs-confirm?token=",
        f"/v1/iamport/cvs-confirm?token={TOKEN}x",
        "/v1/iamport/notifications",
        "/v1/iamport/notifications?token=wrong",
    ],
)
def test_wrong_or_missing_token_is_401(api: TestClient, url: str) -> None:
    r = api.post(url, json=confirm_body("imps_x"))
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert TOKEN not in r.text


def test_no_configured_token_is_404(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IAMPORT_WEBHOOK_TOKEN")
    reset_caches()
    assert api.post(CONFIRM, json=confirm_body("imps_x")).status_code == 404
    assert api.post(NOTIFY, json={"imp_uid": "imps_x"}).status_code == 404
    assert api.post("/v1/iamport/cvs-confirm", json=confirm_body("imps_x")).status_code == 404


@pytest.mark.parametrize(
    "body, ctype",
    [
        (b"", "application/json"),
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'{"event": "Galaxia.Cvs.Confirm"}', "application/json"),
        (b'{"imp_uid": 12}', "application/json"),
        (b'{"imp_uid": "has space"}', "application/json"),
        (b'{"imp_uid": "a\\u0000b"}', "application/json"),
        (b"\xff\xfe", "application/octet-stream"),
        (b"status=paid", "application/x-www-form-urlencoded"),
    ],
)
def test_confirm_unusable_body_blocks(api: TestClient, body: bytes, ctype: str) -> None:
    r = api.post(CONFIRM, content=body, headers={"content-type": ctype})
    assert r.status_code in (400, 422), r.text
    r = api.post(NOTIFY, content=body, headers={"content-type": ctype})
    assert r.status_code in (400, 422), r.text


def test_confirm_with_database_down_blocks(
    service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.main import create_app

    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    reset_caches()
    with TestClient(create_app(), raise_server_exceptions=False) as down:
        r = down.post(CONFIRM, json=confirm_body("imps_any"))
    assert r.status_code == 503
    assert r.json()["code"] == "database_unavailable"
    assert "Retry-After" in r.headers


# -- notifications ----------------------------------------------------------------------------


def attempts(api: TestClient, key: str, job_id: str) -> list[dict[str, Any]]:
    return api.get(f"/v1/jobs/{job_id}/attempts", headers=auth(key)).json()["items"]  # type: ignore[no-any-return]


def job(api: TestClient, key: str, job_id: str) -> dict[str, Any]:
    return api.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()  # type: ignore[no-any-return]


def notify(api: TestClient, imp_uid: str, **fields: Any) -> None:
    r = api.post(NOTIFY, json={"imp_uid": imp_uid, **fields})
    assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text


def test_notification_makes_a_waiting_job_look_first_and_wakes_it(
    api: TestClient, key: str, iamport: SandboxControl, service_env: dict[str, str]
) -> None:
    iamport.create_payment(imp_uid="imps_paid_1", status="paid")
    created = job_for(api, key, "imps_paid_1")
    set_job(service_env["DATABASE_URL"], created["id"], due_at=None)
    notify(api, "imps_paid_1", merchant_uid="m", status="paid")
    row = db_row(service_env["DATABASE_URL"], created["id"])
    assert row["look_first"] is True and row["status"] == "queued"
    assert row["due_at"] is not None  # due now: a sweep finds it even if the message is lost
    assert iamport.calls() == []  # nothing upstream on the request path
    assert run_now(created["id"]) == "needs_refund"
    got = job(api, key, created["id"])
    assert got["status"] == "needs_refund" and got["payment_status"] == "paid"
    assert [a["call"] for a in attempts(api, key, created["id"])][-1:] == ["lookup"]
    assert [c["call"] for c in iamport.calls() if c["call"] != "token"] == ["lookup"]


def test_form_notification_in_retry_wait_is_due_now(
    api: TestClient, key: str, iamport: SandboxControl, service_env: dict[str, str]
) -> None:
    iamport.create_payment(imp_uid="imps_paid_2", status="paid")
    created = job_for(api, key, "imps_paid_2")
    db = service_env["DATABASE_URL"]
    set_job(db, created["id"], status="retry_wait", next_attempt_at="2099-01-01T00:00:00Z")
    r = api.post(NOTIFY, data={"imp_uid": "imps_paid_2", "status": "paid"})
    assert r.status_code == 200
    assert run_now(created["id"]) == "needs_refund"


def test_forged_body_changes_nothing(api: TestClient, key: str, iamport: SandboxControl) -> None:
    iamport.create_payment(imp_uid="imps_forged")  # ready at iamport
    created = job_for(api, key, "imps_forged")
    notify(api, "imps_forged", merchant_uid="x", status="paid")
    assert job(api, key, created["id"])["status"] == "queued"
    # The run believes only its lookup: the barcode is ready, so it is cancelled.
    assert run_now(created["id"]) == "cancelled"
    calls = [c["call"] for c in iamport.calls() if c["call"] != "token"]
    assert calls == ["lookup", "cancel"]


def test_duplicates_are_harmless_and_a_finished_job_is_left_alone(
    api: TestClient, key: str, iamport: SandboxControl, service_env: dict[str, str]
) -> None:
    iamport.create_payment(imp_uid="imps_dup", status="paid")
    created = job_for(api, key, "imps_dup")
    for _ in range(3):
        notify(api, "imps_dup", status="paid")
    assert run_now(created["id"]) == "needs_refund"
    before = db_row(service_env["DATABASE_URL"], created["id"])
    iamport.set_status("imps_dup", "cancelled")  # whatever the story, the job is finished
    notify(api, "imps_dup", status="cancelled")
    after = db_row(service_env["DATABASE_URL"], created["id"])
    assert after == before  # a notification never rewrites a finished job


def test_running_job_is_left_to_its_worker(
    api: TestClient, key: str, iamport: SandboxControl, service_env: dict[str, str]
) -> None:
    iamport.create_payment(imp_uid="imps_running", status="paid")
    created = job_for(api, key, "imps_running")
    set_job(service_env["DATABASE_URL"], created["id"], status="running")
    notify(api, "imps_running", status="paid")
    row = db_row(service_env["DATABASE_URL"], created["id"])
    assert row["status"] == "running" and row["finished_at"] is None
    assert row["look_first"] is True  # its next run looks first


@pytest.mark.parametrize("uncertain, by", [(None, "upstream"), ("cancel", "service")])
def test_cancelled_at_iamport_becomes_cancelled(
    api: TestClient,
    key: str,
    iamport: SandboxControl,
    service_env: dict[str, str],
    uncertain: str | None,
    by: str,
) -> None:
    imp_uid = f"imps_cancel_{by}"
    iamport.create_payment(imp_uid=imp_uid, status="cancelled")
    created = job_for(api, key, imp_uid)
    set_job(service_env["DATABASE_URL"], created["id"], uncertain_call=uncertain)
    notify(api, imp_uid, status="cancelled")
    assert run_now(created["id"]) == "cancelled"
    c = job(api, key, created["id"])["cancellation"]
    assert c["cancelled_by"] == by
    assert c["pg_tid"] == f"cvs_cancel_{imp_uid}_1"
    assert c["amount"] == 1000 and c["cancelled_at"] and c["reason"] == "console cancel"
    assert c["receipt_url"].startswith("https://")


def test_failed_at_iamport_becomes_failed(
    api: TestClient, key: str, iamport: SandboxControl
) -> None:
    iamport.create_payment(imp_uid="imps_failed", status="failed")
    created = job_for(api, key, "imps_failed")
    notify(api, "imps_failed", status="failed")
    assert run_now(created["id"]) == "failed"
    got = job(api, key, created["id"])
    assert got["payment_status"] == "failed" and got["error"]["message"]


def test_unknown_imp_uid_is_200_without_any_upstream_call(
    api: TestClient, iamport: SandboxControl
) -> None:
    notify(api, "imps_not_ours", status="paid")
    assert iamport.calls() == []


def test_iamport_down_does_not_touch_the_answer(
    api: TestClient, key: str, iamport: SandboxControl
) -> None:
    iamport.create_payment(imp_uid="imps_down", status="paid")
    created = job_for(api, key, "imps_down")
    iamport.set_faults(error_rate=1.0, calls=["lookup"], error_style="html")
    notify(api, "imps_down", status="paid")
    assert run_now(created["id"]) == "retry_wait"
    assert [a["outcome"] for a in attempts(api, key, created["id"]) if a["call"] == "lookup"] == [
        "unavailable"
    ]


def test_the_token_never_reaches_the_logs(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    import structlog
    from structlog.contextvars import merge_contextvars
    from structlog.testing import capture_logs

    from app.api import middleware
    from app.api.middleware import RedactQueryTokens

    with capture_logs(processors=[merge_contextvars]) as logs:
        # A fresh logger: the module's own was cached with the real processors on first use.
        monkeypatch.setattr(middleware, "log", structlog.get_logger("api"))
        api.post(CONFIRM, json=confirm_body("imps_logged"))
        api.post("/v1/iamport/cvs-confirm?token=wrong-guess", json=confirm_body("imps_logged"))
    requests = [e for e in logs if e["event"] == "request"]
    assert [e["status"] for e in requests] == [200, 401]
    assert all(e["path"] == "/v1/iamport/cvs-confirm" and e["request_id"] for e in requests)
    text = repr(logs)
    assert TOKEN not in text and "wrong-guess" not in text
    # uvicorn's own access line (uvicorn app.main:app) is scrubbed too.
    line = ("1.2.3.4", "POST", f"/v1/iamport/notifications?token={TOKEN}", "1.1", 200)
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', line, None
    )
    RedactQueryTokens().filter(record)
    assert TOKEN not in record.getMessage() and "token=[redacted]" in record.getMessage()
