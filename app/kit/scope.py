"""Which accounts' rows a read may show, as one SQL condition every query shares.

None shows every account (an operator key); a sequence shows only those accounts (a key bound
to them, or a filter). An empty sequence shows nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

Accounts = Sequence[str] | None

_IN_ACCOUNTS = "(%(accounts)s::text[] IS NULL OR {col} = ANY(%(accounts)s::text[]))"


def in_accounts(column: str) -> str:
    """The SQL condition that `column` is one of %(accounts)s (or that it is NULL: all)."""
    return _IN_ACCOUNTS.format(col=column)


def as_list(accounts: Accounts) -> list[str] | None:
    """The %(accounts)s parameter."""
    return None if accounts is None else list(accounts)
