"""Transfer: each run keeps, per folder of a share, the digest a host's summary of it gives
(``folder_digests``), so that a re-run compares folders without loading every record.

Runs before this revision have no rows: the first re-run after it compares on the
records as before, and writes the rows the next one uses (common.models.FolderDigest).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 21:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('folder_digests',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('share_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=True),
    sa.Column('hash_algorithm', sa.String(length=32), nullable=True),
    sa.Column('file_ids', sa.LargeBinary(), nullable=False),
    sa.Column('file_bytes', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['transfer_runs.id'], name=op.f('fk_folder_digests_run_id_transfer_runs'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['share_id'], ['shares.id'], name=op.f('fk_folder_digests_share_id_shares'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'share_id', 'path', name=op.f('pk_folder_digests'))
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table('folder_digests')
