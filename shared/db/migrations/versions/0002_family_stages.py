"""avatar source kind and per-job stage lists (renderer families name their own stages)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 11:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add avatars.source and jobs.stages; rows made before keep the video pipeline."""
    with op.batch_alter_table("avatars") as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=10), nullable=False, server_default="video")
        )
    with op.batch_alter_table("jobs") as batch_op:
        # NULL: a job created before families named their stages (the fixed tables apply).
        batch_op.add_column(sa.Column("stages", sa.JSON(), nullable=True))
    # The mean-frame family was called `still`; its name now says what it renders.
    op.execute("UPDATE avatars SET renderer = 'meanframe' WHERE renderer = 'still'")


def downgrade() -> None:
    """Drop the columns again and give the mean-frame family its old name."""
    op.execute("UPDATE avatars SET renderer = 'still' WHERE renderer = 'meanframe'")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("stages")
    with op.batch_alter_table("avatars") as batch_op:
        batch_op.drop_column("source")
