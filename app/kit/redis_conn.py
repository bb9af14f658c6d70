"""The process-wide Redis client (token cache, rate limiter, readiness)."""

from __future__ import annotations

from functools import lru_cache

import redis

from app.config import get_settings


@lru_cache
def get_redis() -> redis.Redis:
    """A pooled client with short timeouts: a Redis outage must not hang a request."""
    settings = get_settings()
    settings.require_urls()
    return redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=1, socket_timeout=2, health_check_interval=10
    )
