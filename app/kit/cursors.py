"""Opaque page cursors for every list that is newest first by (a time, a unique key).

A cursor is the position of the last row shown, the very key the list is ordered by: the next
page starts strictly after it, so rows inserted meanwhile (newer, hence before the cursor)
neither shift the pages nor show up twice. Each list has its own kind, so a cursor of one is
refused by another. Opaque to callers, strictly parsed here: anything that is not a cursor we
made is a 400 (InvalidCursor), never a 500.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from app.kit.errors import InvalidCursor

K = TypeVar("K")
MAX_CURSOR_CHARS = 256


def encode(kind: str, at: datetime, key: object) -> str:
    """A cursor of `kind` pointing just after the row (at, key)."""
    raw = f"{kind}|{at.isoformat()}|{key}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(kind: str, cursor: str, parse_key: Callable[[str], K]) -> tuple[datetime, K]:
    """The position a cursor of `kind` names; InvalidCursor for anything else."""
    bad = InvalidCursor("the cursor is not one this API returned; start again without it")
    if not cursor or len(cursor) > MAX_CURSOR_CHARS or not cursor.isascii():
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        found, at, key = raw.decode("ascii").split("|", 2)
        if found != kind or not key:
            raise ValueError(found)
        when = datetime.fromisoformat(at)
        parsed = parse_key(key)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if when.tzinfo is None:
        raise bad
    return when, parsed
