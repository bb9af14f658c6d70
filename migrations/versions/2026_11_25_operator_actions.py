"""operator actions; indexes for the console (events by time, attempts by time)

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-25 14:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("key_id", sa.UUID(), nullable=False),
        sa.Column("key_name", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column("endpoint_id", sa.String(length=64), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.CheckConstraint(
            "action IN ('retry', 'refund', 'replay')", name=op.f("ck_operator_actions_action")
        ),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_operator_actions_key_id_api_keys")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_operator_actions_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_actions")),
    )
    op.create_index("ix_operator_actions_job_id", "operator_actions", ["job_id", "id"])
    op.create_index(
        "ix_events_received",
        "events",
        [sa.text("received_at DESC"), sa.text("event_id DESC")],
    )
    op.create_index("ix_attempts_started_at", "attempts", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_attempts_started_at", table_name="attempts")
    op.drop_index("ix_events_received", table_name="events")
    op.drop_index("ix_operator_actions_job_id", table_name="operator_actions")
    op.drop_table("operator_actions")
