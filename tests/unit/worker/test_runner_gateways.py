"""The runner's gateway per account: iamport's client for a v1 account, PortOne V2's for a v2
one (its own guard, its store, `PortOne <secret>` on every call, 60 s unless the account says
otherwise), and the lease that covers the slowest account's calls."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import get_settings
from app.upstream.accounts import accounts_of, leases
from app.upstream.iamport.client import IamportClient
from app.upstream.portone.client import PortOneClient
from tests.support.settings import reset_caches
from worker.runner import Runner

ACCOUNTS = """
[accounts.main]
api = "v1"
imp_key = "main_key"
imp_secret_env = "T_RUN_MAIN_SECRET"

[accounts.shop2]
api = "v2"
store_id = "store-0a1b2c"
api_secret_env = "T_RUN_SHOP2_SECRET"

[accounts.shop3]
api = "v2"
store_id = "store-3"
api_secret_env = "T_RUN_SHOP2_SECRET"
timeout_seconds = 75
"""


@pytest.fixture
def accounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    path = tmp_path / "accounts.toml"
    path.write_text(ACCOUNTS)
    monkeypatch.setenv("ACCOUNTS_FILE", str(path))
    monkeypatch.setenv("T_RUN_MAIN_SECRET", "main-secret")
    monkeypatch.setenv("T_RUN_SHOP2_SECRET", "v2-secret-never-shown")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")  # never reached: nothing is sent
    monkeypatch.setenv("DATABASE_URL", "postgresql://127.0.0.1:9/none")
    reset_caches()
    yield
    reset_caches()


def test_each_account_gets_its_own_kind_of_client(accounts: None) -> None:
    runner = Runner()
    v1, v2, v3 = (runner.gateway(name) for name in ("main", "shop2", "shop3"))
    assert isinstance(v1, IamportClient)
    assert isinstance(v2, PortOneClient) and isinstance(v3, PortOneClient)
    assert runner.gateway("shop2") is v2  # one per account and process
    assert v2._http.timeout == 60.0 and v3._http.timeout == 75.0
    assert v2._http._guard is not None and v2._http._guard is not v3._http._guard
    assert v2._authorization == {"Authorization": "PortOne v2-secret-never-shown"}
    assert "v2-secret" not in repr(v2)


def test_each_accounts_lease_covers_its_own_calls(accounts: None) -> None:
    settings = get_settings()
    found = accounts_of(settings)
    assert {a.timeout_seconds for a in found.values()} == {10.0, 60.0, 75.0}
    for name, lease in leases(settings).items():
        timeout = found[name].timeout_seconds
        assert lease > settings.send_margin_for(timeout) + timeout
