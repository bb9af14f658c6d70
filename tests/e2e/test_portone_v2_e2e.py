"""PortOne V2 accounts end to end: a real worker process, Postgres, Redis and the sandbox's V2.

Every call that changes a payment carries its Idempotency-Key; the sandbox's tally of each
payment says what reached it: closes and refunds applied, calls, replays of a key's answer,
keys reused for another request, calls without a key, answers of "still outstanding".
CANCEL_SETTLE_SECONDS is far longer than any test here, so a job that finishes did so by
repeating its call with the same key, never by waiting out the settle time.
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from devtools.embedded import free_port, wait_for_port
from devtools.launch import api_command
from devtools.sandbox.control import SandboxControl, V2Control
from tests.e2e.test_stopping import spawn
from tests.support.factories import api_key, auth
from tests.support.processes import start_worker, stop, wait_until
from tests.support.settings import reset_caches

pytestmark = pytest.mark.slow
_n = itertools.count()
STORE, SECRET = "store-e2e", "v2-secret-e2e"
TIMEOUT = 2  # the account's timeout_seconds: hangs and trickles are cut at it
TERMINAL = {"cancelled", "needs_refund", "refunded", "failed"}
WHSEC = "whsec_" + base64.b64encode(b"the e2e store's webhook secret!!").decode()


@pytest.fixture
def v2_env(
    stack_env: dict[str, str],
    sandbox: SandboxControl,
    sandbox_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    sandbox.v2.add_store(STORE, SECRET)
    path = tmp_path / "accounts.toml"
    path.write_text(
        "[accounts.shop2]\n"
        'api = "v2"\n'
        f'store_id = "{STORE}"\n'
        'api_secret_env = "TEST_V2_SECRET"\n'
        f'base_url = "{sandbox_url}"\n'
        f"timeout_seconds = {TIMEOUT}\n"
        'on_paid = "refund"\n'
        'webhook_secret_env = "TEST_V2_WHSEC"\n'
    )
    extra = {
        "ACCOUNTS_FILE": str(path),
        "TEST_V2_SECRET": SECRET,
        "TEST_V2_WHSEC": WHSEC,
        "CANCEL_SETTLE_SECONDS": "600",
    }
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    reset_caches()
    return stack_env | extra


@pytest.fixture
def v2(sandbox: SandboxControl, v2_env: dict[str, str]) -> Iterator[V2Control]:
    yield sandbox.v2
    sandbox.v2.clear_faults(STORE)


@pytest.fixture
def client(v2_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def v2_worker(v2_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    proc = start_worker(v2_env, tmp_path / "worker.log")
    yield proc
    stop(proc)


def payment(v2: V2Control, **spec: Any) -> str:
    payment_id = f"order-v2-{next(_n)}"
    v2.create_payment(payment_id=payment_id, store_id=STORE, amount=1000, **spec)
    return payment_id


def post(client: TestClient, key: str, payment_id: str, hint: str = "cvs") -> str:
    body = {
        "account": "shop2",
        "event_id": f"v2-{next(_n)}",
        "sku": "SKU-1",
        "payments": [{"payment_id": payment_id, "pay_method": hint}],
    }
    r = client.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    job = r.json()["jobs"][0]
    assert job["payment_id"] == payment_id and job["imp_uid"] is None
    return str(job["id"])


def job(client: TestClient, key: str, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/jobs/{job_id}", headers=auth(key))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def finished(client: TestClient, key: str, job_id: str, timeout: float = 40) -> dict[str, Any]:
    wait_until(lambda: job(client, key, job_id)["status"] in TERMINAL, timeout, "the job to end")
    return job(client, key, job_id)


def keyed_only(tally: Any) -> None:
    """Every mutating call carried a key, and no key was sent for another request."""
    assert tally["without_key"] == 0 and tally["key_reused"] == 0 and tally["overlaps"] == 0


def test_an_issued_virtual_account_is_closed_once(
    client: TestClient, v2: V2Control, v2_worker: Any
) -> None:
    key = api_key()
    payment_id = payment(v2, method="virtual_account")
    done = finished(client, key, post(client, key, payment_id, hint="vbank"))
    assert done["status"] == "cancelled", done
    assert done["pay_method"] == "vbank" and done["payment_status"] == "cancelled"
    assert done["cancellation"]["cancelled_by"] == "service"
    tally = v2.tally(payment_id)
    assert tally["closes_applied"] == 1 and tally["close_calls"] == 1
    keyed_only(tally)
    assert v2.payment(payment_id)["status"] == "CANCELLED"


@pytest.mark.parametrize("call", ["close", "refund"])
def test_an_applied_call_whose_payment_could_not_be_read_back_is_ours(
    client: TestClient, v2: V2Control, v2_worker: Any, call: str
) -> None:
    # The close (or refund) is answered as done, and the lookup that reads the payment back
    # is answered 429, which says of a call that it did not apply: the job must still know
    # that its own call did it, not credit someone else (found by the chaos run).
    key = api_key()
    method = "virtual_account" if call == "close" else "card"
    payment_id = payment(v2, method=method)
    v2.set_faults(STORE, calls=["lookup"], imp_uids=[payment_id], rate_429=1, retry_after=0.2)
    job_id = post(client, key, payment_id, hint="vbank" if call == "close" else "cvs")

    def applied() -> int:
        tally = v2.tally(payment_id)
        return tally["closes_applied"] if call == "close" else tally["refunds_applied"]

    if call == "refund":  # a refund needs a lookup's balance first: let one through
        v2.clear_faults(STORE)
        wait_until(lambda: v2.tally(payment_id)["lookups"] >= 1, 20, "the first lookup")
        v2.set_faults(STORE, calls=["lookup"], imp_uids=[payment_id], rate_429=1, retry_after=0.2)
    wait_until(lambda: applied() == 1, 20, f"the {call} to apply")
    time.sleep(1)  # the read-back follows the answer at once, and fails
    v2.clear_faults(STORE)
    done = finished(client, key, job_id)
    if call == "close":
        assert done["status"] == "cancelled", done
        assert done["cancellation"]["cancelled_by"] == "service"
    else:
        assert done["status"] == "refunded", done
    assert applied() == 1
    keyed_only(v2.tally(payment_id))


@pytest.mark.parametrize(
    "fault",
    [
        {"drop_after_rate": 1},
        {"timeout_after_rate": 1, "hang_seconds": 30},
        {"trickle_rate": 1, "trickle_interval_ms": 400, "trickle_bytes": 1},
        {"error_after_rate": 1, "error_style": "html"},
    ],
    ids=["answer-lost", "timeout", "trickle", "gateway-5xx"],
)
def test_a_refund_whose_answer_never_came_is_applied_once(
    client: TestClient, v2: V2Control, v2_worker: Any, fault: dict[str, Any]
) -> None:
    key = api_key()
    payment_id = payment(v2, method="card")
    v2.set_faults(STORE, calls=["refund"], imp_uids=[payment_id], **fault)
    job_id = post(client, key, payment_id)
    wait_until(lambda: v2.tally(payment_id)["refunds_applied"] == 1, 20, "the refund to apply")
    v2.clear_faults(STORE)
    done = finished(client, key, job_id)
    assert done["status"] == "refunded", done
    assert done["refund"]["amount"] == 1000
    tally = v2.tally(payment_id)
    assert tally["refunds_applied"] == 1
    keyed_only(tally)
    # The first refund, and at most its repeat under the same key (answered from the key).
    assert tally["cancel_calls"] - tally["replays"] == 1
    assert tally["cancel_calls"] <= 2
    assert v2.payment(payment_id)["status"] == "CANCELLED"


def test_a_refund_still_being_worked_on_waits_for_its_key(
    client: TestClient, v2: V2Control, v2_worker: Any
) -> None:
    key = api_key()
    payment_id = payment(v2, method="card")
    # Applied 8 s after it arrived, long after the caller (2 s) hung up; its key is
    # outstanding until then, so the repeat is answered 409 IDEMPOTENCY_OUTSTANDING_REQUEST.
    v2.set_faults(
        STORE, calls=["refund"], imp_uids=[payment_id], late_apply_rate=1, late_apply_seconds=8
    )
    job_id = post(client, key, payment_id)
    wait_until(lambda: v2.tally(payment_id)["outstanding"] >= 1, 20, "a repeat while outstanding")
    assert job(client, key, job_id)["status"] in ("running", "retry_wait")  # never failed
    done = finished(client, key, job_id)
    assert done["status"] == "refunded", done
    tally = v2.tally(payment_id)
    assert tally["refunds_applied"] == 1
    keyed_only(tally)
    assert tally["cancel_calls"] == 1 + tally["outstanding"] + tally["replays"]
    # "Still outstanding" is the first call's, not another attempt.
    attempts = client.get(f"/v1/jobs/{job_id}/attempts", headers=auth(key)).json()["items"]
    outcomes = [a["outcome"] for a in attempts if a["call"] == "refund"]
    assert "in_flight" in outcomes
    assert done["attempts"] == len([o for o in outcomes if o != "in_flight"])


@pytest.mark.parametrize(
    ("outcome", "status"), [("SUCCEEDED", "refunded"), ("FAILED", "needs_refund")]
)
def test_a_requested_cancellation_is_waited_for(
    client: TestClient, v2: V2Control, v2_worker: Any, outcome: str, status: str
) -> None:
    key = api_key()
    payment_id = payment(v2, method="card")
    v2.settings(
        requested_rate=1,
        requested_seconds=4,
        requested_outcome=outcome,
        requested_payment_ids=[payment_id],
    )
    try:
        job_id = post(client, key, payment_id)
        wait_until(lambda: v2.tally(payment_id)["refunds_requested"] == 1, 20, "REQUESTED")
        assert job(client, key, job_id)["status"] in ("running", "retry_wait")
        done = finished(client, key, job_id)
    finally:
        v2.settings(requested_rate=0, requested_payment_ids=None)
    assert done["status"] == status, done
    tally = v2.tally(payment_id)
    assert tally["cancel_calls"] == 1  # waited and looked up: no second refund
    keyed_only(tally)
    if status == "refunded":
        assert done["refund"]["amount"] == 1000
        assert v2.payment(payment_id)["status"] == "CANCELLED"
    else:
        assert done["error"]["message"] and v2.payment(payment_id)["status"] == "PAID"
        # A person asks for the refund again: a new call with a new key, not the failed one's.
        r = client.post(f"/v1/jobs/{job_id}/refund", headers=auth(key))
        assert r.status_code == 202, r.text
        again = finished(client, key, job_id)
        assert again["status"] == "refunded", again
        tally = v2.tally(payment_id)
        assert (
            tally["cancel_calls"] == 2 and tally["replays"] == 0 and tally["refunds_applied"] == 1
        )


def test_a_convenience_store_payment_on_v2_fails_with_a_plain_error(
    client: TestClient, v2: V2Control, v2_worker: Any
) -> None:
    key = api_key()
    payment_id = payment(v2, method="convenience_store", status="PENDING")
    done = finished(client, key, post(client, key, payment_id, hint="cvs"))
    assert done["status"] == "failed", done
    assert "convenience-store barcode" in done["error"]["message"]
    tally = v2.tally(payment_id)
    assert tally["close_calls"] == 0 and tally["cancel_calls"] == 0  # nothing was sent


@pytest.fixture
def api_url(v2_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """The API under uvicorn, where the sandbox sends the store's signed webhooks."""
    port = free_port()
    proc = spawn(api_command(port), v2_env, tmp_path / "api.log")
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def waiting(db: str, job_id: str) -> tuple[str, bool, float]:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT status, look_first, EXTRACT(EPOCH FROM next_attempt_at - now())::float8 "
            "FROM jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None
    return str(row[0]), bool(row[1]), float(row[2] or 0)


