"""Jobs and their servers: create a job, add source and destination servers, read them back.

A server is stored with how to reach it over SMB (address, port, account; the password
only as a Fernet token from ``common.crypto``) and how to manage it, in
``Server.management``: for Samba, the SSH host, port and account, a private key file or an
SSH password (encrypted too), the known_hosts file the host key is checked against and the
smb.conf to read; for Windows, the WinRM transport, HTTPS or encrypted HTTP, port and
certificate checking. Every action is recorded as an ``Event``.

This module must never store, log, print or return a clear-text password: secrets go in
encrypted, and ``server_summary`` only says whether one is stored. Decrypting is for the
code that connects (``server_password``, ``management_secret``), and its result must go
to a connection, never into a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.crypto import decrypt_secret, encrypt_secret
from common.models import Event, EventLevel, Job, JobState, Server, ServerKind, ServerRole

# Keys of Server.management that hold Fernet tokens (as ASCII text), never clear text.
SECRET_MANAGEMENT_KEYS = ("ssh_password", "winrm_password")
WINRM_TRANSPORTS = ("ntlm", "kerberos", "credssp")


class JobError(ValueError):
    """A job or server request that cannot be carried out; the message says why."""


@dataclass
class SambaManagement:
    """How to manage a Linux Samba server over SSH.

    Give ``key_file`` or ``password``. ``known_hosts`` must hold the server's SSH host key
    (it is never learnt automatically). ``smb_conf`` selects an smb.conf other than the
    distribution's default.
    """

    ssh_user: str
    known_hosts: str
    ssh_host: str | None = None
    ssh_port: int = 22
    key_file: str | None = None
    password: str | None = None
    smb_conf: str | None = None

    def __repr__(self) -> str:
        return (f"SambaManagement(ssh_user={self.ssh_user!r}, ssh_host={self.ssh_host!r}, "
                f"ssh_port={self.ssh_port!r}, key_file={self.key_file!r}, password=<hidden>)")


@dataclass
class WindowsManagement:
    """How to manage a Windows server over WinRM (never Basic auth, never plaintext).

    ``user`` and ``password`` default to the server's SMB account.
    """

    transport: str = "ntlm"
    use_https: bool = True
    port: int | None = None
    verify_certificate: bool = True
    ca_bundle: str | None = None
    host: str | None = None
    user: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return (f"WindowsManagement(transport={self.transport!r}, use_https={self.use_https!r}, "
                f"host={self.host!r}, user={self.user!r}, password=<hidden>)")


# --- events ----------------------------------------------------------------------------

def record_event(
    session: Session,
    kind: str,
    message: str,
    *,
    job_id: int | None = None,
    server_id: int | None = None,
    level: EventLevel = EventLevel.INFO,
    detail: dict[str, Any] | None = None,
) -> Event:
    """Add an audit event to ``session`` (committed with the caller's transaction)."""
    event = Event(job_id=job_id, server_id=server_id, level=level, kind=kind,
                  message=message, detail=dict(detail or {}))
    session.add(event)
    return event


# --- jobs ------------------------------------------------------------------------------

def create_job(session: Session, name: str, description: str = "") -> Job:
    """Create a job named ``name`` (unique); records a ``job.created`` event."""
    name = name.strip()
    if not name:
        raise JobError("a job needs a name")
    if name.isdigit():
        raise JobError("a job name cannot be only digits (numbers refer to job ids)")
    if session.scalar(select(Job.id).where(Job.name == name)) is not None:
        raise JobError(f"a job named {name!r} already exists")
    job = Job(name=name, description=description)
    session.add(job)
    session.flush()
    record_event(session, "job.created", f"job {name!r} created", job_id=job.id)
    return job


def get_job(session: Session, ref: str | int) -> Job:
    """The job whose id or name is ``ref``; JobError when there is none."""
    text = str(ref).strip()
    job = session.get(Job, int(text)) if text.isdigit() else None
    if job is None:
        job = session.scalar(select(Job).where(Job.name == text))
    if job is None:
        raise JobError(f"no job {text!r} (give its name or id; `sms job list` shows them)")
    return job


JOB_PHASES = (JobState.DRAFT, JobState.INVENTORY, JobState.TRANSFER, JobState.CUTOVER, JobState.DONE)


def advance_job(session: Session, job_id: int, state: JobState) -> None:
    """Move the job to phase ``state`` if that is further than where it stands: a new
    inventory after a transfer does not send the job back, and a job's phase only says how
    far the migration has come (its runs say how each went)."""
    job = session.get(Job, job_id)
    if job is not None and JOB_PHASES.index(state) > JOB_PHASES.index(job.state):
        job.state = state


def list_jobs(session: Session) -> list[Job]:
    """Every job, oldest first."""
    return list(session.scalars(select(Job).order_by(Job.id)))


def job_summary(session: Session, job: Job) -> dict[str, Any]:
    """A job as plain data for display, with its servers (no secrets)."""
    servers = list(session.scalars(select(Server).where(Server.job_id == job.id).order_by(Server.id)))
    return {
        "id": job.id,
        "name": job.name,
        "description": job.description,
        "state": job.state.value,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "servers": [server_summary(server) for server in servers],
    }


# --- servers ---------------------------------------------------------------------------

def add_server(
    session: Session,
    job: Job,
    *,
    name: str,
    role: ServerRole | str,
    kind: ServerKind | str,
    address: str,
    username: str,
    password: str | None,
    port: int = 445,
    samba: SambaManagement | None = None,
    windows: WindowsManagement | None = None,
) -> Server:
    """Add a source or destination server to ``job`` and record a ``server.added`` event.

    The SMB password and any management password are stored encrypted. A Samba server
    needs ``samba`` (SSH access); a Windows server may give ``windows`` (WinRM options,
    defaults otherwise); an SMB-only server takes neither.
    """
    role = ServerRole(role)
    kind = ServerKind(kind)
    name = name.strip()
    if not name:
        raise JobError("a server needs a name")
    if not address.strip():
        raise JobError(f"server {name!r} needs an SMB address")
    if not 0 < port < 65536:
        raise JobError(f"SMB port {port} is not a TCP port")
    if not username:
        raise JobError(f"server {name!r} needs the SMB account's user name")
    if session.scalar(select(Server.id).where(Server.job_id == job.id, Server.name == name)):
        raise JobError(f"job {job.name!r} already has a server named {name!r}")
    if kind is ServerKind.SAMBA:
        if windows is not None:
            raise JobError("WinRM options are for Windows servers only")
        management = _samba_management(name, samba)
    elif kind is ServerKind.WINDOWS:
        if samba is not None:
            raise JobError("SSH options are for Samba servers only")
        management = _windows_management(windows or WindowsManagement())
    else:
        if samba is not None or windows is not None:
            raise JobError("an smb-only server has no management access (no SSH or WinRM options)")
        management = {}
    server = Server(
        job_id=job.id,
        name=name,
        role=role,
        kind=kind,
        address=address.strip(),
        port=port,
        username=username,
        credential=encrypt_secret(password) if password else None,
        management=management,
    )
    session.add(server)
    session.flush()
    record_event(
        session,
        "server.added",
        f"{role.value} server {name!r} ({kind.value}, SMB {address}:{port} as {username}) added",
        job_id=job.id,
        server_id=server.id,
        detail={"role": role.value, "kind": kind.value, "address": address, "port": port},
    )
    return server


def _samba_management(name: str, options: SambaManagement | None) -> dict[str, Any]:
    if options is None:
        raise JobError(f"Samba server {name!r} needs SSH access: an SSH user, a key file or "
                       "password, and a known_hosts file")
    if not options.ssh_user:
        raise JobError(f"Samba server {name!r} needs an SSH user")
    if not options.key_file and not options.password:
        raise JobError(f"Samba server {name!r} needs an SSH key file or an SSH password")
    if options.key_file and options.password:
        raise JobError("give an SSH key file or an SSH password, not both")
    if not options.known_hosts:
        raise JobError(f"Samba server {name!r} needs a known_hosts file holding its SSH host key")
    if not 0 < options.ssh_port < 65536:
        raise JobError(f"SSH port {options.ssh_port} is not a TCP port")
    management: dict[str, Any] = {
        "ssh_host": options.ssh_host or None,
        "ssh_port": options.ssh_port,
        "ssh_user": options.ssh_user,
        "known_hosts": str(Path(options.known_hosts).expanduser().resolve()),
        "key_file": str(Path(options.key_file).expanduser().resolve()) if options.key_file else None,
        "smb_conf": options.smb_conf or None,
    }
    if options.password:
        management["ssh_password"] = encrypt_secret(options.password).decode("ascii")
    return management


def _windows_management(options: WindowsManagement) -> dict[str, Any]:
    if options.transport not in WINRM_TRANSPORTS:
        raise JobError(f"WinRM transport must be one of {', '.join(WINRM_TRANSPORTS)} "
                       "(Basic and plaintext are refused)")
    if options.port is not None and not 0 < options.port < 65536:
        raise JobError(f"WinRM port {options.port} is not a TCP port")
    management: dict[str, Any] = {
        "winrm_host": options.host or None,
        "winrm_transport": options.transport,
        "winrm_https": options.use_https,
        "winrm_port": options.port,
        "winrm_verify_certificate": options.verify_certificate,
        "winrm_ca_bundle": options.ca_bundle or None,
        "winrm_user": options.user or None,
    }
    if options.password:
        management["winrm_password"] = encrypt_secret(options.password).decode("ascii")
    return management


def get_server(session: Session, job: Job, ref: str | int) -> Server:
    """The server of ``job`` whose id or name is ``ref``; JobError when there is none."""
    text = str(ref).strip()
    server = None
    if text.isdigit():
        server = session.scalar(select(Server).where(Server.job_id == job.id, Server.id == int(text)))
    if server is None:
        server = session.scalar(select(Server).where(Server.job_id == job.id, Server.name == text))
    if server is None:
        raise JobError(f"job {job.name!r} has no server {text!r}")
    return server


def list_servers(session: Session, job: Job, role: ServerRole | None = None) -> list[Server]:
    """The servers of ``job`` (of one role when given), in the order they were added."""
    query = select(Server).where(Server.job_id == job.id)
    if role is not None:
        query = query.where(Server.role == role)
    return list(session.scalars(query.order_by(Server.id)))


def server_summary(server: Server) -> dict[str, Any]:
    """A server as plain data for display: secrets are reported as stored or not, never shown."""
    management = {}
    for key, value in (server.management or {}).items():
        if key in SECRET_MANAGEMENT_KEYS:
            management[key] = "(stored, encrypted)" if value else None
        else:
            management[key] = value
    return {
        "id": server.id,
        "name": server.name,
        "role": server.role.value,
        "kind": server.kind.value,
        "address": server.address,
        "port": server.port,
        "username": server.username,
        "password": "(stored, encrypted)" if server.credential else "(none)",
        "management": management,
    }


def server_password(server: Server) -> str:
    """The server's SMB password, decrypted for a connection (never for display or logs)."""
    if not server.credential:
        raise JobError(f"server {server.name!r} has no stored SMB password")
    return decrypt_secret(server.credential)


def management_secret(server: Server, key: str) -> str | None:
    """A decrypted management secret (``ssh_password``, ``winrm_password``), or None."""
    if key not in SECRET_MANAGEMENT_KEYS:
        raise KeyError(key)
    token = (server.management or {}).get(key)
    return decrypt_secret(token.encode("ascii")) if token else None
