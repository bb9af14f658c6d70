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
    truth: dict[str, dict[str, Any] | None] = field(default_factory=dict)

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


def check(
    db: str, sandbox: SandboxControl, max_attempts: int = 8, changed: frozenset[str] = frozenset()
) -> Report:
    """Every job against the truth; the sandbox's counters for double and overlapping calls.

    A payment in `changed` was changed behind the service's back: what its job should be is
    reconciliation's (`check_reconciled`), not judged here."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT imp_uid, status, attempts, cancellation, "
            "on_paid = 'refund' OR refund_requested_at IS NOT NULL FROM jobs"
        ).fetchall()
    truth = {imp_uid: _truth(sandbox, imp_uid) for imp_uid, *_ in rows}
    report = Report(jobs=len(rows), truth=truth)
    for imp_uid, status, attempts, cancellation, refund_allowed in rows:
        payment = truth.get(imp_uid)
        if payment is not None and payment.get("refund_calls", 0) and not refund_allowed:
            report.refunds_unasked.append(f"{imp_uid}: refunded without on_paid=refund or a person")
        report.by_status[status] = report.by_status.get(status, 0) + 1
        if status not in TERMINAL:
            report.non_terminal += 1
            continue
        if imp_uid in changed:
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


@dataclass(frozen=True)
class Change:
    """A payment changed behind the service's back (the chaos nemesis's admin strike)."""

    imp_uid: str
    action: str  # refund | pay | cancel | drift
    job_status: str  # the job's when the payment was changed


@dataclass
class Reconciled:
    """Jobs against the reconciliation rules (app/jobs/drift.py): where the gateway says, each contradiction once."""

    not_where: list[str] = field(default_factory=list)
    drift_twice: list[str] = field(default_factory=list)
    drifts: dict[str, int] = field(default_factory=dict)  # jobs holding a drift, by kind
    upstream: dict[str, int] = field(default_factory=dict)  # settled as someone else's, by what


def _balance(payment: dict[str, Any]) -> float:
    return max(float(payment.get("amount", 0)) - float(payment.get("cancel_amount", 0)), 0.0)


def _where(
    change: Change | None,
    payment: dict[str, Any] | None,
    status: str,
    drift: dict[str, Any] | None,
    refund: dict[str, Any] | None,
) -> str | None:
    """Why the job is not where the gateway says (the reconciliation rules), or None."""
    shown = payment and payment["status"]
    if change is not None:
        if change.action == "refund" and change.job_status == "waiting":
            # Its run meets the refund: a cancellation it did not make (or, when a refund or
            # cancel of ours went unanswered, may have: the credit rule's), or, if it ended
            # needs_refund just before, reconciliation's refund by upstream.
            by = (refund or {}).get("refunded_by")
            ours = bool((payment or {}).get("refund_calls"))
            if status not in ("cancelled", "refunded") or (
                status == "refunded" and by != "upstream" and not ours
            ):
                return f"refunded in the admin while waiting: job {status}, refunded_by {by}"
        elif change.action == "refund":  # needs_refund, refunded in the admin
            by = (refund or {}).get("refunded_by")
            if status != "refunded" or by != "upstream":
                return f"refunded in the admin: job {status}, refunded_by {by}"
        elif change.action == "pay":  # failed, paid since
            want = {"paid": "needs_refund", "cancelled": "refunded"}.get(str(shown))
            if status != want or (
                want == "refunded" and not (payment or {}).get("refunds_applied")
            ):
                return f"failed, paid since: job {status}, payment {shown}"
        elif change.action == "cancel":  # failed, cancelled since
            if status != "cancelled":
                return f"failed, cancelled since: job {status}, payment {shown}"
        elif change.action == "drift":  # cancelled, paid since: kept, with a drift record
            kind = (drift or {}).get("kind")
            seen = (drift or {}).get("seen_status")
            if status != "cancelled" or kind != "cancelled_but_paid" or seen != "paid":
                return f"cancelled, paid since: job {status}, drift {kind}/{seen}"
        return None
    if payment is None:
        return None
    if status == "needs_refund" and shown == "cancelled" and _balance(payment) <= 0:
        return "needs_refund while the payment is fully refunded"
    if status == "failed" and shown == "paid" and _balance(payment) > 0:
        return "failed while the payment is paid"
    if status in ("cancelled", "refunded") and shown == "paid" and drift is None:
        return f"{status} while the payment is paid, and no drift recorded"
    return None


def check_reconciled(
    db: str,
    sandbox: SandboxControl,
    changes: list[Change],
    truth: dict[str, dict[str, Any] | None] | None = None,
) -> Reconciled:
    """Each job against its payment by the reconciliation rules: the changed ones by what was done to
    them (`truth` None: only those, looked up now, as the drain's test of being settled), every
    other one by the general rules against `truth`; and every job's `job.drift` messages, at
    most one per endpoint for each contradiction."""
    by_uid = {c.imp_uid: c for c in changes}
    where = "" if truth is not None else "WHERE imp_uid = ANY(%(uids)s)"
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            f"SELECT imp_uid, status, drift, refund, cancellation FROM jobs {where}",
            {"uids": list(by_uid)},
        ).fetchall()
        twice = conn.execute(
            "SELECT j.imp_uid, m.endpoint_id::text, count(*) FROM webhook_messages m "
            "JOIN jobs j ON j.id = m.job_id WHERE m.event_type = 'job.drift' "
            "GROUP BY 1, 2 HAVING count(*) > 1"
        ).fetchall()
    if truth is None:
        truth = {imp_uid: _truth(sandbox, imp_uid) for imp_uid, *_ in rows}
    out = Reconciled(drift_twice=[f"{uid}: {n} job.drift messages to {ep}" for uid, ep, n in twice])
    for imp_uid, status, drift, refund, cancellation in rows:
        if status not in TERMINAL:
            out.not_where.append(f"{imp_uid}: still {status}")
            continue
        why = _where(by_uid.get(imp_uid), truth.get(imp_uid), status, drift, refund)
        if why is not None:
            out.not_where.append(f"{imp_uid}: {why}")
        if drift is not None:
            out.drifts[drift["kind"]] = out.drifts.get(drift["kind"], 0) + 1
        if (refund or {}).get("refunded_by") == "upstream":
            out.upstream["refunded"] = out.upstream.get("refunded", 0) + 1
        if (cancellation or {}).get("cancelled_by") == "upstream" and imp_uid in by_uid:
            out.upstream["cancelled (changed)"] = out.upstream.get("cancelled (changed)", 0) + 1
    return out
