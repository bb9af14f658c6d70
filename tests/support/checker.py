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
    v2: V2Report | None = None  # PortOne V2 jobs (their counts are in the ones above too)

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
            + (self.v2.key_violations if self.v2 is not None else 0)
        )


@dataclass
class V2Report:
    """PortOne V2 jobs against the V2 sandbox's truth, tallies and log of mutating calls."""

    jobs: int = 0
    non_terminal: int = 0
    wrong_outcome: list[str] = field(default_factory=list)
    refunds_unasked: list[str] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)
    refunds_max: int = 0  # refunds applied to one payment, at most
    closes_max: int = 0  # virtual-account closes applied to one payment, at most
    without_key: list[str] = field(default_factory=list)  # mutating calls sent without a key
    keys_reused: list[str] = field(default_factory=list)  # a key sent for two different calls
    refused_as_reused: int = 0  # the sandbox's own count: answered 422 for a reused key
    overlaps: int = 0  # mutating calls that arrived while another was being worked on
    mutating_calls: int = 0
    replays: int = 0  # answered from a key's stored answer
    outstanding: int = 0  # answered 409 IDEMPOTENCY_OUTSTANDING_REQUEST
    refunds_requested: int = 0  # answered REQUESTED, finished later
    faults_injected: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # by kind: lookup, cancel_vbank, refund

    @property
    def key_violations(self) -> int:
        return (
            max(0, self.refunds_max - 1)
            + max(0, self.closes_max - 1)
            + len(self.without_key)
            + len(self.keys_reused)
        )


# A V2 payment neither issued nor paid ends its job failed with this plain error; a job whose
# payment is (or, with no method to tell, was named) a convenience-store barcode may end with
# the reason V2 cannot void one.
NOTHING_TO_STOP = "nothing to stop yet"
NO_BARCODE_VOID = "convenience-store barcode"
# ...or, when the faults kept every lookup of its last runs from an answer, the idle bound's
# plain error: still failed, as the payment stands, and saying why.
COULD_NOT_LEARN = "could not learn the payment's status"


def expected_v2(truth: dict[str, Any] | None, attempts: int, max_attempts: int) -> set[str]:
    """The terminal statuses that agree with the payment at PortOne V2."""
    if truth is None:
        return {"failed"}
    status = truth["status"]
    if status == "CANCELLED":
        return {"refunded"} if truth["tally"]["refunds_applied"] > 0 else {"cancelled"}
    if status in ("PAID", "PARTIAL_CANCELLED"):
        return {"needs_refund"}
    if status in ("FAILED", "READY", "PENDING"):
        return {"failed"}
    return {"failed"} if attempts >= max_attempts else set()  # VIRTUAL_ACCOUNT_ISSUED


def _v2_truth(sandbox: SandboxControl, payment_id: str, store_id: str | None) -> Any:
    try:
        return sandbox.v2.payment(payment_id, store_id)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return None
        raise


def check_v2(
    db: str, sandbox: SandboxControl, stores: dict[str, str], max_attempts: int = 8
) -> V2Report:
    """Every V2 job against its payment (`stores`: each V2 account's store_id), and every
    mutating call the sandbox saw for its Idempotency-Key."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT account, imp_uid, status, attempts, cancellation, error, pay_method, "
            "on_paid = 'refund' OR refund_requested_at IS NOT NULL FROM jobs WHERE api = 'v2'"
        ).fetchall()
    report = V2Report(jobs=len(rows))
    for account, payment_id, status, attempts, cancellation, error, hint, refund_allowed in rows:
        payment = _v2_truth(sandbox, payment_id, stores.get(account))
        tally = payment["tally"] if payment is not None else {}
        if tally.get("cancel_calls", 0) and not refund_allowed:
            report.refunds_unasked.append(f"{payment_id}: refund sent without on_paid=refund")
        report.by_status[status] = report.by_status.get(status, 0) + 1
        if status not in TERMINAL:
            report.non_terminal += 1
            continue
        at = payment and payment["status"]
        if status not in expected_v2(payment, attempts, max_attempts):
            report.wrong_outcome.append(f"{payment_id}: job {status}, V2 payment {at}")
            continue
        if status == "cancelled" and payment is not None:
            ours = tally.get("closes_applied", 0) > 0
            by = (cancellation or {}).get("cancelled_by")
            if ours and by == "upstream":
                report.wrong_outcome.append(f"{payment_id}: closed by us, recorded as upstream")
            elif not ours and by == "service":
                report.wrong_outcome.append(f"{payment_id}: not closed by us, recorded as ours")
        if status == "failed" and at in ("READY", "PENDING"):
            message = str((error or {}).get("message", ""))
            barcode = hint == "cvs" or payment.get("method_kind") == "convenience_store"
            plain = NOTHING_TO_STOP in message or COULD_NOT_LEARN in message
            if not plain and not (barcode and NO_BARCODE_VOID in message):
                report.wrong_outcome.append(f"{payment_id}: failed ({at}) with {message!r}")
    by_key: dict[tuple[str | None, str], set[tuple[str, str]]] = {}
    log = sandbox.v2.calls()
    report.mutating_calls = len(log)
    for call in log:
        if call["key"] is None:
            report.without_key.append(f"{call['payment_id']}: {call['method']} {call['path']}")
        else:
            seen = by_key.setdefault((call["store_id"], call["key"]), set())
            seen.add((call["fingerprint"], call["payment_id"]))
    report.keys_reused = [
        f"{key}: {len(calls)} different calls ({', '.join(sorted({p for _, p in calls}))})"
        for (_, key), calls in sorted(by_key.items(), key=lambda kv: kv[0][1])
        if len(calls) > 1
    ]
    stats = sandbox.v2.stats()
    totals = stats["totals"]
    report.refunds_max = int(stats["max_refunds_applied"])
    report.closes_max = int(stats["max_closes_applied"])
    report.refused_as_reused = int(totals["key_reused"])
    report.overlaps = int(totals["overlaps"])
    report.replays = int(totals["replays"])
    report.outstanding = int(totals["outstanding"])
    report.refunds_requested = int(totals["refunds_requested"])
    report.faults_injected = dict(stats.get("faults_injected", {}))
    report.calls = dict(stats["calls"])
    return report


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
    db: str,
    sandbox: SandboxControl,
    max_attempts: int = 8,
    changed: frozenset[str] = frozenset(),
    v2_stores: dict[str, str] | None = None,
) -> Report:
    """Every job against the truth; the sandbox's counters for double and overlapping calls.
    With `v2_stores` (each PortOne V2 account's store_id), V2 jobs too (check_v2).

    A payment in `changed` was changed behind the service's back: what its job should be is
    reconciliation's (`check_reconciled`), not judged here."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT imp_uid, status, attempts, cancellation, "
            "on_paid = 'refund' OR refund_requested_at IS NOT NULL FROM jobs "
            + ("WHERE api = 'v1'" if v2_stores is not None else "")
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
    if v2_stores is not None:
        v2 = report.v2 = check_v2(db, sandbox, v2_stores, max_attempts)
        report.jobs += v2.jobs
        report.non_terminal += v2.non_terminal
        report.wrong_outcome += v2.wrong_outcome
        report.refunds_unasked += v2.refunds_unasked
        for status, n in v2.by_status.items():
            report.by_status[status] = report.by_status.get(status, 0) + n
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
    # Reconciliation covers iamport accounts; PortOne V2 jobs are check_v2's.
    where = "WHERE api = 'v1'" + ("" if truth is not None else " AND imp_uid = ANY(%(uids)s)")
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
