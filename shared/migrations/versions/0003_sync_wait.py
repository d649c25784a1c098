"""endpoint.sync_wait: a sync request's wait budget before it becomes a job

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("endpoint", sa.Column("sync_wait", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("endpoint", "sync_wait")
