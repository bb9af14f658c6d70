"""The chaos run, short: 600 payments (PortOne V2 ones among them) under every kind of strike,
in `make test`, payments changed behind the service's back among them.

It runs `python -m tests.chaos.run` in a subprocess, exactly as `make chaos` does, and reads
the figures it writes. A seed that ever fails goes into SEEDS, so it is run from then on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.launch import ROOT

pytestmark = pytest.mark.slow

# 7: the short run's own seed. Append any seed a `make chaos` run reports failing.
SEEDS = [7]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("seed", SEEDS)
def test_short_chaos_run_has_no_violations(seed: int, tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    args = ["--payments", "600", "--seed", str(seed), "--duration", "30", "--drain-limit", "45"]
    result = subprocess.run(
        [sys.executable, "-m", "tests.chaos.run", *args, "--json", str(figures)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    report = json.loads(figures.read_text())
    assert report["total"] == 0
    assert report["applied_max"] == 1
    assert report["figures"]["jobs accepted"] >= 590
    assert report["figures"]["drained"] is True
    strikes = report["figures"]["nemesis strikes"]
    assert {"faults", "kill_worker", "redis", "postgres", "token_expiry", "admin"} <= set(strikes)
    # Payments changed behind the service's back, each kind, settled by reconciliation.
    changed = report["figures"]["admin changes by action"]
    assert {"refund", "pay", "cancel", "drift"} <= set(changed), changed
    assert report["figures"]["drifts recorded (jobs, by kind)"]["cancelled_but_paid"] >= 1
    # PortOne V2 jobs ran under the same strikes, every change under an Idempotency-Key.
    assert report["figures"]["v2 jobs"] > 0 and report["figures"]["v2 mutating calls"] > 0
    for line in (
        "v2 refunds applied per payment over 1",
        "v2 closes applied per payment over 1",
        "v2 mutating requests without an Idempotency-Key",
        "v2 keys reused for a different call",
    ):
        assert report["violations"][line] in (0, []), line
    # The flaky webhook receivers answered 500s and timeouts, and still got every message.
    figures = report["figures"]
    assert figures["webhooks settled"] is True
    assert figures["webhook 500s served"] > 0 and figures["webhook timeouts served"] > 0
    assert figures["webhook messages delivered (unique at receivers)"] >= figures["jobs accepted"]
