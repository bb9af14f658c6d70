import psycopg
import redis


def test_postgres_is_migrated(clean_db: str) -> None:
    with psycopg.connect(clean_db) as conn:
        tables = {
            r[0] for r in conn.execute("select tablename from pg_tables where schemaname='public'")
        }
    assert {"events", "jobs", "event_jobs", "attempts", "api_keys", "alembic_version"} <= tables


def test_jobs_pages_keep_room_for_the_next_versions(clean_db: str) -> None:
    with psycopg.connect(clean_db) as conn:
        row = conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'jobs'").fetchone()
    assert row == (["fillfactor=70"],)


def test_redis_answers(clean_redis: str) -> None:
    assert redis.Redis.from_url(clean_redis).ping()
