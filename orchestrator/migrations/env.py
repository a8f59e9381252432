"""Alembic environment of the job database (run by orchestrator.database, not by hand).

The database URL comes from ``config.attributes["url"]`` (set by orchestrator.database)
or else from settings; it never goes through alembic.ini, so a password in it is never
written to a file or interpolated. SQLite gets batch mode, so ALTERs work there too.
"""

from __future__ import annotations

from alembic import context

from common.db import make_engine
from common.models import Base
from common.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("url") or get_settings().database_url


def run_migrations_offline() -> None:
    """Emit SQL for the migrations without a database connection."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations against the database."""
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
