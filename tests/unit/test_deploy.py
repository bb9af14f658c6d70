"""deploy/: the alert rules and the dashboard parse, and name only metrics the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "stockout-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "stockout-dashboard.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Exported by the webhook sender (being added alongside this file); once its /metrics
# carries them, the integration check below covers them like every other name.
PENDING = {"stockout_webhook_oldest_pending_age_seconds"}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bstockout_[a-z0-9_]+\b", expr))


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def test_rules_cover_what_an_operator_must_hear_about() -> None:
    names = set().union(*(metric_names(e) for e in rule_exprs().values()))
    assert {
        "stockout_oldest_waiting_job_age_seconds",
        "stockout_jobs_finished_total",
        "stockout_upstream_calls_total",
        "stockout_webhook_oldest_pending_age_seconds",
    } <= names
    finished = " ".join(e for e in rule_exprs().values() if "jobs_finished" in e)
    assert 'status="failed"' in finished and 'status="needs_refund"' in finished


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_expression_names_exported_metrics(api: object) -> None:
    api.get("/healthz")  # type: ignore[attr-defined]
    text = api.get("/metrics").text  # type: ignore[attr-defined]
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert "stockout_jobs" in exported  # the scrape really read the service's metrics
    known = exported | {n + s for n in exported for s in HISTOGRAM_SUFFIXES} | PENDING
    exprs = [*rule_exprs().values(), *dashboard_exprs()]
    assert len(exprs) >= 15
    for expr in exprs:
        unknown = metric_names(expr) - known
        assert not unknown, f"{expr!r} names {unknown}, which /metrics does not export"
    pending_in = [e for e in exprs if metric_names(e) & PENDING]
    assert all("webhook" in e for e in pending_in)
