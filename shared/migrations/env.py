"""Alembic environment: the URL comes from the caller (shared.db.run_migrations)."""

from alembic import context
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

import shared.models  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
url = str(config.attributes.get("url") or config.get_main_option("sqlalchemy.url"))
target_metadata = SQLModel.metadata

if context.is_offline_mode():
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
