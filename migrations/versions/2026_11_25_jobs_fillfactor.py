"""jobs: leave a third of each page free, so a job's updates stay on its page

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-25 21:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# A job row is updated three times a run (claim, write-ahead, outcome). With room on its page
# each new version lands beside the old one, and Postgres need not look for space elsewhere.
# It applies to pages written from now on; existing pages keep their layout until rewritten.
def upgrade() -> None:
    op.execute("ALTER TABLE jobs SET (fillfactor = 70)")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs RESET (fillfactor)")
