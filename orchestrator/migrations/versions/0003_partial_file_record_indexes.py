"""File records: the run and batch indexes cover only rows that have a run or a batch.

An inventory scan writes its records with ``run_id`` and ``batch_id`` NULL; indexing those
NULLs cost every scanned entry two index insertions that no query uses (queries look
records up by ``run_id = ...`` or ``batch_id = ...``, which the partial indexes serve).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 07:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.drop_index('ix_file_records_run_id_state', table_name='file_records')
    op.drop_index('ix_file_records_batch_id', table_name='file_records')
    op.create_index('ix_file_records_run_id_state', 'file_records', ['run_id', 'state'],
                    postgresql_where=sa.text('run_id IS NOT NULL'), sqlite_where=sa.text('run_id IS NOT NULL'))
    op.create_index('ix_file_records_batch_id', 'file_records', ['batch_id'],
                    postgresql_where=sa.text('batch_id IS NOT NULL'), sqlite_where=sa.text('batch_id IS NOT NULL'))


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index('ix_file_records_batch_id', table_name='file_records')
    op.drop_index('ix_file_records_run_id_state', table_name='file_records')
    op.create_index('ix_file_records_batch_id', 'file_records', ['batch_id'])
    op.create_index('ix_file_records_run_id_state', 'file_records', ['run_id', 'state'])
