"""initial: channel links, Cost Explorer queries, audit log

Revision ID: 0001
Revises:
Create Date: 2026-11-23 12:29:55.739726
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_entry",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=True),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entry")),
    )
    op.create_index(op.f("ix_audit_entry_at"), "audit_entry", ["at"])
    op.create_index(
        op.f("ix_audit_entry_team_id_channel_id_at"),
        "audit_entry",
        ["team_id", "channel_id", "at"],
    )

    op.create_table(
        "channel_link",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=24), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_link")),
        sa.UniqueConstraint(
            "team_id",
            "channel_id",
            "org_id",
            name=op.f("uq_channel_link_team_id_channel_id_org_id"),
        ),
    )
    op.create_index(op.f("ix_channel_link_org_id"), "channel_link", ["org_id"])

    op.create_table(
        "cost_query",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=24), nullable=False),
        sa.Column("team_id", sa.String(length=64), nullable=False),
        sa.Column("channel_id", sa.String(length=64), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("message_ts", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'done', 'failed', 'expired')",
            name=op.f("ck_cost_query_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cost_query")),
        sa.UniqueConstraint("token", name=op.f("uq_cost_query_token")),
    )
    op.create_index(
        op.f("ix_cost_query_status_next_poll_at"), "cost_query", ["status", "next_poll_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_cost_query_status_next_poll_at"), table_name="cost_query")
    op.drop_table("cost_query")
    op.drop_index(op.f("ix_channel_link_org_id"), table_name="channel_link")
    op.drop_table("channel_link")
    op.drop_index(op.f("ix_audit_entry_team_id_channel_id_at"), table_name="audit_entry")
    op.drop_index(op.f("ix_audit_entry_at"), table_name="audit_entry")
    op.drop_table("audit_entry")
