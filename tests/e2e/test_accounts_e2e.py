"""Several accounts end to end: a real worker, Postgres, Redis and a sandbox that knows each
account's credentials and tiers, and refuses a call that speaks for the wrong merchant."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devtools.sandbox.control import SandboxControl
from devtools.sandbox.merchants import key_id
from tests.support.factories import api_key, auth
from tests.support.processes import start_worker, stop, wait_until
from tests.support.settings import reset_caches

pytestmark = pytest.mark.slow
_n = itertools.count()
WARM = 80  # jobs run before the clock starts, so both figures are of a warm worker

MERCHANTS: dict[str, dict[str, Any]] = {
    "main": {"imp_key": "main_key", "imp_secret": "main-secret", "tier": None},
    "shop2": {"imp_key": "shop2_key", "imp_secret": "shop2-secret", "tier": None},
    "agency-a01": {"imp_key": "agency_key", "imp_secret": "agency-secret", "tier": "A01"},
}


def accounts_toml() -> str:
    parts = []
    for name, m in MERCHANTS.items():
        secret_env = f"TEST_{name.upper().replace('-', '_')}_SECRET"
        parts.append(f'[accounts.{name}]\napi = "v1"\nimp_key = "{m["imp_key"]}"\n')
        parts.append(f'imp_secret_env = "{secret_env}"\n')
        if m["tier"]:
            parts.append(f'tier = "{m["tier"]}"\n')
    return "".join(parts)


@pytest.fixture
def accounts_env(
    stack_env: dict[str, str],
    sandbox: SandboxControl,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    sandbox.add_merchants(
        [
            {"imp_key": m["imp_key"], "imp_secret": m["imp_secret"], "tier": m["tier"]}
            for m in MERCHANTS.values()
        ]
    )
    path = tmp_path / "accounts.toml"
    path.write_text(accounts_toml())
    extra = {"ACCOUNTS_FILE": str(path)}
    for name, m in MERCHANTS.items():
        extra[f"TEST_{name.upper().replace('-', '_')}_SECRET"] = str(m["imp_secret"])
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    reset_caches()
    return stack_env | extra


@pytest.fixture
def client(accounts_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def accounts_worker(accounts_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    proc = start_worker(accounts_env, tmp_path / "worker.log")
    yield proc
    stop(proc)


def payments(sandbox: SandboxControl, account: str, n: int) -> list[str]:
    m = MERCHANTS[account]
    batch = next(_n)
    uids = [f"imps_acc{batch}_{i}" for i in range(n)]
    spec = {"imp_key": m["imp_key"], "tier": m["tier"], "amount": 1000}
    sandbox.create_payments([{"imp_uid": u, **spec} for u in uids])
    return uids


def post(client: TestClient, key: str, account: str, uids: list[str]) -> list[str]:
    body = {
        "account": account,
        "event_id": f"acc-{next(_n)}",
        "sku": "SKU-1",
        "payments": [{"imp_uid": u} for u in uids],
    }
    r = client.post("/v1/stockout-events", json=body, headers=auth(key))
    assert r.status_code == 202, r.text
    return [j["id"] for j in r.json()["jobs"]]


def statuses(client: TestClient, key: str, account: str) -> dict[str, int]:
    r = client.get("/v1/stats", params={"account": account}, headers=auth(key))
    return {k: v for k, v in r.json()["counts"].items() if v}


def terminal(client: TestClient, key: str, account: str) -> int:
    counts = statuses(client, key, account)
    return sum(counts.get(s, 0) for s in ("cancelled", "needs_refund", "refunded", "failed"))


def finished(client: TestClient, key: str, account: str, n: int) -> bool:
    return statuses(client, key, account).get("cancelled", 0) == n


def test_each_account_calls_with_its_own_credentials_and_the_tiered_one_with_its_tier(
    client: TestClient, sandbox: SandboxControl, accounts_worker: Any
) -> None:
    key = api_key()
    uids = {account: payments(sandbox, account, 6) for account in MERCHANTS}
    for account, mine in uids.items():
        post(client, key, account, mine)
    for account in MERCHANTS:
        wait_until(lambda a=account: finished(client, key, a, 6), 60, f"{account}'s jobs")  # type: ignore[misc]
    owner = {u: account for account, mine in uids.items() for u in mine}
    calls = sandbox.calls()
    assert calls, "the sandbox saw no call"
    for c in calls:
        assert c["fault"] is None and (c["status_code"] or 0) < 400, c
        if c["imp_uid"] is not None:
            m = MERCHANTS[owner[c["imp_uid"]]]
            assert c["key_id"] == key_id(str(m["imp_key"])), c
            assert c["tier"] == m["tier"], c
    tiered = [c for c in calls if c["key_id"] == key_id("agency_key")]
    assert {c["call"] for c in tiered} >= {"token", "cancel"}
    assert all(c["tier"] == "A01" for c in tiered)
    assert all(c["tier"] is None for c in calls if c["key_id"] != key_id("agency_key"))
    # Every job is its account's, and each payment was cancelled once.
    for account, mine in uids.items():
        for u in mine:
            assert sandbox.payment(u)["status"] == "cancelled"
            assert sandbox.tally(u)["cancels_applied"] == 1


def test_a_429_storm_on_one_account_leaves_the_other_at_full_speed(
    client: TestClient, sandbox: SandboxControl, accounts_worker: Any
) -> None:
    key = api_key()
    n = 300
    # Warm up: tokens fetched, every child process and its pools started.
    post(client, key, "main", payments(sandbox, "main", WARM))
    wait_until(lambda: finished(client, key, "main", WARM), 60, "the warm-up")
    # The first batch after a start runs slower (pools and plans still settling): one batch
    # of the measured size first, so the figure alone is of the steady state too.
    post(client, key, "main", payments(sandbox, "main", n))
    wait_until(lambda: finished(client, key, "main", WARM + n), 120, "a first batch")

    started = time.monotonic()
    post(client, key, "main", payments(sandbox, "main", n))
    wait_until(lambda: finished(client, key, "main", WARM + 2 * n), 120, "main alone")
    alone = n / (time.monotonic() - started)

    sandbox.set_faults(imp_key="shop2_key", rate_429=1.0)
    storm = payments(sandbox, "shop2", n)
    post(client, key, "shop2", storm)
    wait_until(
        lambda: (
            sum(sandbox.stats()["by_merchant"][key_id("shop2_key")]["faults_injected"].values())
            >= 20
        ),
        60,
        "shop2's 429s",
    )
    started = time.monotonic()
    post(client, key, "main", payments(sandbox, "main", n))
    wait_until(lambda: finished(client, key, "main", WARM + 3 * n), 120, "main beside the storm")
    beside = n / (time.monotonic() - started)
    shop2 = statuses(client, key, "shop2")
    print(f"\nmain's jobs/s alone {alone:.0f}, beside shop2's 429 storm {beside:.0f}")
    print(f"shop2 during its storm: {shop2}")
    assert shop2.get("cancelled", 0) == 0  # every one of its calls was refused
    assert beside >= 0.5 * alone, (alone, beside)

    # The storm ends: shop2's jobs finish, each payment cancelled once, nothing lost.
    sandbox.clear_faults(imp_key="shop2_key")
    wait_until(lambda: finished(client, key, "shop2", n), 120, "shop2 after its storm")
    for u in storm:
        assert sandbox.tally(u)["cancels_applied"] == 1


@pytest.mark.parametrize("trouble", ["outage", "401 storm"])
def test_an_outage_or_a_401_storm_of_one_account_leaves_the_other_at_full_speed(
    client: TestClient, sandbox: SandboxControl, accounts_worker: Any, trouble: str
) -> None:
    key = api_key()
    n = 300
    post(client, key, "main", payments(sandbox, "main", WARM))
    wait_until(lambda: finished(client, key, "main", WARM), 60, "the warm-up")
    # The first batch after a start runs slower (pools and plans still settling): one batch
    # of the measured size first, so the figure alone is of the steady state too.
    post(client, key, "main", payments(sandbox, "main", n))
    wait_until(lambda: finished(client, key, "main", WARM + n), 120, "a first batch")
    started = time.monotonic()
    post(client, key, "main", payments(sandbox, "main", n))
    wait_until(lambda: finished(client, key, "main", WARM + 2 * n), 120, "main alone")
    alone = n / (time.monotonic() - started)

    if trouble == "outage":
        # Every call of shop2's hangs past the client's timeout (IAMPORT_TIMEOUT_SECONDS=1).
        sandbox.set_faults(imp_key="shop2_key", latency_ms=3000)
    else:
        sandbox.set_faults(imp_key="shop2_key", token_expiry_rate=1.0)
    troubled = payments(sandbox, "shop2", n)
    post(client, key, "shop2", troubled)
    wait_until(lambda: len(sandbox.calls()) > 0, 30, "shop2's calls")
    started = time.monotonic()
    post(client, key, "main", payments(sandbox, "main", n))
    wait_until(lambda: finished(client, key, "main", WARM + 3 * n), 120, "main beside shop2")
    beside = n / (time.monotonic() - started)
    print(f"\nmain's jobs/s alone {alone:.0f}, beside shop2's {trouble} {beside:.0f}")
    assert beside >= 0.5 * alone, (alone, beside)

    # The trouble ends: every shop2 job ends, as its payment stands. A long 401 storm may
    # have spent a job's attempts (it ends failed, saying so); none is lost or cancelled twice.
    sandbox.clear_faults(imp_key="shop2_key")
    wait_until(lambda: terminal(client, key, "shop2") == n, 180, f"shop2 after its {trouble}")
    r = client.get("/v1/jobs", params={"account": "shop2", "limit": 500}, headers=auth(key))
    for job in r.json()["items"]:
        applied = sandbox.tally(job["imp_uid"])["cancels_applied"]
        assert applied <= 1, job
        assert (job["status"] == "cancelled") == (applied == 1), job
