"""accounts: every event, job and link belongs to one account; keys and endpoints may be bound

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 19:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Existing rows are the one account a deployment had: `default`. A column added with a
# constant default is instant (Postgres keeps the default in the catalogue, no rewrite), and
# the new unique indexes are built CONCURRENTLY, so readers are never blocked and writers only
# for the moment a constraint is swapped. Code older than this revision cannot write after
# it (its ON CONFLICT names the old keys): deploy the new code right after migrating.
_ACCOUNT = "account"


# Every table this revision alters, locked at once before anything is altered: a reader holding
# one of them while it waits for another would otherwise deadlock with us, and Postgres would
# end the reader's query. A short lock_timeout makes us the one that gives way (before the
# deadlock check, a second in), and we ask again until we hold all three.
_LOCK_ALL = """
DO $$
BEGIN
  LOOP
    BEGIN
      SET LOCAL lock_timeout = '200ms';
      LOCK TABLE jobs, event_jobs, events IN ACCESS EXCLUSIVE MODE;
      EXIT;
    EXCEPTION WHEN lock_not_available THEN
      PERFORM pg_sleep(0.05 + random() * 0.1);
    END;
  END LOOP;
END $$
"""


def _account_column() -> sa.Column[str]:
    return sa.Column(_ACCOUNT, sa.String(length=40), server_default="default", nullable=False)


def upgrade() -> None:
    op.execute(_LOCK_ALL)
    op.add_column("events", _account_column())
    op.add_column("jobs", _account_column())
    op.add_column("event_jobs", _account_column())
    op.add_column(
        "api_keys", sa.Column("accounts", postgresql.ARRAY(sa.String(length=40)), nullable=True)
    )
    op.add_column("webhook_endpoints", sa.Column(_ACCOUNT, sa.String(length=40), nullable=True))
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_jobs_account "
            "ON jobs (account, imp_uid)"
        )
        op.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS pk_events_account "
            "ON events (account, event_id)"
        )
        op.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS pk_event_jobs_account "
            "ON event_jobs (account, event_id, job_id)"
        )
    op.execute(_LOCK_ALL)
    op.drop_constraint("uq_jobs_imp_uid", "jobs", type_="unique")
    op.execute("ALTER TABLE jobs ADD CONSTRAINT uq_jobs_account UNIQUE USING INDEX uq_jobs_account")
    op.drop_constraint("fk_event_jobs_event_id_events", "event_jobs", type_="foreignkey")
    op.drop_constraint("pk_event_jobs", "event_jobs", type_="primary")
    op.drop_constraint("pk_events", "events", type_="primary")
    op.execute("ALTER INDEX pk_events_account RENAME TO pk_events")
    op.execute("ALTER TABLE events ADD CONSTRAINT pk_events PRIMARY KEY USING INDEX pk_events")
    op.execute("ALTER INDEX pk_event_jobs_account RENAME TO pk_event_jobs")
    op.execute(
        "ALTER TABLE event_jobs ADD CONSTRAINT pk_event_jobs PRIMARY KEY USING INDEX pk_event_jobs"
    )
    # NOT VALID then VALIDATE: the check of existing links takes no lock that stops writers.
    op.execute(
        "ALTER TABLE event_jobs ADD CONSTRAINT fk_event_jobs_account_events "
        "FOREIGN KEY (account, event_id) REFERENCES events (account, event_id) NOT VALID"
    )
    op.execute("ALTER TABLE event_jobs VALIDATE CONSTRAINT fk_event_jobs_account_events")


def downgrade() -> None:
    # Only possible while every row is `default`: names may repeat across accounts otherwise.
    op.execute(_LOCK_ALL)
    op.drop_constraint("fk_event_jobs_account_events", "event_jobs", type_="foreignkey")
    op.drop_constraint("pk_event_jobs", "event_jobs", type_="primary")
    op.drop_constraint("pk_events", "events", type_="primary")
    op.create_primary_key("pk_events", "events", ["event_id"])
    op.create_primary_key("pk_event_jobs", "event_jobs", ["event_id", "job_id"])
    op.create_foreign_key(
        "fk_event_jobs_event_id_events", "event_jobs", "events", ["event_id"], ["event_id"]
    )
    op.drop_constraint("uq_jobs_account", "jobs", type_="unique")
    op.create_unique_constraint("uq_jobs_imp_uid", "jobs", ["imp_uid"])
    op.drop_column("webhook_endpoints", _ACCOUNT)
    op.drop_column("api_keys", "accounts")
    op.drop_column("event_jobs", _ACCOUNT)
    op.drop_column("jobs", _ACCOUNT)
    op.drop_column("events", _ACCOUNT)
