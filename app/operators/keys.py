"""API keys: random secrets shown once, stored as sha256 hashes, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection, Connection
from psycopg.rows import dict_row

from app.kit.errors import Unauthenticated, UnknownAccount

KEY_PREFIX = "sk"
DEFAULT_ACCOUNT = "default"  # the account of a deployment without ACCOUNTS_FILE


class Scope(StrEnum):
    EVENTS_WRITE = "events:write"
    JOBS_READ = "jobs:read"
    JOBS_WRITE = "jobs:write"
    WEBHOOKS_WRITE = "webhooks:write"


@dataclass(frozen=True)
class Caller:
    key_id: uuid.UUID
    name: str
    scopes: frozenset[str]
    # None: an operator key, every account; else the only accounts it sees and changes.
    accounts: frozenset[str] | None = None

    def sees(self, account: str) -> bool:
        return self.accounts is None or account in self.accounts

    def visible(self, wanted: str | None = None) -> tuple[str, ...] | None:
        """The accounts a read may show: `wanted` alone if given, else all of this key's (None:
        every account). Another account's is shown as nothing, as if it had no rows."""
        if wanted is not None:
            return (wanted,) if self.sees(wanted) else ()
        return None if self.accounts is None else tuple(sorted(self.accounts))

    def home(self) -> str:
        """The account meant when none is named: the key's only account, else `default`."""
        if self.accounts is not None and len(self.accounts) == 1:
            return next(iter(self.accounts))
        return DEFAULT_ACCOUNT

    def account_for(self, wanted: str | None) -> str:
        """The account a write is for (`wanted`, else home()); UnknownAccount (422) if this
        key may not write there."""
        account = wanted if wanted is not None else self.home()
        if not self.sees(account):
            raise UnknownAccount(f"this key is not bound to account {account}")
        return account


@dataclass(frozen=True)
class NewKey:
    id: uuid.UUID
    name: str
    scopes: list[str]
    accounts: list[str] | None
    key: str  # the only time the secret exists outside the caller's hands


def _hash(secret: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is enough (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(key: str) -> tuple[str, str] | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def create_key(
    conn: Connection[Any], name: str, scopes: list[str], accounts: list[str] | None = None
) -> NewKey:
    """Store a new key's hash and return the key itself, once. `accounts`: the accounts it is
    bound to (None or empty: an operator key, every account); the caller checks they exist."""
    unknown = set(scopes) - {s.value for s in Scope}
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown))}")
    bound = sorted(set(accounts)) if accounts else None
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = conn.execute(
        "INSERT INTO api_keys (name, prefix, secret_hash, scopes, accounts) "
        "VALUES (%(n)s, %(p)s, %(h)s, %(s)s, %(a)s) RETURNING id",
        {"n": name, "p": prefix, "h": _hash(secret), "s": sorted(set(scopes)), "a": bound},
    ).fetchone()
    assert row is not None
    key = f"{KEY_PREFIX}_{prefix}_{secret}"
    return NewKey(id=row[0], name=name, scopes=sorted(set(scopes)), accounts=bound, key=key)


def list_keys(conn: Connection[Any]) -> list[dict[str, Any]]:
    """Every key's public facts (never its hash)."""
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            "SELECT id, name, prefix, scopes, accounts, created_at, revoked_at FROM api_keys "
            "ORDER BY created_at"
        )
        .fetchall()
    )


def revoke_key(conn: Connection[Any], key_id_or_prefix: str) -> bool:
    """Revoke a key by id or prefix; it stops working with the next request."""
    row = conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE revoked_at IS NULL "
        "AND (prefix = %(v)s OR id::text = %(v)s) RETURNING id",
        {"v": key_id_or_prefix},
    ).fetchone()
    return row is not None


KEY_ROW = (
    "SELECT id, name, secret_hash, scopes, accounts, revoked_at FROM api_keys WHERE prefix = %s"
)


def _key_of(header: str | None) -> tuple[str, str]:
    """The (prefix, secret) an `Authorization: Bearer` header carries, or 401."""
    if not header:
        raise Unauthenticated("an API key is required: Authorization: Bearer <key>")
    scheme, _, key = header.partition(" ")
    parts = _split(key.strip()) if scheme.lower() == "bearer" else None
    if parts is None:
        raise Unauthenticated("the API key is malformed or unknown")
    return parts


def _caller(row: Any, secret: str) -> Caller:
    """The caller whose key row this is, if the secret matches and the key stands; or 401."""
    # Compare even when the prefix is unknown, so timing tells nothing.
    expected = row["secret_hash"] if row is not None else _hash("")
    ok = hmac.compare_digest(expected, _hash(secret))
    if row is None or not ok or row["revoked_at"] is not None:
        raise Unauthenticated("the API key is malformed or unknown")
    bound = row["accounts"]
    return Caller(
        key_id=row["id"],
        name=row["name"],
        scopes=frozenset(row["scopes"]),
        accounts=frozenset(bound) if bound is not None else None,
    )


async def authenticate(conn: AsyncConnection[Any], header: str | None) -> Caller:
    """The caller behind an `Authorization: Bearer` header, or 401. Read on every request (a
    revoked key stops working at once), on the event loop: no worker thread is taken."""
    prefix, secret = _key_of(header)
    cur = conn.cursor(row_factory=dict_row)
    row = await (await cur.execute(KEY_ROW, (prefix,))).fetchone()
    return _caller(row, secret)
