"""Inventory of a job's source servers: facts, shares, local principals, then the file scan.

For each source server, ``run_inventory`` picks the host adapter by the server's kind
(Samba over SSH, Windows over WinRM, SMB only: ``orchestrator.hosts``), reads the
server's identity, network adapters, volumes, shares (every property and the share
permissions) and local users and groups, and stores them: ``ServerFacts`` replaced,
``Share`` and ``LocalPrincipal`` rows updated in place (added, changed, removed). Over
SMB it also reads each share's own security descriptor (srvsvc level 502) and, when the
management channel fails, still lists the shares that way. Then it starts the file scan
of every disk share (``orchestrator.inventory.scan``), whose tasks are published only
after the transaction that started it has committed.

Options follow Storage Migration Service: administrative shares (names ending in ``$``)
are left out unless asked for; the folders SMS never copies are not scanned unless asked.

Every failure (wrong credentials, an unreachable host, an unknown SSH host key, a command
that fails) becomes an ``Event`` against the server with a message an administrator can
act on, and the inventory of everything else goes on. This module must never put a
credential in an event, a log line, an exception or a task message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from common.db import after_commit, session_scope
from common.models import (
    Event,
    EventLevel,
    FileRecord,
    FileState,
    JobState,
    LocalPrincipal,
    PrincipalKind,
    Server,
    ServerFacts,
    ServerKind,
    ServerRole,
    Share,
    UnchangedFile,
)
from common.smb.rpc import LogonFailed, RpcError, SrvsvcClient
from orchestrator.hosts.base import (
    AuthenticationFailed,
    HostAdapter,
    HostError,
    HostKeyMismatch,
    HostKeyUnknown,
    HostUnreachable,
    InsecureTransport,
    ManagementUnavailable,
)
from orchestrator.hosts.facts import HostIdentity, LocalPrincipals, NetworkAdapter, ShareFacts, Volume
from orchestrator.inventory.scan import (
    PENDING,
    DirectoryTask,
    ScanOptions,
    pending_directories,
    pending_tasks,
    scan_errors,
    scan_is_running,
    start_share_scan,
)
from orchestrator.jobs import (
    JobError,
    advance_job,
    get_job,
    list_servers,
    management_secret,
    record_event,
    server_password,
    server_summary,
)

# A failure of the connection itself: every later call over the same channel fails alike.
CONNECTION_ERRORS = (AuthenticationFailed, HostUnreachable, HostKeyUnknown, HostKeyMismatch,
                     InsecureTransport)
SHARE_TYPE_CODES = {"disk": 0x0, "printer": 0x1, "device": 0x2, "ipc": 0x3}
STYPE_TEMPORARY = 0x40000000
STYPE_SPECIAL = 0x80000000
FACT_PARTS = ("identity", "network", "volumes")

Publisher = Callable[[list[DirectoryTask], ScanOptions], None]


@dataclass(frozen=True)
class InventoryOptions:
    """What an inventory run includes."""

    include_admin_shares: bool = False
    skip_excluded_folders: bool = True
    scan_files: bool = True
    restart_running_scans: bool = False

    @property
    def scan_options(self) -> ScanOptions:
        """The options every directory task of this run's scans gets."""
        return ScanOptions(skip_excluded_folders=self.skip_excluded_folders)


@dataclass
class Collected:
    """What one server's adapters returned; ``errors`` maps a part to its admin message."""

    identity: HostIdentity | None = None
    network: list[NetworkAdapter] | None = None
    volumes: list[Volume] | None = None
    shares: list[ShareFacts] | None = None
    principals: LocalPrincipals | None = None
    share_descriptors: dict[str, bytes] = field(default_factory=dict)
    share_descriptor_errors: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)


@dataclass
class ServerReport:
    """The outcome of one server's inventory."""

    server_id: int
    name: str
    errors: dict[str, str]
    shares: list[str]
    principals: int
    scans_started: list[int]
    scans_not_restarted: list[str]


