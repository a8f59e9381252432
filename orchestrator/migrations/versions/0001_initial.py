"""Initial schema of the job database (reviewed autogenerate of common.models).

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-26 23:16:52.982408
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('state', sa.Enum('draft', 'inventory', 'transfer', 'cutover', 'done', 'failed', name='job_state', native_enum=False, length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('name', name=op.f('uq_jobs_name'))
    )
    op.create_table('servers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('role', sa.Enum('source', 'destination', name='server_role', native_enum=False, length=32), nullable=False),
    sa.Column('kind', sa.Enum('windows', 'samba', 'smb-only', name='server_kind', native_enum=False, length=32), nullable=False),
    sa.Column('address', sa.String(length=255), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=255), nullable=False),
    sa.Column('credential', sa.LargeBinary(), nullable=True),
    sa.Column('management', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_servers_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_servers')),
    sa.UniqueConstraint('job_id', 'name', name=op.f('uq_servers_job_id_name'))
    )
    op.create_index(op.f('ix_servers_job_id'), 'servers', ['job_id'], unique=False)

    op.create_table('events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('server_id', sa.Integer(), nullable=True),
    sa.Column('level', sa.Enum('debug', 'info', 'warning', 'error', name='event_level', native_enum=False, length=32), nullable=False),
    sa.Column('kind', sa.String(length=100), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_events_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_events_server_id_servers'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    op.create_index('ix_events_job_id_at', 'events', ['job_id', 'at'], unique=False)
    op.create_index(op.f('ix_events_server_id'), 'events', ['server_id'], unique=False)

    op.create_table('local_principals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('user', 'group', name='principal_kind', native_enum=False, length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('sid', sa.String(length=184), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('members', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_local_principals_server_id_servers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_local_principals')),
    sa.UniqueConstraint('server_id', 'kind', 'name', name=op.f('uq_local_principals_server_id_kind_name'))
    )
    op.create_index(op.f('ix_local_principals_server_id'), 'local_principals', ['server_id'], unique=False)
    op.create_index(op.f('ix_local_principals_sid'), 'local_principals', ['sid'], unique=False)

    op.create_table('pairings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('source_server_id', sa.Integer(), nullable=False),
    sa.Column('destination_server_id', sa.Integer(), nullable=False),
    sa.Column('path_mapping', sa.JSON(), nullable=False),
    sa.Column('shares', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['destination_server_id'], ['servers.id'], name=op.f('fk_pairings_destination_server_id_servers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_pairings_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['source_server_id'], ['servers.id'], name=op.f('fk_pairings_source_server_id_servers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pairings')),
    sa.UniqueConstraint('source_server_id', 'destination_server_id', name=op.f('uq_pairings_source_server_id_destination_server_id'))
    )
    op.create_index(op.f('ix_pairings_destination_server_id'), 'pairings', ['destination_server_id'], unique=False)
    op.create_index(op.f('ix_pairings_job_id'), 'pairings', ['job_id'], unique=False)

    op.create_table('server_facts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=False),
    sa.Column('collected_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('os_name', sa.String(length=255), nullable=False),
    sa.Column('os_version', sa.String(length=255), nullable=False),
    sa.Column('machine_sid', sa.String(length=184), nullable=False),
    sa.Column('network_adapters', sa.JSON(), nullable=False),
    sa.Column('volumes', sa.JSON(), nullable=False),
    sa.Column('extra', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_server_facts_server_id_servers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_server_facts'))
    )
    op.create_index(op.f('ix_server_facts_server_id'), 'server_facts', ['server_id'], unique=False)

    op.create_table('shares',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('remark', sa.Text(), nullable=False),
    sa.Column('share_type', sa.BigInteger(), nullable=False),
    sa.Column('max_uses', sa.BigInteger(), nullable=True),
    sa.Column('caching_mode', sa.String(length=32), nullable=True),
    sa.Column('access_based_enumeration', sa.Boolean(), nullable=True),
    sa.Column('encrypt_data', sa.Boolean(), nullable=True),
    sa.Column('continuously_available', sa.Boolean(), nullable=True),
    sa.Column('properties', sa.JSON(), nullable=False),
    sa.Column('security_descriptor', sa.LargeBinary(), nullable=True),
    sa.Column('file_count', sa.BigInteger(), nullable=False),
    sa.Column('directory_count', sa.BigInteger(), nullable=False),
    sa.Column('total_bytes', sa.BigInteger(), nullable=False),
    sa.Column('scanned_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_shares_server_id_servers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_shares')),
    sa.UniqueConstraint('server_id', 'name', name=op.f('uq_shares_server_id_name'))
    )
    op.create_index(op.f('ix_shares_server_id'), 'shares', ['server_id'], unique=False)

    op.create_table('cutover_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('pairing_id', sa.Integer(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('state', sa.Enum('pending', 'running', 'paused', 'succeeded', 'failed', 'cancelled', name='run_state', native_enum=False, length=32), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_cutover_runs_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['pairing_id'], ['pairings.id'], name=op.f('fk_cutover_runs_pairing_id_pairings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cutover_runs'))
    )
    op.create_index(op.f('ix_cutover_runs_job_id'), 'cutover_runs', ['job_id'], unique=False)
    op.create_index(op.f('ix_cutover_runs_pairing_id'), 'cutover_runs', ['pairing_id'], unique=False)

    op.create_table('transfer_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('pairing_id', sa.Integer(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('state', sa.Enum('pending', 'running', 'paused', 'succeeded', 'failed', 'cancelled', name='run_state', native_enum=False, length=32), nullable=False),
    sa.Column('files_total', sa.BigInteger(), nullable=False),
    sa.Column('files_copied', sa.BigInteger(), nullable=False),
    sa.Column('files_skipped', sa.BigInteger(), nullable=False),
    sa.Column('files_failed', sa.BigInteger(), nullable=False),
    sa.Column('bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('bytes_copied', sa.BigInteger(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_transfer_runs_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['pairing_id'], ['pairings.id'], name=op.f('fk_transfer_runs_pairing_id_pairings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transfer_runs'))
    )
    op.create_index(op.f('ix_transfer_runs_job_id'), 'transfer_runs', ['job_id'], unique=False)
    op.create_index(op.f('ix_transfer_runs_pairing_id'), 'transfer_runs', ['pairing_id'], unique=False)

    op.create_table('batches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('share_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.Enum('queued', 'running', 'done', 'failed', name='batch_state', native_enum=False, length=32), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=255), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('queue', sa.String(length=255), nullable=False),
    sa.Column('task_name', sa.String(length=255), nullable=False),
    sa.Column('task_kwargs', sa.JSON(), nullable=False),
    sa.Column('file_count', sa.BigInteger(), nullable=False),
    sa.Column('byte_count', sa.BigInteger(), nullable=False),
    sa.Column('files_done', sa.BigInteger(), nullable=False),
    sa.Column('bytes_done', sa.BigInteger(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['transfer_runs.id'], name=op.f('fk_batches_run_id_transfer_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['share_id'], ['shares.id'], name=op.f('fk_batches_share_id_shares'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batches'))
    )
    op.create_index('ix_batches_run_id_state', 'batches', ['run_id', 'state'], unique=False)
    op.create_index(op.f('ix_batches_share_id'), 'batches', ['share_id'], unique=False)
    op.create_index('ix_batches_state_lease_expires_at', 'batches', ['state', 'lease_expires_at'], unique=False)

    op.create_table('cutover_stages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('cutover_run_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('state', sa.Enum('pending', 'running', 'paused', 'succeeded', 'failed', 'cancelled', name='run_state', native_enum=False, length=32), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['cutover_run_id'], ['cutover_runs.id'], name=op.f('fk_cutover_stages_cutover_run_id_cutover_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cutover_stages')),
    sa.UniqueConstraint('cutover_run_id', 'name', name=op.f('uq_cutover_stages_cutover_run_id_name'))
    )
    op.create_table('file_records',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('share_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('batch_id', sa.Integer(), nullable=True),
    sa.Column('relative_path', sa.Text(), nullable=False),
    sa.Column('is_dir', sa.Boolean(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('creation_time', sa.BigInteger(), nullable=True),
    sa.Column('last_write_time', sa.BigInteger(), nullable=True),
    sa.Column('last_access_time', sa.BigInteger(), nullable=True),
    sa.Column('change_time', sa.BigInteger(), nullable=True),
    sa.Column('attributes', sa.BigInteger(), nullable=False),
    sa.Column('hash_algorithm', sa.String(length=32), nullable=True),
    sa.Column('source_hash', sa.String(length=128), nullable=True),
    sa.Column('destination_hash', sa.String(length=128), nullable=True),
    sa.Column('state', sa.Enum('scanned', 'copied', 'skipped', 'verified', 'mismatch', 'failed', name='file_state', native_enum=False, length=32), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_file_records_batch_id_batches'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['run_id'], ['transfer_runs.id'], name=op.f('fk_file_records_run_id_transfer_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['share_id'], ['shares.id'], name=op.f('fk_file_records_share_id_shares'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_file_records'))
    )
    op.create_index('ix_file_records_batch_id', 'file_records', ['batch_id'], unique=False)
    op.create_index('ix_file_records_run_id_state', 'file_records', ['run_id', 'state'], unique=False)
    op.create_index('ix_file_records_share_id_state', 'file_records', ['share_id', 'state'], unique=False)
    op.create_index('uq_file_records_share_id_relative_path_scan', 'file_records', ['share_id', 'relative_path'], unique=True, postgresql_where=sa.text('run_id IS NULL'), sqlite_where=sa.text('run_id IS NULL'))
    op.create_index('uq_file_records_share_id_run_id_relative_path', 'file_records', ['share_id', 'run_id', 'relative_path'], unique=True, postgresql_where=sa.text('run_id IS NOT NULL'), sqlite_where=sa.text('run_id IS NOT NULL'))


def downgrade() -> None:
    """Revert this revision: drop every table (their indexes go with them)."""
    op.drop_table('file_records')
    op.drop_table('cutover_stages')
    op.drop_table('batches')
    op.drop_table('transfer_runs')
    op.drop_table('cutover_runs')
    op.drop_table('shares')
    op.drop_table('server_facts')
    op.drop_table('pairings')
    op.drop_table('local_principals')
    op.drop_table('events')
    op.drop_table('servers')
    op.drop_table('jobs')
