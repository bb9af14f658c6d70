"""How iamport calls us (confirm_url, notice_url): its bodies read as fields, and the imp_uid they name.

Notifications are not signed, so nothing here is believed beyond the imp_uid: the job's own
lookup decides."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

IMP_UID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


MAX_FIELDS = 64


class BadPayload(ValueError):
    """The body is not a JSON object or a form, or names no valid imp_uid."""


def parse_fields(body: bytes, content_type: str) -> dict[str, Any]:
    """The body as a dict, from JSON or a form (whatever the Content-Type claims)."""
    if not body.strip():
        raise BadPayload("empty body")
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPayload("the body is not UTF-8") from None
    looks_json = "json" in content_type.lower() or decoded.lstrip()[:1] in ("{", "[")
    if looks_json:
        try:
            data = json.loads(decoded)
        except (ValueError, RecursionError):
            raise BadPayload("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadPayload("the body is not a JSON object")
        return data
    pairs = parse_qsl(decoded, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    if not pairs:
        raise BadPayload("the body is neither JSON nor a form")
    return dict(pairs)


def imp_uid_of(fields: dict[str, Any]) -> str:
    """The body's imp_uid, if it looks like one."""
    value = fields.get("imp_uid")
    if not isinstance(value, str) or not IMP_UID.match(value):
        raise BadPayload("imp_uid is missing or malformed")
    return value