@dataclass
class InventoryReport:
    """The outcome of an inventory run: one report per source server."""

    job_id: int
    job_name: str
    servers: list[ServerReport]

    @property
    def scan_share_ids(self) -> list[int]:
        """Ids of the shares whose scan this run started."""
        return [share_id for server in self.servers for share_id in server.scans_started]

    @property
    def error_count(self) -> int:
        """How many parts of the inventory failed, over all servers."""
        return sum(len(server.errors) for server in self.servers)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {"job_id": self.job_id, "job": self.job_name,
                "servers": [asdict(server) for server in self.servers]}


# --- adapters ----------------------------------------------------------------------------

def management_adapter(server: Server) -> HostAdapter | None:
    """The management adapter for ``server``'s kind (None for an smb-only server).

    Decrypts the credentials it needs; raises ValueError when the stored options are
    incomplete.
    """
    management = server.management or {}
    if server.kind is ServerKind.SAMBA:
        from orchestrator.hosts.samba_ssh import SambaSshHost

        return SambaSshHost(
            management.get("ssh_host") or server.address,
            port=int(management.get("ssh_port") or 22),
            username=management.get("ssh_user") or "",
            known_hosts=management.get("known_hosts") or "",
            password=management_secret(server, "ssh_password"),
            key_filename=management.get("key_file"),
            smb_conf=management.get("smb_conf"),
        )
    if server.kind is ServerKind.WINDOWS:
        from orchestrator.hosts.windows_winrm import WindowsWinRmHost

        return WindowsWinRmHost(
            management.get("winrm_host") or server.address,
            username=management.get("winrm_user") or server.username,
            password=management_secret(server, "winrm_password") or server_password(server),
            transport=management.get("winrm_transport") or "ntlm",
            use_https=bool(management.get("winrm_https", True)),
            port=management.get("winrm_port"),
            verify_certificate=bool(management.get("winrm_verify_certificate", True)),
            ca_bundle=management.get("winrm_ca_bundle"),
        )
    return None


def smb_adapter(server: Server) -> HostAdapter:
    """The SMB-only adapter (srvsvc over a signed SMB session) for ``server``."""
    from orchestrator.hosts.smb_only import SmbOnlyHost

    return SmbOnlyHost(server.address, username=server.username, password=server_password(server),
                       port=server.port)


def _call(collected: Collected, part: str, adapter: HostAdapter, method: str) -> bool:
    """Call one adapter method into ``collected``; False when the channel itself failed."""
    try:
        setattr(collected, part, getattr(adapter, method)())
    except ManagementUnavailable:
        collected.unavailable.append(part)
    except CONNECTION_ERRORS as exc:
        collected.errors[part] = str(exc)
        return False
    except HostError as exc:
        collected.errors[part] = str(exc)
    except Exception as exc:  # noqa: BLE001 - one server's surprise must not stop the others
        collected.errors[part] = f"{adapter.host}: reading {part} failed unexpectedly: {type(exc).__name__}: {exc}"
    return True


def collect(server: Server, *, management_factory=management_adapter, smb_factory=smb_adapter) -> Collected:
    """Read everything the server's adapters can tell; failures go to ``errors``."""
    collected = Collected()
    parts = (("identity", "identity"), ("network", "network"), ("volumes", "volumes"),
             ("shares", "shares"), ("principals", "local_principals"))
    try:
        adapter = management_factory(server)
    except (ValueError, JobError, HostError) as exc:
        adapter = None
        collected.errors["management"] = f"{server.name}: management access is not usable: {exc}"
    if adapter is not None:
        with adapter:
            for part, method in parts:
                if not _call(collected, part, adapter, method):
                    failed = collected.errors.pop(part)
                    collected.errors["management"] = failed
                    break
    elif server.kind is ServerKind.SMB_ONLY:
        collected.unavailable += ["network", "volumes", "principals"]

    if collected.shares is not None:
        # Over SMB: each share's own security descriptor, by name (srvsvc level 502;
        # enumeration would miss shares that are not browseable).
        names = [share.name for share in collected.shares
                 if share.security_descriptor is None and (share.share_type or "disk") == "disk"]
        if names:
            read_share_descriptors(server, names, collected)
        return collected
    # The management channel could not list the shares: srvsvc still can.
    try:
        smb = smb_factory(server)
    except (ValueError, JobError) as exc:
        collected.errors["smb"] = f"{server.name}: SMB access is not usable: {exc}"
        return collected
    with smb:
        over_smb = Collected()
        if _call(over_smb, "shares", smb, "shares") and collected.identity is None:
            _call(over_smb, "identity", smb, "identity")
        collected.shares = over_smb.shares
        if over_smb.identity is not None:
            collected.identity = over_smb.identity
        for part, message in over_smb.errors.items():
            collected.errors["smb" if part == "shares" else f"smb {part}"] = message
    return collected


