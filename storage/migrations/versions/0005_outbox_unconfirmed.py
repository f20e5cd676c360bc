"""outbox unconfirmed posts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 17:40:00

One nullable column on `outbox`: when a post went out whose outcome Slack's answer has not
settled (the sender stopped mid-post, the answer was lost, or Slack answered 5xx). The next
attempt looks the message up before posting again only then. Existing rows: NULL (settled).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unconfirmed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("unconfirmed_at")
