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
