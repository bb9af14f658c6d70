"""jobs: the drift a reconciliation saw between a finished job and its payment at the gateway

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 01:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A nullable column without a default rewrites nothing: the ALTER holds its lock for an instant.
# But it must queue for that lock behind any long reader, and every reader arriving after it
# would queue behind it. With a short lock_timeout we are the one that gives way, and ask
# again, so readers never wait on us for more than a moment.
_ALTER = """
DO $$
BEGIN
  LOOP
    BEGIN
      SET LOCAL lock_timeout = '200ms';
      {statement};
      EXIT;
    EXCEPTION WHEN lock_not_available THEN
      PERFORM pg_sleep(0.05 + random() * 0.1);
    END;
  END LOOP;
END $$
"""


_ACTIONS_BEFORE = "('retry', 'refund', 'replay')"
_ACTIONS = "('retry', 'refund', 'replay', 'clear_drift')"


def _actions_check(allowed: str) -> str:
    # NOT VALID: no scan under the lock; the VALIDATE after it takes none that stops writers.
    return (
        "ALTER TABLE operator_actions DROP CONSTRAINT IF EXISTS ck_operator_actions_action, "
        f"ADD CONSTRAINT ck_operator_actions_action CHECK (action IN {allowed}) NOT VALID"
    )


def upgrade() -> None:
    op.execute(_ALTER.format(statement="ALTER TABLE jobs ADD COLUMN IF NOT EXISTS drift jsonb"))
    # A person clearing a drift record is an operator action like a retry.
    op.execute(_ALTER.format(statement=_actions_check(_ACTIONS)))
    op.execute("ALTER TABLE operator_actions VALIDATE CONSTRAINT ck_operator_actions_action")
    # The console's Drift queue reads the uncleared ones; built without blocking writers.
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobs_drift_open ON jobs (finished_at) "
            "WHERE drift IS NOT NULL AND drift->>'cleared_at' IS NULL"
        )


def downgrade() -> None:
    op.execute("DELETE FROM operator_actions WHERE action = 'clear_drift'")
    op.execute(_ALTER.format(statement=_actions_check(_ACTIONS_BEFORE)))
    op.execute("ALTER TABLE operator_actions VALIDATE CONSTRAINT ck_operator_actions_action")
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_drift_open")
    op.execute(_ALTER.format(statement="ALTER TABLE jobs DROP COLUMN IF EXISTS drift"))
