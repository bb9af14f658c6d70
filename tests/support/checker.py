"""Compare every job with the sandbox's truth and its call log: the guarantees, as numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from app.jobs.status import TERMINAL
from devtools.sandbox.control import SandboxControl


@dataclass
class Report:
    jobs: int = 0
    non_terminal: int = 0
    wrong_outcome: list[str] = field(default_factory=list)
    applied_max: int = 0
    refunds_max: int = 0
    cancel_after_applied: int = 0
    overlapping_cancels: int = 0
    refunds_without_lookup: int = 0
    refunds_unasked: list[str] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def violations(self) -> int:
        return (
            self.non_terminal
            + len(self.wrong_outcome)
            + max(0, self.applied_max - 1)
            + max(0, self.refunds_max - 1)
            + self.cancel_after_applied
            + self.overlapping_cancels
            + self.refunds_without_lookup
            + len(self.refunds_unasked)
        )


def expected(truth: dict[str, Any] | None, attempts: int, max_attempts: int) -> set[str]:
    """The terminal statuses that agree with the payment at iamport."""
    if truth is None:
        return {"failed"}
    status = truth["status"]
    if status == "cancelled":
        return {"refunded"} if truth.get("refunds_applied", 0) > 0 else {"cancelled"}
    if status == "paid":
        return {"needs_refund"}
    if status == "failed":
        return {"failed"}
    return {"failed"} if attempts >= max_attempts else set()


def _truth(sandbox: SandboxControl, imp_uid: str) -> dict[str, Any] | None:
    try:
        return sandbox.payment(imp_uid)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return None
        raise


def check(db: str, sandbox: SandboxControl, max_attempts: int = 8) -> Report:
    """Every job against the truth; the sandbox's counters for double and overlapping calls."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT imp_uid, status, attempts, cancellation, "
            "on_paid = 'refund' OR refund_requested_at IS NOT NULL FROM jobs"
        ).fetchall()
    truth = {imp_uid: _truth(sandbox, imp_uid) for imp_uid, *_ in rows}
    report = Report(jobs=len(rows))
    for imp_uid, status, attempts, cancellation, refund_allowed in rows:
        payment = truth.get(imp_uid)
        if payment is not None and payment.get("refund_calls", 0) and not refund_allowed:
            report.refunds_unasked.append(f"{imp_uid}: refunded without on_paid=refund or a person")
        report.by_status[status] = report.by_status.get(status, 0) + 1
        if status not in TERMINAL:
            report.non_terminal += 1
            continue
        if status not in expected(payment, attempts, max_attempts):
            report.wrong_outcome.append(
                f"{imp_uid}: job {status}, payment {payment and payment['status']}"
            )
        elif status == "cancelled" and payment is not None:
            ours = payment.get("cancels_applied", 0) > 0
            by = (cancellation or {}).get("cancelled_by")
            if by == "upstream" and ours:
                report.wrong_outcome.append(f"{imp_uid}: cancelled by us but recorded as upstream")
    stats = sandbox.stats()
    report.applied_max = int(stats["mutating_applied_max_per_imp_uid"])
    report.refunds_max = int(stats["refunds_applied_max_per_imp_uid"])
    report.cancel_after_applied = int(stats["cancel_after_applied"])
    report.overlapping_cancels = int(stats["overlaps"])
    report.refunds_without_lookup = int(stats["refunds_without_lookup"])
    return report