def read_share_descriptors(server: Server, names: list[str], collected: Collected) -> None:
    """Read the named shares' own security descriptors over srvsvc into ``collected``;
    a failed logon or connection becomes the ``smb`` error, a share that may not be read
    is noted in ``share_descriptor_errors``."""
    try:
        client = SrvsvcClient(server.address, server.username, server_password(server), port=server.port)
    except LogonFailed as exc:
        collected.errors["smb"] = (f"{server.address}:{server.port}: SMB logon as {server.username!r} "
                                   f"refused ({exc.code_name}): check the account and password stored for the server")
        return
    except RpcError as exc:
        collected.errors["smb"] = f"{server.address}:{server.port}: SMB: {exc}"
        return
    except JobError as exc:
        collected.errors["smb"] = str(exc)
        return
    with client:
        for name in names:
            try:
                descriptor = client.share_security(name).security_descriptor
            except RpcError as exc:
                collected.share_descriptor_errors[name] = str(exc)
                continue
            if descriptor:
                collected.share_descriptors[name] = descriptor


# --- storing -----------------------------------------------------------------------------

def _adapters_json(adapters: list[NetworkAdapter]) -> list[dict[str, Any]]:
    result = []
    for adapter in adapters:
        result.append({
            "name": adapter.name,
            "mac": adapter.mac_address,
            "description": adapter.description,
            "loopback": adapter.loopback,
            "dhcp": adapter.dhcp,
            "ipv4": [{"address": a.address, "prefix": a.prefix_length, "dhcp": a.dhcp}
                     for a in adapter.addresses if a.family == "ipv4"],
            "ipv6": [{"address": a.address, "prefix": a.prefix_length}
                     for a in adapter.addresses if a.family == "ipv6"],
            "gateways": list(adapter.gateways),
            "gateway": adapter.gateways[0] if adapter.gateways else None,
            "dns": list(adapter.dns_servers),
        })
    return result


def _volumes_json(volumes: list[Volume]) -> list[dict[str, Any]]:
    return [{"name": v.label or v.device or v.mount_point, "mount_point": v.mount_point,
             "filesystem": v.filesystem, "size": v.size_bytes, "free": v.free_bytes,
             "label": v.label, "device": v.device} for v in volumes]


def _machine_sid(principals: LocalPrincipals | None) -> str:
    """The local domain SID shared by the server's own accounts (S-1-5-21-a-b-c)."""
    if principals is None:
        return ""
    for user in principals.users:
        parts = (user.sid or "").split("-")
        if len(parts) == 8 and parts[:4] == ["S", "1", "5", "21"]:
            return "-".join(parts[:7])
    return ""


