"""corpora, their clips, shared models; avatars record their models and corpus opt-in

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 14:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create corpora, corpus_clips and shared_models; add two avatar columns."""
    op.create_table(
        "corpora",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE")),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("deleted_at", TZ, nullable=True),
    )
    op.create_table(
        "corpus_clips",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "corpus_id",
            sa.String(40),
            sa.ForeignKey("corpora.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("identity", sa.String(200), nullable=False),
        sa.Column("speaker", sa.String(200), nullable=False),
        sa.Column("language", sa.String(40), nullable=False),
        sa.Column("licence", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("code", sa.String(60), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("utterances", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("info", sa.JSON(), nullable=False),
        sa.Column("lease_owner", sa.String(80), nullable=True),
        sa.Column("heartbeat_at", TZ, nullable=True),
        sa.Column("enqueued_at", TZ, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("completions", sa.Integer(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("finished_at", TZ, nullable=True),
        sa.UniqueConstraint("corpus_id", "source", name="uq_corpus_clip_source"),
    )
    op.create_index("ix_corpus_clips_corpus_id", "corpus_clips", ["corpus_id"])
    op.create_index("ix_corpus_clips_status", "corpus_clips", ["status"])
    op.create_index("ix_corpus_clips_sha256", "corpus_clips", ["sha256"])
    op.create_table(
        "shared_models",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE")),
        sa.Column("kind", sa.String(60), nullable=False),
        sa.Column("family", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("corpus_id", sa.String(40), nullable=False),
        sa.Column("corpus_name", sa.String(200), nullable=False),
        sa.Column("licences", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("manifest_key", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("deleted_at", TZ, nullable=True),
        sa.UniqueConstraint("kind", "version", name="uq_shared_model_version"),
    )
    op.create_index("ix_shared_models_corpus_id", "shared_models", ["corpus_id"])
    with op.batch_alter_table("avatars") as batch_op:
        batch_op.add_column(sa.Column("models", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("corpus_opt_in", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    """Drop what upgrade added."""
    with op.batch_alter_table("avatars") as batch_op:
        batch_op.drop_column("corpus_opt_in")
        batch_op.drop_column("models")
    op.drop_table("shared_models")
    op.drop_table("corpus_clips")
    op.drop_table("corpora")
