"""The operators' shapes: who did what, who is calling, the recent activity."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel


class ActionPublic(BaseModel):
    at: datetime
    action: Literal["retry", "refund", "replay", "clear_drift"]
    key_id: uuid.UUID
    key_name: str
    job_id: uuid.UUID | None
    endpoint_id: str | None
    detail: dict[str, Any] | None


class ActionList(BaseModel):
    items: list[ActionPublic]


class CallerPublic(BaseModel):
    id: uuid.UUID
    name: str
    scopes: list[str]
    # None: an operator key, every account.
    accounts: list[str] | None = None


class MinuteCounts(BaseModel):
    minute: datetime
    counts: dict[str, int]


class UpstreamCalls(BaseModel):
    call: str
    outcome: str
    count: int


class UpstreamLatency(BaseModel):
    call: str
    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None


class Activity(BaseModel):
    window_minutes: int
    finished_per_minute: list[MinuteCounts]
    # Calls and latency cover the newest calls of the window, at most a fixed number of them.
    upstream_calls: list[UpstreamCalls]
    upstream_latency: list[UpstreamLatency]
    upstream_sample_size: int
    upstream_sample_capped: bool
    upstream_since: datetime | None
