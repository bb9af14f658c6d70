"""jobs: settle time of unanswered calls, virtual accounts, refunds, bounded idle runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 15:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES_0001 = "'queued', 'running', 'retry_wait', 'cancelled', 'needs_refund', 'failed'"
STATUSES_0002 = STATUSES_0001 + ", 'refunded'"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("uncertain_call", sa.String(8), nullable=True))
    op.add_column("jobs", sa.Column("last_call_at", sa.DateTime(timezone=True), nullable=True))
    # A job that was uncertain under the old flag stays uncertain about a cancel, settled
    # from its last cancel attempt.
    op.execute(
        "UPDATE jobs SET uncertain_call = 'cancel', last_call_at = "
        "(SELECT max(started_at) FROM attempts a WHERE a.job_id = jobs.id AND a.call = 'cancel') "
        "WHERE uncertain"
    )
    op.drop_column("jobs", "uncertain")
    op.create_check_constraint(
        op.f("ck_jobs_uncertain_call"), "jobs", "uncertain_call IN ('cancel', 'refund')"
    )
    op.add_column(
        "jobs", sa.Column("pay_method", sa.String(8), server_default="cvs", nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_jobs_pay_method"), "jobs", "pay_method IN ('cvs', 'vbank')")
    op.add_column("jobs", sa.Column("on_paid", sa.String(8), server_default="hold", nullable=False))
    op.create_check_constraint(
        op.f("ck_jobs_on_paid"), "jobs", "on_paid IN ('hold', 'refund')")
    op.add_column("jobs", sa.Column("reason", sa.String(256), nullable=True))
    op.add_column("jobs", sa.Column("refund", postgresql.JSONB(), nullable=True))
    op.add_column(
        "jobs", sa.Column("refund_requested_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "jobs", sa.Column("look_first", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column("jobs", sa.Column("idle_runs", sa.Integer(), server_default="0", nullable=False))
    op.add_column("jobs", sa.Column("retried_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f("ck_jobs_status"), "jobs", type_="check")
    op.create_check_constraint(
        op.f("ck_jobs_status"), "jobs", f"status IN ({STATUSES_0002})")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_jobs_status"), "jobs", type_="check")
    op.execute("UPDATE jobs SET status = 'cancelled' WHERE status = 'refunded'")
    op.create_check_constraint(
        op.f("ck_jobs_status"), "jobs", f"status IN ({STATUSES_0001})")
    for name in ("uncertain_call", "pay_method", "on_paid"):
        op.drop_constraint(op.f(f"ck_jobs_{name}"), "jobs", type_="check")
    op.add_column(
        "jobs", sa.Column("uncertain", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.execute("UPDATE jobs SET uncertain = uncertain_call IS NOT NULL")
    for column in (
        "retried_at", "idle_runs", "look_first", "refund_requested_at", "refund", "reason",
        "on_paid", "pay_method", "last_call_at", "uncertain_call",
    ):
        op.drop_column("jobs", column)
