"""Webhook secrets and the Standard Webhooks signature headers."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh signing secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature_header(
    secrets_in_use: Sequence[str], message_id: str, at: datetime, body: str
) -> str:
    """`webhook-signature`: one `v1,…` per secret, space-separated (both while one rotates out)."""
    return " ".join(Webhook(s).sign(message_id, at, body) for s in secrets_in_use)


def headers(
    secrets_in_use: Sequence[str], message_id: str, at: datetime, body: str
) -> dict[str, str]:
    """The headers of one delivery attempt, signed at `at` (an aware datetime)."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature_header(secrets_in_use, message_id, at, body),
    }
