"""Forget process-wide cached objects so a test's environment takes effect."""

from __future__ import annotations


def reset_caches() -> None:
    from app import config
    from app.kit import db, dispatch, redis_conn

    config.get_settings.cache_clear()
    redis_conn.get_redis.cache_clear()
    dispatch.reset()
    db.close_pool()
