"""Transfer: files a re-run found unchanged are recorded by reference (``unchanged_files``).

A re-run used to copy the earlier run's record of every unchanged file into its own
rows; on PostgreSQL that cost more CPU than listing both shares. Existing runs keep their
copied records, which ``common.models.run_records`` reads alike. No foreign keys: checked
per row, they made writing the references seven times dearer (common.models.UnchangedFile).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('unchanged_files',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('record_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('run_id', 'record_id', name=op.f('pk_unchanged_files'))
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table('unchanged_files')
