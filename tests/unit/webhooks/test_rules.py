"""The pure rules of webhooks: URLs and addresses, backoff, what an attempt leads to, signing."""

from __future__ import annotations

import base64
import ipaddress
import random
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from app.webhooks import delivery, signing, urls


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fc00::1", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_address_rules(address: str, public: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert urls.address_allowed(ip, allow_private=False) is public
    assert urls.address_allowed(ip, allow_private=True) is True


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/",
        "https://a\x00b/",
        "https://exa mple.com/",
        "https://ex\u00e4mple.com/",
        "https://h/" + "x" * 2100,
        "https://u@example.com/",
        "https://example.com/#frag",
        "https://example.com:0x1/",
    ],
)
def test_urls_refused_by_their_text(url: str) -> None:
    with pytest.raises(urls.UrlRefused):
        urls.parse(url, allow_private=False)


def test_http_only_when_private_allowed() -> None:
    assert urls.parse("http://localhost:8080/x", allow_private=True) == ("http", "localhost", 8080)
    assert urls.parse("https://example.com/x", allow_private=False) == ("https", "example.com", 443)


def test_loopback_names_refused() -> None:
    with pytest.raises(urls.UrlRefused):
        urls.resolve("localhost", 443, allow_private=False)
    assert urls.resolve("localhost", 443, allow_private=True)


def test_backoff_is_full_jitter_doubling_and_capped() -> None:
    rng = random.Random(1)
    for attempts in range(1, 40):
        ceiling = min(100.0, 5.0 * 2 ** (attempts - 1))
        delays = [delivery.retry_delay(attempts, 5.0, 100.0, rng) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # spread over the whole range, not a fixed step
    assert delivery.retry_delay(10_000, 5.0, 36000.0, rng) <= 36000.0


def test_next_status() -> None:
    ok = delivery.AttemptResult("delivered", 200, None, 3)
    bad = delivery.AttemptResult("http_error", 500, "HTTP 500", 3)
    assert delivery.next_status(ok, 12, 12) == "delivered"
    assert delivery.next_status(bad, 11, 12) == "pending"
    assert delivery.next_status(bad, 12, 12) == "failed"


def test_secrets_and_signatures() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert signing.new_secret() != secret
    old = signing.new_secret()
    at = datetime.now(UTC)
    headers = signing.headers([secret, old], "msg_1", at, '{"a":1}')
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    first, second = headers["webhook-signature"].split(" ")
    assert first.startswith("v1,") and second.startswith("v1,")
    assert Webhook(secret).verify('{"a":1}', headers) == {"a": 1}
    assert Webhook(old).verify('{"a":1}', headers) == {"a": 1}
    assert Webhook(secret).verify('{"a":1}', {**headers, "webhook-signature": first})
