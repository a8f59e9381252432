"""Schema management of the job database: Alembic upgrades and downgrades, configured in code.

``upgrade_to_head(url)`` creates or upgrades a SQLite or PostgreSQL database to the newest
schema; ``downgrade_to_base(url)`` removes it. The URL is handed to the migration
environment directly, never through an ini file, so a password is never written anywhere.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the job database at ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade_to_head(url: str) -> None:
    """Create or upgrade the database at ``url`` to the newest schema revision."""
    command.upgrade(alembic_config(url), "head")


def downgrade_to_base(url: str) -> None:
    """Revert the database at ``url`` to an empty schema (every table dropped)."""
    command.downgrade(alembic_config(url), "base")


class SchemaNotReady(RuntimeError):
    """The job database is missing or older than this version of the code."""


def ensure_schema(url: str) -> None:
    """Make sure the database at ``url`` has the newest schema before a command uses it.

    The embedded SQLite database is created or upgraded on first use, so the embedded
    defaults need no set-up step. A server database (PostgreSQL) is never changed behind
    the operator's back: when it is not at the newest revision this raises
    ``SchemaNotReady`` telling them to run ``sms db upgrade``. A database already at the
    newest revision is only looked at (every CLI command comes here; an Alembic upgrade
    that finds nothing to do cost 0.1 s).
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if current == head:
        return
    if url.startswith("sqlite"):
        upgrade_to_head(url)
        return
    raise SchemaNotReady(
        f"the job database is at schema revision {current or 'none'}, this version needs "
        f"{head}: run 'sms db upgrade'")
