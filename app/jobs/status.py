"""The job statuses: one enum, and the sets every statement, schema and metric derives from."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # committed, waiting for a worker
    RUNNING = "running"  # a worker holds its lease
    RETRY_WAIT = "retry_wait"  # runs again at next_attempt_at
    CANCELLED = "cancelled"  # the barcode or virtual account is cancelled at iamport
    NEEDS_REFUND = "needs_refund"  # paid before we could block it; a person decides
    REFUNDED = "refunded"  # paid, and refunded in full by us
    FAILED = "failed"  # refused for good, or attempts ran out


WAITING: frozenset[JobStatus] = frozenset(
    {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRY_WAIT}
)
TERMINAL: frozenset[JobStatus] = frozenset(set(JobStatus) - WAITING)
ALL: tuple[JobStatus, ...] = tuple(JobStatus)


def sql_list(statuses: Iterable[JobStatus]) -> str:
    """`('a', 'b')` for a SQL IN list; statuses are enum values, never user input."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


WAITING_SQL = f"status IN {sql_list(WAITING)}"
TERMINAL_SQL = f"status IN {sql_list(TERMINAL)}"
