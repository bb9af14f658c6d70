"""Prometheus metrics. (Placeholder interface; the full registry is built in issue 5.)"""

from __future__ import annotations

from typing import Any


def observe_upstream(record: Any) -> None:
    """Count one upstream call by call and result, and time it."""


def job_finished(status: str) -> None:
    """Count a job reaching a terminal status."""
