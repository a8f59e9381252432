"""File records: each index covers only the rows its queries look at.

An inventory scan writes its records with ``run_id`` and ``batch_id`` NULL; indexing those
NULLs cost every scanned entry two index insertions that no query uses (queries look
records up by ``run_id = ...`` or ``batch_id = ...``, which the partial indexes serve).
The (share, state) index serves only the scan's queries (``run_id IS NULL``); a run's
records are found through the run index, so they no longer pay for it (a re-run records
every unchanged file again).

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
    op.drop_index('ix_file_records_share_id_state', table_name='file_records')
    op.create_index('ix_file_records_share_id_state', 'file_records', ['share_id', 'state'],
                    postgresql_where=sa.text('run_id IS NULL'), sqlite_where=sa.text('run_id IS NULL'))
    op.create_index('ix_file_records_run_id_state', 'file_records', ['run_id', 'state'],
                    postgresql_where=sa.text('run_id IS NOT NULL'), sqlite_where=sa.text('run_id IS NOT NULL'))
    op.create_index('ix_file_records_batch_id', 'file_records', ['batch_id'],
                    postgresql_where=sa.text('batch_id IS NOT NULL'), sqlite_where=sa.text('batch_id IS NOT NULL'))


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index('ix_file_records_batch_id', table_name='file_records')
    op.drop_index('ix_file_records_run_id_state', table_name='file_records')
    op.drop_index('ix_file_records_share_id_state', table_name='file_records')
    op.create_index('ix_file_records_share_id_state', 'file_records', ['share_id', 'state'])
    op.create_index('ix_file_records_batch_id', 'file_records', ['batch_id'])
    op.create_index('ix_file_records_run_id_state', 'file_records', ['run_id', 'state'])
