"""Request and response models of the REST API (Pydantic).

Requests are strict: unknown fields are refused, enums list their allowed values when a
value is wrong, numbers are range-checked. Passwords are ``SecretStr`` fields marked
write-only in the schema: they reach the service that encrypts them and are never part of
any response model. Responses say whether a secret is stored, never what it is.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from common.models import ServerKind, ServerRole
from common.transfer_options import (
    CHECKSUM_CHOICES,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAY,
    PRINCIPAL_CHOICES,
    TransferOptions,
)


class Request(BaseModel):
    """Base of request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


def write_only(description: str) -> Any:
    """A write-only password field (None when not given)."""
    return Field(None, description=description, json_schema_extra={"writeOnly": True})


# --- jobs and servers ------------------------------------------------------------------

class JobIn(Request):
    """A new migration job."""

    name: str = Field(min_length=1, max_length=200, description="Unique job name (not only digits).")
    description: str = Field("", max_length=10_000)

    @field_validator("name")
    @classmethod
    def _not_only_digits(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("a job needs a name")
        if value.isdigit():
            raise ValueError("a job name cannot be only digits (numbers refer to job ids)")
        return value


class WinRmTransport(str, enum.Enum):
    """WinRM authentication (Basic and plaintext are refused)."""

    NTLM = "ntlm"
    KERBEROS = "kerberos"
    CREDSSP = "credssp"


class SambaAccessIn(Request):
    """How to manage a Samba server over SSH. Paths are on the orchestrator's machine."""

    ssh_user: str = Field(min_length=1)
    known_hosts: str = Field(min_length=1, description="known_hosts file holding the server's SSH host key.")
    ssh_host: str | None = Field(None, description="Default: the SMB address.")
    ssh_port: int = Field(22, ge=1, le=65535)
    key_file: str | None = Field(None, description="Private key file (or give ssh_password).")
    ssh_password: SecretStr | None = write_only("SSH password (stored encrypted, never returned).")
    smb_conf: str | None = Field(None, description="smb.conf to read (default: the distribution's).")


class WindowsAccessIn(Request):
    """How to manage a Windows server over WinRM."""

    transport: WinRmTransport = WinRmTransport.NTLM
    use_https: bool = True
    port: int | None = Field(None, ge=1, le=65535, description="Default 5986 (HTTPS) or 5985.")
    verify_certificate: bool = True
    ca_bundle: str | None = None
    host: str | None = Field(None, description="Default: the SMB address.")
    user: str | None = Field(None, description="Default: the SMB account.")
    password: SecretStr | None = write_only("WinRM password (default: the SMB password; never returned).")


class ServerIn(Request):
    """A source or destination server of a job."""

    name: str = Field(min_length=1, max_length=255)
    role: ServerRole = ServerRole.SOURCE
    kind: ServerKind
    address: str = Field(min_length=1, max_length=255, description="SMB address (name or IP).")
    port: int = Field(445, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=255, description="SMB account (DOMAIN\\user or user).")
    password: SecretStr | None = write_only("SMB password (stored encrypted, never returned).")
    samba: SambaAccessIn | None = Field(None, description="Required for kind=samba.")
    windows: WindowsAccessIn | None = Field(None, description="Optional for kind=windows.")


class ServerOut(BaseModel):
    """A server as the API shows it: whether secrets are stored, never the secrets."""

    id: int
    name: str
    role: ServerRole
    kind: ServerKind
    address: str
    port: int
    username: str
    password_stored: bool
    management: dict[str, Any] = Field(
        description="SSH or WinRM options; a stored password shows as '(stored, encrypted)'.")


class EventOut(BaseModel):
    """One audit event."""

    at: datetime | None
    level: str
    kind: str
    server_id: int | None
    message: str


class JobOut(BaseModel):
    """A job with its servers."""

    id: int
    name: str
    description: str
    state: str
    created_at: datetime | None
    servers: list[ServerOut]


class JobDetailOut(JobOut):
    """A job with its servers and latest events."""

    events: list[EventOut]


# --- inventory --------------------------------------------------------------------------

class InventoryIn(Request):
    """Options of an inventory run."""

    include_admin_shares: bool = Field(False, description="Also administrative shares (names ending in $).")
    scan_excluded_folders: bool = Field(
        False, description="Also scan Windows, Program Files, Users, System Volume Information...")
    scan_files: bool = Field(True, description="Queue the file scan of every share (orchestrator workers).")
    restart_running_scans: bool = False


class InventoryServerReport(BaseModel):
    """The outcome of one server's inventory."""

    server_id: int
    name: str
    errors: dict[str, str]
    shares: list[str]
    principals: int
    scans_started: list[int]
    scans_not_restarted: list[str]


class InventoryRunOut(BaseModel):
    """The outcome of an inventory run; file scans go on in the background."""

    job_id: int
    job: str
    error_count: int
    scans_queued: int
    servers: list[InventoryServerReport]


class InventoryCounts(BaseModel):
    """Totals over a job's inventoried source servers."""

    servers: int
    shares: int
    volumes: int
    users: int
    groups: int
    files: int
    directories: int
    bytes: int
    scan_errors: int
    server_errors: int


class InventoryServerOut(ServerOut):
    """A source server with everything its inventory stored."""

    facts: dict[str, Any] | None = Field(description="Identity, network adapters, volumes.")
    volumes: list[dict[str, Any]]
    shares: list[dict[str, Any]] = Field(description="Every property, permissions, scan counters.")
    users: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    errors: list[dict[str, Any]]


class InventoryOut(BaseModel):
    """What the inventory stored for a job."""

    job_id: int
    job: str
    state: str
    counts: InventoryCounts
    servers: list[InventoryServerOut]


# --- pairings and transfer --------------------------------------------------------------

class PairingIn(Request):
    """Pair a source with a destination and choose the shares to move."""

    source: str = Field(min_length=1, description="Source server name or id.")
    destination: str = Field(min_length=1, description="Destination server name or id.")
    shares: list[str] = Field(default_factory=list, description="Source share names; empty: all inventoried.")
    path_mapping: dict[str, str] = Field(default_factory=dict,
                                         description="Source path prefix -> destination path prefix.")


class PairingOut(BaseModel):
    """A pairing."""

    id: int
    job_id: int
    source: str
    destination: str
    shares: list[str]
    path_mapping: dict[str, Any]
    created_at: datetime | None


# Validation of copied files (as SMS: none, a fast hash, or SHA-256): the transfer
# options' own choices, so the API never offers one the engine does not know.
Checksum = enum.Enum("Checksum", {choice.upper(): choice for choice in CHECKSUM_CHOICES}, type=str)
# What happens to the source's local users and groups (as SMS: rename conflicting
# accounts, merge with existing ones, or skip): the transfer options' own choices.
PrincipalMode = enum.Enum("PrincipalMode", {choice.upper(): choice for choice in PRINCIPAL_CHOICES}, type=str)


class TransferIn(Request):
    """Start transfer runs."""

    pairing_ids: list[int] = Field(default_factory=list, description="Empty: every pairing of the job.")
    checksum: Checksum = Field(Checksum(TransferOptions.checksum),
                               description="none: hash while copying only; fast / sha256: re-read and compare.")
    retries: int = Field(DEFAULT_RETRIES, ge=0, le=100)
    retry_delay: float = Field(DEFAULT_RETRY_DELAY, ge=0, le=86_400)
    copy_sacl: bool = False
    share_map: dict[str, str] = Field(default_factory=dict,
                                      description="Source share -> destination share (default: same name).")
    migrate_principals: PrincipalMode = Field(
        PrincipalMode(TransferOptions.migrate_principals),
        description="Local users and groups: rename conflicting accounts, merge with existing ones, or skip.")
    max_duration: float = Field(0, ge=0, le=30 * 86_400,
                                description="Seconds after which no new batch is dispatched (0: no limit).")


class TransferStartedOut(BaseModel):
    """Runs created and handed to a driver process."""

    run_ids: list[int]
    driver_pid: int
    driver_log: str


class LogKind(str, enum.Enum):
    """Which CSV log of a run: every entry, or the errors alone."""

    TRANSFER = "transfer"
    ERRORS = "errors"


class TransferErrorOut(BaseModel):
    """One row of a run's error log (the columns of the errors CSV)."""

    share: str
    path: str
    type: str
    size: int
    result: str
    error_code: str
    error_message: str


class TransferErrorsOut(BaseModel):
    """The first rows of a run's error log and how many there are in all."""

    run_id: int
    total: int
    errors: list[TransferErrorOut]


class TransferRunOut(BaseModel):
    """A transfer run and its counters."""

    id: int
    job_id: int
    pairing_id: int
    state: str
    options: dict[str, Any]
    files_total: int
    files_copied: int
    files_skipped: int
    files_failed: int
    bytes_total: int
    bytes_copied: int
    error: str
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None


class TransferProgressOut(TransferRunOut):
    """A run with its batches by state and its per-share reconciliation so far."""

    batches: dict[str, int]
    reconciliation: dict[str, Any]


class ShareReconciliationOut(BaseModel):
    """One share of a reconciliation report."""

    share: str
    inventoried: int
    inventoried_bytes: int
    files: int
    directories: int
    copied: int
    copied_bytes: int
    verified: int
    unchanged: int
    missing: int
    mismatched: int
    failed: int
    walk_errors: int
    mirror_errors: int
    clean: bool


class ReconciliationOut(BaseModel):
    """The reconciliation report of a run."""

    run_id: int
    state: str
    clean: bool
    shares: list[ShareReconciliationOut]


# --- cutover ------------------------------------------------------------------------------

class CutoverStageOut(BaseModel):
    """One stage of a cutover run."""

    position: int
    name: str
    state: str
    progress: float
    message: str
    started_at: datetime | None
    ended_at: datetime | None


class CutoverRunOut(BaseModel):
    """A cutover run and its stages."""

    id: int
    job_id: int
    pairing_id: int
    state: str
    error: str
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    stages: list[CutoverStageOut]


class HealthOut(BaseModel):
    """Liveness and database reachability."""

    status: str
    database: str
