"""endpoints

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "endpoint",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=True),
        sa.Column("description", sa.String(2000), nullable=True),
        sa.Column("image_url", sa.String(1000), nullable=True),
        sa.Column("model_id", sa.String(100), nullable=True),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("min_replicas", sa.Integer(), nullable=False),
        sa.Column("max_replicas", sa.Integer(), nullable=False),
        sa.Column("scale_to_zero", sa.Integer(), nullable=False),
        sa.Column("concurrency_per_replica", sa.Integer(), nullable=False),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("endpoint_state", sa.String(16), nullable=False),
        sa.Column("health_check_path", sa.String(500), nullable=False),
        sa.Column("instance_type", sa.String(100), nullable=False),
        sa.Column("registry_credential", sa.String(200), nullable=True),
        sa.Column("env_overrides", sa.JSON(), nullable=False),
        sa.Column("container_secrets", sa.JSON(), nullable=False),
        sa.Column("request_timeout", sa.Float(), nullable=False),
        sa.Column("max_queue_length", sa.Integer(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_endpoint_name", "endpoint", ["name"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_endpoint_name", table_name="endpoint")
    op.drop_table("endpoint")
