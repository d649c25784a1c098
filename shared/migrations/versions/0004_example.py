"""endpoint.example: the catalogue example an endpoint was made from

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("endpoint", sa.Column("example", sa.String(length=63), nullable=True))


def downgrade() -> None:
    op.drop_column("endpoint", "example")