def store_facts(session: Session, server: Server, collected: Collected) -> ServerFacts:
    """Replace the server's facts; a part that could not be read keeps its previous value
    and is listed in ``extra["stale"]``."""
    previous = session.scalar(
        select(ServerFacts).where(ServerFacts.server_id == server.id).order_by(ServerFacts.id.desc())
    )
    identity = collected.identity
    stale = []
    facts = ServerFacts(server_id=server.id)
    if identity is not None:
        facts.hostname = identity.hostname or ""
        facts.domain = identity.domain or identity.workgroup or ""
        facts.os_name = identity.os_name or ""
        facts.os_version = identity.os_version or ""
        identity_extra = {"fqdn": identity.fqdn, "netbios_name": identity.netbios_name,
                          "workgroup": identity.workgroup, "part_of_domain": identity.part_of_domain}
    elif previous is not None:
        stale.append("identity")
        facts.hostname, facts.domain = previous.hostname, previous.domain
        facts.os_name, facts.os_version = previous.os_name, previous.os_version
        identity_extra = {k: (previous.extra or {}).get(k)
                          for k in ("fqdn", "netbios_name", "workgroup", "part_of_domain")}
    else:
        identity_extra = {}
    if collected.network is not None:
        facts.network_adapters = _adapters_json(collected.network)
    else:
        facts.network_adapters = list(previous.network_adapters) if previous is not None else []
        if previous is not None and "network" not in collected.unavailable:
            stale.append("network")
    if collected.volumes is not None:
        facts.volumes = _volumes_json(collected.volumes)
    else:
        facts.volumes = list(previous.volumes) if previous is not None else []
        if previous is not None and "volumes" not in collected.unavailable:
            stale.append("volumes")
    facts.machine_sid = _machine_sid(collected.principals) or (previous.machine_sid if previous else "")
    facts.extra = {
        **identity_extra,
        "management": {ServerKind.SAMBA: "ssh", ServerKind.WINDOWS: "winrm"}.get(server.kind, "smb"),
        "unavailable": sorted(set(collected.unavailable)),
        "stale": stale,
        "errors": dict(collected.errors),
    }
    session.execute(delete(ServerFacts).where(ServerFacts.server_id == server.id))
    session.add(facts)
    return facts


def share_columns(facts: ShareFacts, descriptor: bytes | None) -> dict[str, Any]:
    """The Share row's values for one share as an adapter reported it."""
    type_code = SHARE_TYPE_CODES.get(facts.share_type or "disk", 0)
    if facts.special:
        type_code |= STYPE_SPECIAL
    if facts.temporary:
        type_code |= STYPE_TEMPORARY
    enumeration = facts.folder_enumeration_mode
    return {
        "path": facts.path or "",
        "remark": facts.description or "",
        "share_type": type_code,
        "max_uses": facts.concurrent_user_limit,
        "caching_mode": facts.caching_mode,
        "access_based_enumeration": None if enumeration is None else enumeration == "AccessBased",
        "encrypt_data": facts.encrypt_data,
        "continuously_available": facts.continuously_available,
        "security_descriptor": facts.security_descriptor or descriptor,
        "properties": {
            "reported": dict(facts.properties),
            "share_type": facts.share_type,
            "special": facts.special,
            "temporary": facts.temporary,
            "folder_enumeration_mode": enumeration,
            "scope_name": facts.scope_name,
            "concurrent_user_limit": facts.concurrent_user_limit,
            "sddl": facts.sddl,
            "access": [asdict(entry) for entry in facts.access],
        },
    }


def is_admin_share(name: str) -> bool:
    """Administrative shares (C$, ADMIN$, IPC$ ...) end in $."""
    return name.endswith("$")


def store_shares(session: Session, server: Server, collected: Collected,
                 options: InventoryOptions) -> list[Share]:
    """Add, update and remove the server's shares to match what was read."""
    existing = {share.name: share for share in session.scalars(select(Share).where(Share.server_id == server.id))}
    kept: list[Share] = []
    for facts in collected.shares or []:
        if is_admin_share(facts.name) and not options.include_admin_shares:
            continue
        values = share_columns(facts, collected.share_descriptors.get(facts.name))
        values["properties"]["security_descriptor_error"] = collected.share_descriptor_errors.get(facts.name)
        share = existing.pop(facts.name, None)
        if share is None:
            share = Share(server_id=server.id, name=facts.name)
            session.add(share)
        for key, value in values.items():
            setattr(share, key, value)
        kept.append(share)
    for name, share in existing.items():
        record_event(session, "inventory.share.removed",
                     f"share {name!r} is no longer on {server.name!r} (or is now left out); "
                     "its inventory records were removed",
                     job_id=server.job_id, server_id=server.id, level=EventLevel.WARNING,
                     detail={"share": name})
        # Transfer runs' references to its records have no foreign key to cascade from
        # (common.models.UnchangedFile).
        session.execute(delete(UnchangedFile).where(UnchangedFile.record_id.in_(
            select(FileRecord.id).where(FileRecord.share_id == share.id))))
        session.delete(share)
    session.flush()
    return kept


