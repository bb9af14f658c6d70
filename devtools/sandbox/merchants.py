"""The sandbox's merchant accounts, their tokens and their counters.

A merchant is (imp_key, imp_secret, tier or none). An agency's sub-merchants are reached with
the agency's own imp_key/imp_secret plus a `Tier` header, so every tier of one imp_key shares its
secret and its token: a token names the credentials, the `Tier` header of each call names the
sub-merchant. What a caller speaks as is therefore (the token's imp_key, the Tier header sent).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_KEY = "sandbox_key"
DEFAULT_SECRET = "sandbox_secret"  # noqa: S105 - the sandbox's well-known default
TIER = re.compile(r"[A-Z0-9]{3}")


def key_id(imp_key: str) -> str:
    """A short, non-reversible name for an imp_key, computed as the service names its accounts
    (app.upstream.iamport.token.key_id), so the call log and the service's logs can be matched
    without either showing the key."""
    return hashlib.sha256(imp_key.encode()).hexdigest()[:24]


def merchant_id(imp_key: str, tier: str | None = None) -> str:
    """How the control API names a merchant: its key_id, and `/TIER` for a sub-merchant."""
    return key_id(imp_key) + (f"/{tier}" if tier else "")


@dataclass(frozen=True, slots=True)
class Caller:
    """Whom a call speaks as: the imp_key of its token (None: no valid token) and its Tier."""

    imp_key: str | None
    tier: str | None = None


@dataclass(frozen=True, slots=True)
class Merchant:
    """One account; a tiered one's imp_key/imp_secret are its agency's."""

    imp_key: str
    imp_secret: str = field(repr=False)
    tier: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.imp_key, str) or not self.imp_key:
            raise ValueError("imp_key must be a non-empty string")
        if not isinstance(self.imp_secret, str) or not self.imp_secret:
            raise ValueError("imp_secret must be a non-empty string")
        if self.tier is not None and (
            not isinstance(self.tier, str) or not TIER.fullmatch(self.tier)
        ):
            raise ValueError("tier must be 3 upper-case letters or digits, or null")

    @property
    def id(self) -> str:
        return merchant_id(self.imp_key, self.tier)

    @property
    def caller(self) -> Caller:
        return Caller(self.imp_key, self.tier)

    def public(self) -> dict[str, Any]:
        """What the control API shows: never the secret."""
        return {
            "id": self.id,
            "key_id": key_id(self.imp_key),
            "imp_key": self.imp_key,
            "tier": self.tier,
        }


def parse_merchant(text: str) -> Merchant:
    """`KEY:SECRET` or `KEY:SECRET:TIER` (the CLI's form); ValueError otherwise. A secret that
    contains `:` cannot be written this way: add that merchant through the control API."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"expected KEY:SECRET or KEY:SECRET:TIER, got {len(parts)} parts")
    return Merchant(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def merchant_from_spec(spec: Any) -> Merchant:
    """A control-API object `{imp_key, imp_secret, tier?}`; ValueError if it is not one."""
    if not isinstance(spec, dict):
        raise ValueError("each merchant must be an object")
    unknown = set(spec) - {"imp_key", "imp_secret", "tier"}
    if unknown:
        raise ValueError(f"unknown merchant fields: {sorted(unknown)}")
    return Merchant(spec.get("imp_key", ""), spec.get("imp_secret", ""), spec.get("tier"))


class Merchants:
    """The accounts the sandbox knows; the first is the default one."""

    def __init__(self, default: Merchant, others: Iterable[Merchant] = ()) -> None:
        self.default = default
        self._by_caller: dict[tuple[str, str | None], Merchant] = {}
        self._secrets: dict[str, str] = {}
        self._key_ids: dict[str, str] = {}
        for merchant in (default, *others):
            self.add(merchant)

    def __iter__(self) -> Iterator[Merchant]:
        return iter(self._by_caller.values())

    def add(self, merchant: Merchant) -> Merchant:
        """Add one (adding it again changes nothing); ValueError when its imp_key is known with
        another secret: an agency has one imp_secret for all its tiers."""
        known = self._secrets.get(merchant.imp_key)
        if known is not None and not secrets.compare_digest(known, merchant.imp_secret):
            raise ValueError("this imp_key is known with another imp_secret")
        self._secrets[merchant.imp_key] = merchant.imp_secret
        self._key_ids[merchant.imp_key] = key_id(merchant.imp_key)
        return self._by_caller.setdefault((merchant.imp_key, merchant.tier), merchant)

    def check(self, merchants: Iterable[Merchant]) -> None:
        """ValueError if adding all of `merchants` would fail (so a batch is all or nothing)."""
        trial = Merchants(self.default, self)
        for merchant in merchants:
            trial.add(merchant)

    def credentials_ok(self, imp_key: Any, imp_secret: Any) -> bool:
        if not isinstance(imp_key, str) or not isinstance(imp_secret, str):
            return False
        known = self._secrets.get(imp_key)
        return known is not None and secrets.compare_digest(known, imp_secret)

    def find(self, caller: Caller) -> Merchant | None:
        """The merchant a caller speaks as, if it is one."""
        if caller.imp_key is None:
            return None
        return self._by_caller.get((caller.imp_key, caller.tier))

    def key_id(self, imp_key: Any) -> str | None:
        """The short id of a known imp_key; None for one we do not know (it may be a typo'd
        secret: never hash and log what might be one)."""
        return self._key_ids.get(imp_key) if isinstance(imp_key, str) else None


class Tokens:
    """One token per imp_key, shared by all its tiers, as iamport intends: the same token until
    under a minute is left, then pushed back 5 minutes."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.clock = clock
        self.issued: dict[str, tuple[str, float]] = {}  # token -> (imp_key, expiry)
        self.current: dict[str, str] = {}  # imp_key -> its token

    def get(self, imp_key: str) -> dict[str, Any]:
        now = self.clock()
        token = self.current.get(imp_key)
        held = self.issued.get(token) if token is not None else None
        if token is None or held is None or held[1] <= now:
            if token is not None:
                self.issued.pop(token, None)
            token = secrets.token_hex(20)
            expiry = now + self.ttl
            self.current[imp_key] = token
        else:
            expiry = held[1] + 300 if held[1] - now < 60 else held[1]
        self.issued[token] = (imp_key, expiry)
        return {"access_token": token, "now": int(now), "expired_at": int(expiry)}

    def key_of(self, token: str | None) -> str | None:
        """The imp_key a valid token was issued to; None for no, an unknown or an expired one."""
        if not token:
            return None
        held = self.issued.get(token)
        return held[0] if held is not None and held[1] > self.clock() else None

    def expire(self, imp_key: str | None = None) -> None:
        """The tokens of `imp_key` (None: of every key) stop working."""
        if imp_key is None:
            self.issued.clear()
            self.current.clear()
            return
        self.current.pop(imp_key, None)
        for token in [t for t, (k, _) in self.issued.items() if k == imp_key]:
            del self.issued[token]


@dataclass(slots=True)
class MerchantStats:
    """What one merchant's calls and payments saw."""

    calls: int = 0  # calls that spoke as this merchant (its credentials, its Tier or none)
    cancels_applied: int = 0  # DELETE /cvs and DELETE /vbanks applied to its payments
    refunds_applied: int = 0
    not_its_payment: int = 0  # its calls that named another merchant's payment: not found
    faults_injected: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
