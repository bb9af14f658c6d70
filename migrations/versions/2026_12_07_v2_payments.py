"""jobs: PortOne V2 payment ids (up to 200 characters) and the kind of gateway each job is for

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A V2 paymentId is up to 200 characters; the column keeps its name (imp_uid is the payment
# id of every job). Widening a varchar rewrites nothing and rebuilds no index, and a column
# added with a constant default is instant, so the lock both need is held for a moment only;
# a short lock_timeout makes us give way to readers rather than queue them behind us, and we
# ask again until we hold it.
_LOCK_JOBS = """
DO $$
BEGIN
  LOOP
    BEGIN
      SET LOCAL lock_timeout = '200ms';
      LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE;
      EXIT;
    EXCEPTION WHEN lock_not_available THEN
      PERFORM pg_sleep(0.05 + random() * 0.1);
    END;
  END LOOP;
END $$
"""


def upgrade() -> None:
    op.execute(_LOCK_JOBS)
    op.alter_column(
        "jobs", "imp_uid", type_=sa.String(length=200), existing_type=sa.String(length=64)
    )
    op.add_column(
        "jobs", sa.Column("api", sa.String(length=2), server_default="v1", nullable=False)
    )
    # NOT VALID then VALIDATE: the check of existing rows takes no lock that stops writers.
    op.execute("ALTER TABLE jobs ADD CONSTRAINT ck_jobs_api CHECK (api IN ('v1', 'v2')) NOT VALID")
    op.execute("ALTER TABLE jobs VALIDATE CONSTRAINT ck_jobs_api")


def downgrade() -> None:
    # Only possible while no job is a V2 one: their ids may not fit the old width.
    op.execute(_LOCK_JOBS)
    op.execute("ALTER TABLE jobs DROP CONSTRAINT ck_jobs_api")
    op.drop_column("jobs", "api")
    op.alter_column(
        "jobs", "imp_uid", type_=sa.String(length=64), existing_type=sa.String(length=200)
    )
