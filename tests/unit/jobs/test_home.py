"""A job's statuses and writes live in app/jobs: this fails when they leak out of it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from app.jobs.status import ALL, JobStatus

ROOT = Path(__file__).resolve().parents[3]
# Payment statuses are iamport's words and share two names with job statuses; the iamport
# client speaks of payments only.
PAYMENT_SIDE = ("app/upstream/iamport/",)
JOB_ONLY = {s.value for s in ALL} - {"cancelled", "failed"}
WRITES = re.compile(
    r"\b(UPDATE\s+(jobs|attempts)\b|INSERT\s+INTO\s+(jobs|attempts)\b|DELETE\s+FROM\s+(jobs|attempts)\b)",
    re.IGNORECASE,
)
SQL_STATUS = re.compile(r"'(" + "|".join(s.value for s in ALL) + r")'")


def offences(source: str, path: str) -> list[str]:
    """Status literals and job/attempt writes in one module's string constants."""
    found = []
    in_jobs = path.startswith("app/jobs/")
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
            continue
        text, where = node.value, f"{path}:{node.lineno}"
        if WRITES.search(text) and path != "app/jobs/store.py":
            found.append(f"{where}: writes jobs/attempts outside app/jobs/store.py")
        if in_jobs or path.startswith(PAYMENT_SIDE):
            continue
        if text in JOB_ONLY:
            found.append(f"{where}: job status literal {text!r}")
        elif SQL_STATUS.search(text) and re.search(r"\bjobs\b", text):
            found.append(f"{where}: job status in SQL")
    return found


def test_the_scanner_finds_what_it_looks_for() -> None:
    planted = 'X = "needs_refund"\nY = "UPDATE jobs SET status = \'failed\'"\n'
    assert len(offences(planted, "app/elsewhere.py")) == 3
    assert offences(planted, "app/jobs/store.py") == []


def test_statuses_and_writes_stay_in_the_jobs_package() -> None:
    found: list[str] = []
    for folder in ("app", "worker"):
        for file in sorted((ROOT / folder).rglob("*.py")):
            rel = file.relative_to(ROOT).as_posix()
            found += offences(file.read_text(), rel)
    assert found == [], "\n".join(found)


def test_every_status_has_a_set() -> None:
    from app.jobs.status import TERMINAL, WAITING

    assert WAITING | TERMINAL == set(JobStatus) and not WAITING & TERMINAL
