"""per-tenant limit overrides; an index over each tenant's unfinished jobs

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE_JOB_SQL = "status NOT IN ('ready', 'done', 'failed', 'cancelled')"


def upgrade() -> None:
    """Add tenants.limits (NULL: the defaults) and the partial index the quotas count with."""
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("limits", sa.JSON(), nullable=True))
    op.create_index(
        "ix_jobs_tenant_active",
        "jobs",
        ["tenant_id", "status"],
        postgresql_where=sa.text(ACTIVE_JOB_SQL),
        sqlite_where=sa.text(ACTIVE_JOB_SQL),
    )


def downgrade() -> None:
    """Drop the index and the column."""
    op.drop_index("ix_jobs_tenant_active", table_name="jobs")
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("limits")
