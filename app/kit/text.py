"""Text that may be stored and shown: no NUL or control characters, no lone surrogates; times
that Postgres can hold."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

# Postgres keeps times from 4713 BC to 294276 AD; an event's time must also survive the
# conversion to UTC, which years 1 and 9999 at extreme offsets do not.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)


LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def printable(value: str) -> str:
    # Postgres text cannot hold NUL, and control characters in an operator's view are a trap.
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise ValueError("control characters are not allowed")
    # A lone surrogate is no character: it cannot be stored or encoded as UTF-8.
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise ValueError("lone surrogates are not allowed")
    return value


def representable(value: datetime) -> datetime:
    try:
        in_utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("the time is out of range") from None
    if not EARLIEST <= in_utc <= LATEST:
        raise ValueError("the time is out of range")
    return value


Text = Annotated[str, AfterValidator(printable)]