def test_a_signed_v2_webhook_makes_the_job_look_first_and_a_forged_or_stale_one_does_not(
    client: TestClient, v2: V2Control, v2_env: dict[str, str], api_url: str, v2_worker: Any
) -> None:
    key = api_key()
    v2.add_store(STORE, SECRET, f"{api_url}/v1/portone/webhooks/shop2", WHSEC)
    payment_id = payment(v2, method="virtual_account", status="READY")
    job_id = post(client, key, payment_id, hint="vbank")
    # Not issued yet: nothing to close, so the job waits; then it is made to wait an hour.
    wait_until(
        lambda: job(client, key, job_id)["payment_status"] == "pending", 20, "nothing to stop yet"
    )
    db = v2_env["DATABASE_URL"]
    wait_until(lambda: waiting(db, job_id)[0] == "retry_wait", 20, "the job to wait")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET next_attempt_at = now() + interval '1 hour', "
            "due_at = now() + interval '1 hour' WHERE id = %s",
            (job_id,),
        )
    forged = v2.send_webhook(payment_id, store_id=STORE, signature="v1,Zm9yZ2VkIHNpZ25hdHVyZQ==")
    stale = v2.send_webhook(payment_id, store_id=STORE, timestamp_offset=-600)
    other = v2.send_webhook(payment_id, store_id=STORE, secret="whsec_" + "QUJD" * 8)
    assert [h["status_code"] for h in (forged, stale, other)] == [401, 401, 401]
    status, look_first, due_in = waiting(db, job_id)
    assert (status, look_first) == ("retry_wait", False) and due_in > 3000  # nothing changed

    # The virtual account is issued: PortOne's signed webhook makes the job look first, now.
    v2.issue(payment_id)
    done = finished(client, key, job_id, timeout=30)
    steps = client.get(f"/v1/jobs/{job_id}/attempts", headers=auth(key)).json()["items"]
    assert done["status"] == "cancelled", (done, steps)
    tally = v2.tally(payment_id)
    # Each close before the issue was refused; the one after it is a new call with a new key,
    # not a replay of a refusal.
    assert tally["closes_applied"] == 1 and tally["close_calls"] >= 2 and tally["replays"] == 0
    keyed_only(tally)
    delivered = [w for w in v2.webhooks() if w.get("status_code") == 200]
    assert delivered, v2.webhooks()