def store_principals(session: Session, server: Server, principals: LocalPrincipals) -> int:
    """Add, update and remove the server's local users and groups to match what was read."""
    existing = {(p.kind, p.name): p for p in session.scalars(
        select(LocalPrincipal).where(LocalPrincipal.server_id == server.id))}
    wanted: list[tuple[PrincipalKind, str, dict[str, Any]]] = []
    for user in principals.users:
        wanted.append((PrincipalKind.USER, user.name, {
            "sid": user.sid or "", "description": user.description or user.full_name or "",
            "enabled": True if user.enabled is None else user.enabled, "members": []}))
    for group in principals.groups:
        wanted.append((PrincipalKind.GROUP, group.name, {
            "sid": group.sid or "", "description": group.description or "", "enabled": True,
            "members": [{"name": m.name, "sid": m.sid, "object_class": m.object_class,
                         "source": m.source} for m in group.members]}))
    for kind, name, values in wanted:
        principal = existing.pop((kind, name), None)
        if principal is None:
            principal = LocalPrincipal(server_id=server.id, kind=kind, name=name)
            session.add(principal)
        for key, value in values.items():
            setattr(principal, key, value)
    for principal in existing.values():
        session.delete(principal)
    session.flush()
    return len(wanted)


# --- the run -----------------------------------------------------------------------------

def celery_scan_publisher() -> Publisher:
    """A publisher that sends directory tasks to the orchestrator queue through Celery."""
    from common.celery_app import create_celery_app
    from orchestrator.inventory.tasks import publish_directories

    app = create_celery_app()

    def publish(tasks: list[DirectoryTask], options: ScanOptions) -> None:
        publish_directories(app, tasks, options)

    return publish


def inventory_server(session: Session, server: Server, collected: Collected,
                     options: InventoryOptions, publish: Publisher | None) -> ServerReport:
    """Store what was collected for ``server`` and start its share scans (published after
    the caller commits)."""
    store_facts(session, server, collected)
    for part, message in collected.errors.items():
        record_event(session, "inventory.server.error", message, job_id=server.job_id,
                     server_id=server.id, level=EventLevel.ERROR, detail={"part": part})
    shares = store_shares(session, server, collected, options) if collected.shares is not None else \
        list(session.scalars(select(Share).where(Share.server_id == server.id)))
    principal_count = 0
    if collected.principals is not None:
        principal_count = store_principals(session, server, collected.principals)
    scans: list[DirectoryTask] = []
    not_restarted: list[str] = []
    if options.scan_files and publish is not None:
        for share in shares:
            if share.share_type & 0xFF != SHARE_TYPE_CODES["disk"]:
                continue
            if scan_is_running(session, share.id) and not options.restart_running_scans:
                not_restarted.append(share.name)
                record_event(session, "inventory.scan.running",
                             f"share {share.name!r}: a scan is still running; not restarted",
                             job_id=server.job_id, server_id=server.id, level=EventLevel.WARNING,
                             detail={"share_id": share.id, "share": share.name})
                continue
            scans.append(start_share_scan(session, share))
            record_event(session, "inventory.scan.started", f"share {share.name!r}: file scan started",
                         job_id=server.job_id, server_id=server.id,
                         detail={"share_id": share.id, "share": share.name,
                                 "options": options.scan_options.to_dict()})
        if scans:
            scan_options = options.scan_options
            after_commit(session, lambda: publish(scans, scan_options))
    record_event(
        session, "inventory.server.completed",
        f"inventory of {server.name!r}: {len(shares)} shares, {principal_count} local principals, "
        f"{len(collected.errors)} errors",
        job_id=server.job_id, server_id=server.id,
        level=EventLevel.WARNING if collected.errors else EventLevel.INFO,
        detail={"shares": [s.name for s in shares], "errors": dict(collected.errors)},
    )
    return ServerReport(server.id, server.name, dict(collected.errors), [s.name for s in shares],
                        principal_count, [task.share_id for task in scans], not_restarted)


