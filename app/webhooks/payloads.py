"""Message bodies: the Job and Event shapes of the API, as the transition's transaction sees them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.events.queries import get_event as load_event
from app.events.schemas import EventPublic
from app.jobs.queries import get_job as load_job
from app.jobs.schemas import JobPublic

__all__ = ["body", "load_event", "load_job"]


def body(event_type: str, data: JobPublic | EventPublic) -> dict[str, Any]:
    """`{"type", "timestamp", "data"}`, JSON-ready; the timestamp is the transition's."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {"type": event_type, "timestamp": now, "data": data.model_dump(mode="json")}
