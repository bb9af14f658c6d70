"""The PortOne V2 REST client: the upstream contract over api.portone.io."""

from app.upstream.portone.client import PortOneClient, classify
from app.upstream.portone.keys import idempotency_key
from app.upstream.portone.mapping import to_payment

__all__ = ["PortOneClient", "classify", "idempotency_key", "to_payment"]