def run_inventory(
    job_ref: str | int,
    options: InventoryOptions = InventoryOptions(),
    *,
    url: str | None = None,
    publish: Publisher | None = None,
    management_factory=management_adapter,
    smb_factory=smb_adapter,
) -> InventoryReport:
    """Inventory every source server of a job; start the file scans of their shares.

    Servers are inventoried one after another, each stored in its own transaction; a
    failing server never stops the others. ``publish`` sends the scans' first tasks
    (default: Celery, to the orchestrator queue).
    """
    if publish is None and options.scan_files:
        publish = celery_scan_publisher()
    with session_scope(url) as session:
        job = get_job(session, job_ref)
        job_id, job_name = job.id, job.name
        server_ids = [s.id for s in list_servers(session, job, ServerRole.SOURCE)]
        advance_job(session, job_id, JobState.INVENTORY)
        record_event(session, "inventory.started",
                     f"inventory of job {job_name!r} started ({len(server_ids)} source servers)",
                     job_id=job_id, detail={"options": asdict(options)})
    reports = []
    for server_id in server_ids:
        with session_scope(url) as session:
            server = session.get(Server, server_id)
            record_event(session, "inventory.server.started", f"inventory of {server.name!r} started",
                         job_id=job_id, server_id=server_id)
        with session_scope(url) as session:
            server = session.get(Server, server_id)
        # Talk to the server outside any transaction (the loaded row stays usable).
        collected = collect(server, management_factory=management_factory, smb_factory=smb_factory)
        with session_scope(url) as session:
            server = session.get(Server, server_id)
            reports.append(inventory_server(session, server, collected, options, publish))
    return InventoryReport(job_id, job_name, reports)


def resume_scans(job_ref: str | int, *, url: str | None = None,
                 publish: Publisher | None = None) -> list[int]:
    """Publish again the directories that running scans of the job still wait for.

    A scan whose messages were lost (a worker killed holding one, a broker without
    redelivery) resumes where the database says it stands; a directory listed meanwhile
    ignores the duplicate. Each share keeps the options its scan started with. Returns
    the ids of the shares resumed.
    """
    publish = publish or celery_scan_publisher()
    resumed: list[int] = []
    with session_scope(url) as session:
        job = get_job(session, job_ref)
        batches: list[tuple[list[DirectoryTask], ScanOptions]] = []
        for server in list_servers(session, job, ServerRole.SOURCE):
            started = session.scalars(select(Event).where(
                Event.server_id == server.id, Event.kind == "inventory.scan.started").order_by(Event.id.desc())).all()
            for share in session.scalars(select(Share).where(Share.server_id == server.id)):
                tasks = pending_tasks(session, share.id)
                if not tasks:
                    continue
                options = ScanOptions.from_dict(next(
                    (e.detail.get("options") for e in started if e.detail.get("share_id") == share.id), None))
                batches.append((tasks, options))
                resumed.append(share.id)
                record_event(session, "inventory.scan.resumed",
                             f"share {share.name!r}: scan resumed ({len(tasks)} folders still to list)",
                             job_id=job.id, server_id=server.id,
                             detail={"share_id": share.id, "share": share.name, "folders": len(tasks)})

        def publish_all() -> None:
            for tasks, options in batches:
                publish(tasks, options)

        after_commit(session, publish_all)
    return resumed


