"""Transfer: the owner SID of each transferred entry, and each run's SID map.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 00:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.add_column('file_records', sa.Column('owner', sa.String(length=184), nullable=True))
    op.create_table('sid_maps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('entries', sa.JSON(), nullable=False),
    sa.Column('accounts', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['transfer_runs.id'], name=op.f('fk_sid_maps_run_id_transfer_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sid_maps')),
    sa.UniqueConstraint('run_id', name=op.f('uq_sid_maps_run_id'))
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table('sid_maps')
    with op.batch_alter_table('file_records') as batch:
        batch.drop_column('owner')
