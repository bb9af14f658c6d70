"""attempts: the OpenTelemetry trace of the run that made each call

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Nullable and without a default: adding it rewrites nothing, and untraced calls keep null.
def upgrade() -> None:
    op.add_column("attempts", sa.Column("trace_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("attempts", "trace_id")
