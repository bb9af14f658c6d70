"""`stockout_drift_total{account,kind}`: drift a worker's reconciliation recorded, as /metrics
shows it."""

from __future__ import annotations

import os
import subprocess
import sys

from fastapi.testclient import TestClient

from tests.integration.kit.test_metrics import ROOT, scrape, value

WORKER = """
from app.kit import metrics
metrics.drift_recorded("cancelled_but_paid", "main")
metrics.drift_recorded("cancelled_but_paid", "main")
metrics.drift_recorded("missing", "shop2")
"""


def test_drift_is_counted_by_account_and_kind(api: TestClient, service_env: dict[str, str]) -> None:
    before = scrape(api)
    env = dict(os.environ, **service_env)
    subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=env, check=True, timeout=60)
    after = scrape(api)

    def delta(**labels: str) -> float:
        name = "stockout_drift_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(account="main", kind="cancelled_but_paid") == 2
    assert delta(account="shop2", kind="missing") == 1
