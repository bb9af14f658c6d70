"""Plain helper functions that make test data."""

from __future__ import annotations

import itertools
from typing import Any

from app.kit.db import unit_of_work
from app.operators.keys import create_key

_seq = itertools.count(1)
ALL_SCOPES = ["events:write", "jobs:read", "jobs:write", "webhooks:write"]


def api_key(*scopes: str, accounts: list[str] | None = None) -> str:
    with unit_of_work() as uow:
        name = f"test-{next(_seq)}"
        return create_key(uow.conn, name, list(scopes or ALL_SCOPES), accounts).key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def event(
    n_payments: int = 1, *, event_id: str | None = None, prefix: str | None = None, **extra: Any
) -> dict[str, Any]:
    i = next(_seq)
    prefix = prefix or f"imps_{i:06d}"
    body: dict[str, Any] = {
        "event_id": event_id or f"evt-{i}",
        "sku": "SKU-123",
        "reason": "out of stock",
        "occurred_at": "2026-11-25T06:00:00Z",
        "payments": [
            {"imp_uid": f"{prefix}_{k}", "merchant_uid": f"order-{i}-{k}"}
            for k in range(n_payments)
        ],
    }
    body.update(extra)
    return body
