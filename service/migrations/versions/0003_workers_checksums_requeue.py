"""worker liveness, weights checksums, message re-sends, error codes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per worker process, stamped while it lives: /readyz and the re-enqueue sweep read it.
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    # Nullable: models registered before checksums were recorded have none.
    op.add_column("models", sa.Column("weights_sha256", sa.String(64), nullable=True))
    # When the job's broker message was last sent; a queued job's message may be re-sent after it.
    op.add_column("jobs", sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
    # Why a failed job failed, for machines: a user error's code, "internal_error", "worker_lost", "time_limit".
    op.add_column("jobs", sa.Column("error_code", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("error_code")
        batch.drop_column("enqueued_at")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("weights_sha256")
    op.drop_table("workers")
