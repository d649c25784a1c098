"""Alembic environment: the URL comes from the caller (shared.db.run_migrations)."""

from alembic import context
from sqlalchemy import create_engine, pool, text
from sqlmodel import SQLModel

import shared.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from shared.db import connect_args

config = context.config
url = str(config.attributes.get("url") or config.get_main_option("sqlalchemy.url"))
target_metadata = SQLModel.metadata
# Several instances started together (two APIs on one PostgreSQL) each run the migrations:
# a transaction-scoped advisory lock makes them take turns, so the second finds the schema
# at head and does nothing. The key is any fixed 64-bit number, Berth's own.
MIGRATION_LOCK = 0x6265727468  # "berth"

if context.is_offline_mode():
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url, poolclass=pool.NullPool, connect_args=connect_args(url))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            context.run_migrations()
    engine.dispose()