def wait_for_scans(share_ids: list[int], *, timeout: float, url: str | None = None,
                   poll: float = 0.5, alive: Callable[[], bool] | None = None) -> bool:
    """Wait until every share in ``share_ids`` has finished its scan; False on timeout
    (or when ``alive`` says the worker serving the scans is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(url) as session:
            unfinished = session.scalars(
                select(Share.id).where(Share.id.in_(share_ids), Share.scanned_at.is_(None))
            ).all() if share_ids else []
        if not unfinished:
            return True
        if time.monotonic() >= deadline or (alive is not None and not alive()):
            return False
        time.sleep(poll)


# --- reading it back ---------------------------------------------------------------------

def _facts_json(facts: ServerFacts | None) -> dict[str, Any] | None:
    if facts is None:
        return None
    return {
        "collected_at": facts.collected_at.isoformat() if facts.collected_at else None,
        "hostname": facts.hostname, "domain": facts.domain, "os_name": facts.os_name,
        "os_version": facts.os_version, "machine_sid": facts.machine_sid,
        "network_adapters": facts.network_adapters, "volumes": facts.volumes, "extra": facts.extra,
    }


def share_json(session: Session, share: Share, *, error_limit: int = 100) -> dict[str, Any]:
    """One share's stored properties, scan counters and scan errors as plain data."""
    pending = pending_directories(session, share.id)
    failed = session.execute(
        select(FileRecord.relative_path, FileRecord.error_code, FileRecord.error_message)
        .where(FileRecord.share_id == share.id, FileRecord.run_id.is_(None),
               FileRecord.state == FileState.FAILED, FileRecord.error_code != PENDING)
        .order_by(FileRecord.relative_path).limit(error_limit)
    ).all()
    if share.scanned_at is not None:
        scan_state = "complete"
    elif pending:
        scan_state = "running"
    else:
        scan_state = "not scanned"
    return {
        "id": share.id, "name": share.name, "path": share.path, "remark": share.remark,
        "share_type": share.share_type, "max_uses": share.max_uses,
        "caching_mode": share.caching_mode,
        "access_based_enumeration": share.access_based_enumeration,
        "encrypt_data": share.encrypt_data, "continuously_available": share.continuously_available,
        "security_descriptor": share.security_descriptor.hex() if share.security_descriptor else None,
        "properties": share.properties,
        "scan": {
            "state": scan_state,
            "scanned_at": share.scanned_at.isoformat() if share.scanned_at else None,
            "files": share.file_count, "directories": share.directory_count,
            "bytes": share.total_bytes, "errors": scan_errors(session, share.id),
            "pending_directories": pending,
            "failed": [{"path": path, "status": code, "message": message}
                       for path, code, message in failed],
        },
    }


def inventory_view(session: Session, job_ref: str | int) -> dict[str, Any]:
    """Everything the inventory stored for a job's source servers, as plain data."""
    job = get_job(session, job_ref)
    servers = []
    for server in list_servers(session, job, ServerRole.SOURCE):
        facts = session.scalar(select(ServerFacts).where(ServerFacts.server_id == server.id)
                               .order_by(ServerFacts.id.desc()))
        shares = session.scalars(select(Share).where(Share.server_id == server.id).order_by(Share.name)).all()
        principals = session.scalars(select(LocalPrincipal).where(LocalPrincipal.server_id == server.id)
                                     .order_by(LocalPrincipal.kind, LocalPrincipal.name)).all()
        last_start = session.scalar(
            select(Event.id).where(Event.server_id == server.id, Event.kind == "inventory.server.started")
            .order_by(Event.id.desc()))
        errors = session.scalars(
            select(Event).where(Event.server_id == server.id, Event.level == EventLevel.ERROR,
                                Event.id >= (last_start or 0)).order_by(Event.id)).all()

        def principal_json(p: LocalPrincipal) -> dict[str, Any]:
            return {"name": p.name, "sid": p.sid, "description": p.description, "enabled": p.enabled,
                    "members": p.members}

        servers.append({
            **server_summary(server),
            "facts": _facts_json(facts),
            "shares": [share_json(session, share) for share in shares],
            "users": [principal_json(p) for p in principals if p.kind is PrincipalKind.USER],
            "groups": [principal_json(p) for p in principals if p.kind is PrincipalKind.GROUP],
            "errors": [{"at": e.at.isoformat() if e.at else None, "kind": e.kind, "message": e.message,
                        "detail": e.detail} for e in errors],
        })
    return {"job_id": job.id, "job": job.name, "state": job.state.value, "servers": servers}
