"""assets and tunes: the asset library's table, the assets an endpoint mounts, and
fine-tuning runs

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "asset",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("name", sa.String(length=128), nullable=False, index=True),
        sa.Column("asset_type", sa.String(length=32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("is_public", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_details", sa.String(length=2000), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("expected_sha256", sa.String(length=64), nullable=True),
        sa.Column("expected_size", sa.BigInteger(), nullable=True),
        sa.Column("skip_validation", sa.Boolean(), nullable=False),
        sa.Column("upload_token_sha256", sa.String(length=64), nullable=True),
        sa.Column("upload_expires_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("deleted_at", sa.Float(), nullable=True),
    )
    op.create_table(
        "tune",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("name", sa.String(length=128), nullable=False, index=True),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("tune_type", sa.String(length=64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_details", sa.String(length=4000), nullable=False),
        sa.Column("output_lora_ids", sa.JSON(), nullable=False),
        sa.Column("endpoint", sa.String(length=63), nullable=False),
        sa.Column("response_id", sa.String(length=64), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("succeeded_at", sa.Float(), nullable=True),
        sa.Column("deleted_at", sa.Float(), nullable=True),
    )
    op.add_column("endpoint", sa.Column("assets", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column(
        "endpoint", sa.Column("asset_refs", sa.JSON(), nullable=False, server_default="[]")
    )


def downgrade() -> None:
    op.drop_column("endpoint", "asset_refs")
    op.drop_column("endpoint", "assets")
    op.drop_table("tune")
    op.drop_table("asset")
