"""Migrate a source server's local users and groups to the destination, as SMS does.

``migrate_principals(source, destination, mode)`` reads both servers' local accounts
(``HostAdapter.local_principals``), decides for each source account what happens
(``plan_accounts``, a pure function) and carries it out on the destination:

- a source account whose name is free on the destination is **created** there, a user
  disabled with a random password that is generated for the occasion, handed to the
  destination on standard input (Samba) or generated on the destination (Windows), and
  never stored, logged or returned;
- a name already taken is **renamed** (``name-1``, ``name-2`` ...; mode ``rename``, the
  default) or **merged** with the destination's account of that name (mode ``merge``);
- built-in accounts (RID below 1000: Administrator, Guest, Domain Users ...) are merged
  with the destination's account of the same RID when it has one, never created;
- the migration's own service accounts (the accounts the transfer logs on with) are
  merged with the destination's account of the same name, never duplicated;
- an account an earlier run of the pairing already migrated (``previous`` SID map) is
  mapped to that destination account again while it still exists, so re-runs never
  create it twice;
- mode ``skip`` migrates nothing.

Groups are created with their members (the migrated users, under their destination
names). The result is a source SID -> destination SID map, which the transfer stores in
the job database (``SidMap``) for the proxy workers, and one ``AccountOutcome`` per
source account for the report.

Samba destinations are managed over SSH (``useradd``/``groupadd`` when the Unix account
is missing, ``pdbedit -a`` then ``pdbedit -c [D]``, ``net groupmap add``, ``usermod -a
-G``); Windows destinations over WinRM with one PowerShell script (``New-LocalUser
-Disabled``, ``New-LocalGroup``, ``Add-LocalGroupMember``), checked here against
recorded outputs only. This module must never log, store or return a password, and
never change or delete an account that already existed on the destination.
"""

from __future__ import annotations

import logging
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from orchestrator.hosts import HostAdapter, HostError
from orchestrator.hosts.facts import LocalPrincipals
from orchestrator.hosts.samba_ssh import SambaSshHost
from orchestrator.hosts.windows_shares import ps_quote
from orchestrator.hosts.windows_winrm import WindowsWinRmHost, load_ps_json

log = logging.getLogger(__name__)

MODES = ("rename", "merge", "skip")
FIRST_ORDINARY_RID = 1000
_LOCAL_SID = re.compile(r"^S-1-5-21-\d+-\d+-\d+-(\d+)$")
_USER_SID = re.compile(r"User SID:\s+(S-1-\S+)")


class PrincipalError(HostError):
    """An account could not be created on the destination."""


@dataclass
class AccountOutcome:
    """What happened to one source account: ``status`` is created, renamed (created under
    another name), merged (mapped to an existing account), skipped or failed."""

    kind: str
    source_name: str
    source_sid: str | None
    status: str
    destination_name: str | None = None
    destination_sid: str | None = None
    reason: str = ""
    members: list[str] = field(default_factory=list)  # groups: destination user names

    def to_json(self) -> dict:
        """Plain JSON for ``SidMap.accounts``."""
        return asdict(self)


@dataclass
class PrincipalMigration:
    """The SID map the copy uses and what happened to each account."""

    sid_map: dict[str, str]
    accounts: list[AccountOutcome]


def _rid(sid: str | None) -> int | None:
    match = _LOCAL_SID.match(sid or "")
    return int(match.group(1)) if match else None


def _free_name(name: str, taken: set[str]) -> str:
    number = 1
    while f"{name}-{number}".casefold() in taken:
        number += 1
    return f"{name}-{number}"


def plan_accounts(source: LocalPrincipals, destination: LocalPrincipals, mode: str,
                  unavailable_names: set[str] = frozenset(),
                  service_accounts: set[str] = frozenset(),
                  previous: dict[str, str] | None = None) -> list[AccountOutcome]:
    """Decide what happens to each source account (nothing is changed here).

    Outcomes have status created / renamed (to be created under ``destination_name``) /
    merged (``destination_sid`` set) / skipped. ``unavailable_names`` are further names a
    renamed account must not take (e.g. Unix accounts of the destination host);
    ``service_accounts`` (the migration's logon accounts) are merged by name, whatever
    the mode; ``previous`` (source SID -> destination SID of earlier runs) maps accounts
    already migrated to the same destination account while it exists.
    """
    present = {p.sid: p.name for p in [*destination.users, *destination.groups] if p.sid}
    earlier = {sid: target for sid, target in (previous or {}).items() if target in present}
    service = {name.casefold() for name in service_accounts if name}
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if mode == "skip":
        return []
    existing = {p.name.casefold(): p for p in [*destination.users, *destination.groups]}
    taken = set(existing) | {name.casefold() for name in unavailable_names}
    by_rid: dict[int, str] = {}
    for principal in [*destination.users, *destination.groups]:
        rid = _rid(principal.sid)
        if rid is not None and rid < FIRST_ORDINARY_RID:
            by_rid[rid] = principal.sid
    outcomes: list[AccountOutcome] = []
    renamed: dict[str, str] = {}
    for kind, principal in [("user", u) for u in source.users] + [("group", g) for g in source.groups]:
        outcome = AccountOutcome(kind, principal.name, principal.sid, "skipped")
        outcomes.append(outcome)
        rid = _rid(principal.sid)
        if rid is None:
            outcome.reason = ("not a local account of the source (built-in or well-known SIDs mean "
                              "the same everywhere; an unmapped Unix group has no SID)")
            continue
        if rid < FIRST_ORDINARY_RID:
            if rid in by_rid:
                outcome.status, outcome.destination_sid = "merged", by_rid[rid]
                outcome.reason = f"built-in account: mapped to the destination's RID {rid}"
            else:
                outcome.reason = f"built-in account (RID {rid}) the destination does not have"
            continue
        if principal.sid in earlier:
            outcome.status, outcome.destination_sid = "merged", earlier[principal.sid]
            outcome.destination_name = present[earlier[principal.sid]]
            outcome.reason = "migrated by an earlier run of this pairing"
            if kind == "user":
                renamed[principal.name.casefold()] = outcome.destination_name
            continue
        match = existing.get(principal.name.casefold())
        if match is not None and (mode == "merge" or principal.name.casefold() in service):
            outcome.status, outcome.destination_name = "merged", match.name
            outcome.destination_sid = match.sid
            outcome.reason = f"merged with the destination's {kind} of the same name"
            if principal.name.casefold() in service:
                outcome.reason += " (the migration's own account)"
            continue
        if match is not None or principal.name.casefold() in taken:
            outcome.status = "renamed"
            outcome.destination_name = _free_name(principal.name, taken)
            outcome.reason = f"the destination already has {principal.name!r}: created as " \
                             f"{outcome.destination_name!r}"
        else:
            outcome.status, outcome.destination_name = "created", principal.name
        taken.add(outcome.destination_name.casefold())
        if kind == "user":
            renamed[principal.name.casefold()] = outcome.destination_name
    for outcome, group in zip(outcomes[len(source.users):], source.groups):
        if outcome.status in ("created", "renamed"):
            outcome.members = [renamed[m.name.casefold()] for m in group.members
                               if m.name and m.name.casefold() in renamed]
    return outcomes


def _random_password() -> str:
    """A throw-away password meeting Windows' and Samba's complexity rules."""
    return secrets.token_urlsafe(24) + "aA1!"


# --- Samba over SSH ------------------------------------------------------------------------

class _SambaAccounts:
    """Creates accounts on a Samba destination through its SSH adapter."""

    def __init__(self, host: SambaSshHost):
        self.host = host

    def unix_names(self) -> set[str]:
        """Names of the destination host's Unix users and groups (a renamed account avoids them)."""
        names = set()
        for database in ("passwd", "group"):
            _, out, _ = self.host.run(["getent", database], check=False)
            names |= {line.split(":", 1)[0] for line in out.splitlines() if line}
        return names

    def _exists(self, database: str, name: str) -> bool:
        return self.host.run(["getent", database, name], check=False)[0] == 0

    def create_user(self, outcome: AccountOutcome) -> str:
        name = outcome.destination_name
        if not self._exists("passwd", name):
            self.host.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                           "--", name])
        password = _random_password()
        self.host.run(self.host._samba("pdbedit", "-a", "-t", "-u", name),
                      input=f"{password}\n{password}\n".encode())
        self.host.run(self.host._samba("pdbedit", "-r", "-c", "[D]", "-u", name))
        out = self.host.run(self.host._samba("pdbedit", "-L", "-v", "-u", name))[1]
        match = _USER_SID.search(out)
        if match is None:
            raise PrincipalError(self.host.host, f"pdbedit shows no SID for the new account {name!r}")
        return match.group(1)

    def create_group(self, outcome: AccountOutcome) -> str:
        name = outcome.destination_name
        if not self._exists("group", name):
            self.host.run(["groupadd", "--system", "--", name])
        self.host.run(self.host._samba("net", "groupmap", "add", f"ntgroup={name}", f"unixgroup={name}",
                                       "type=domain"))
        for member in outcome.members:
            self.host.run(["usermod", "-a", "-G", name, "--", member])
        for group in self.host.local_principals().groups:
            if group.name == name and group.sid:
                return group.sid
        raise PrincipalError(self.host.host, f"net groupmap shows no SID for the new group {name!r}")


# --- Windows over WinRM --------------------------------------------------------------------

WINDOWS_ACCOUNT_SCRIPT = r"""
$results = @()
function New-MigratedPassword {
    $bytes = New-Object byte[] 24
    [System.Security.Cryptography.RandomNumberGenerator]::Create().GetBytes($bytes)
    ConvertTo-SecureString ([Convert]::ToBase64String($bytes) + 'aA1!') -AsPlainText -Force
}
function Add-Result($kind, $name, $sid, $err) {
    $script:results += [pscustomobject]@{ Kind = $kind; Name = $name; SID = $sid; Error = $err }
}
"""


def windows_accounts_script(outcomes: list[AccountOutcome]) -> str:
    """The PowerShell that creates the planned accounts (status created or renamed).

    Users: ``New-LocalUser -Disabled`` with a password generated on the destination
    (never sent); groups: ``New-LocalGroup`` then ``Add-LocalGroupMember`` per member.
    Each account is tried on its own (one failing never stops the others); the script
    prints a JSON list of {Kind, Name, SID, Error}.
    """
    lines = [WINDOWS_ACCOUNT_SCRIPT]
    for outcome in outcomes:
        if outcome.status not in ("created", "renamed"):
            continue
        name = ps_quote(outcome.destination_name)
        kind = ps_quote(outcome.kind)
        if outcome.kind == "user":
            action = (f"$a = New-LocalUser -Name {name} -Password (New-MigratedPassword) -Disabled "
                      f"-Description {ps_quote('migrated from ' + outcome.source_name)} -ErrorAction Stop")
        else:
            action = (f"$a = New-LocalGroup -Name {name} "
                      f"-Description {ps_quote('migrated from ' + outcome.source_name)} -ErrorAction Stop")
            for member in outcome.members:
                action += f"; Add-LocalGroupMember -Group {name} -Member {ps_quote(member)} -ErrorAction Stop"
        lines.append(f"try {{ {action}; Add-Result {kind} {name} $a.SID.Value $null }} "
                     f"catch {{ Add-Result {kind} {name} $null $_.Exception.Message }}")
    lines.append("ConvertTo-Json -InputObject @($results) -Depth 3")
    return "\n".join(lines)


def parse_windows_accounts_output(text: str | bytes) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    """{(kind, name): (SID, error)} from the script's JSON output."""
    return {(item["Kind"], item["Name"]): (item.get("SID") or None, item.get("Error") or None)
            for item in load_ps_json(text, "account creation")}


# --- the migration -------------------------------------------------------------------------

def _apply_samba(host: SambaSshHost, outcomes: list[AccountOutcome]) -> None:
    accounts = _SambaAccounts(host)
    for outcome in outcomes:
        if outcome.status not in ("created", "renamed"):
            continue
        try:
            create = accounts.create_user if outcome.kind == "user" else accounts.create_group
            outcome.destination_sid = create(outcome)
        except HostError as exc:
            outcome.status, outcome.reason = "failed", f"could not be created on {host.host}: {exc}"
            log.warning("%s %s: %s", outcome.kind, outcome.source_name, outcome.reason)


def _apply_windows(host: WindowsWinRmHost, outcomes: list[AccountOutcome]) -> None:
    if not any(o.status in ("created", "renamed") for o in outcomes):
        return
    results = parse_windows_accounts_output(host.run_script("accounts", windows_accounts_script(outcomes)))
    for outcome in outcomes:
        if outcome.status not in ("created", "renamed"):
            continue
        sid, error = results.get((outcome.kind, outcome.destination_name), (None, "not reported"))
        if sid:
            outcome.destination_sid = sid
        else:
            outcome.status, outcome.reason = "failed", f"could not be created on {host.host}: {error}"


def migrate_principals(source: HostAdapter, destination: HostAdapter, mode: str,
                       service_accounts: set[str] = frozenset(),
                       previous: dict[str, str] | None = None) -> PrincipalMigration:
    """Create the source's local users and groups on ``destination`` (see the module
    docstring) and return the SID map with one outcome per account. ``service_accounts``
    are the migration's logon accounts (merged by name, never duplicated); ``previous``
    the SID map of the pairing's earlier runs (those accounts are not created again).

    Raises HostError when either side's accounts cannot be read, or the destination is
    neither a Samba-over-SSH nor a Windows-over-WinRM host.
    """
    if mode == "skip":
        return PrincipalMigration({}, [])
    if not isinstance(destination, (SambaSshHost, WindowsWinRmHost)):
        raise HostError(destination.host, "local accounts can only be created on a Samba (SSH) or "
                                          "Windows (WinRM) destination")
    # Both hosts are read at once: each read is several commands of tens of milliseconds.
    with ThreadPoolExecutor(3, thread_name_prefix="sms-accounts") as pool:
        source_reading = pool.submit(source.local_principals)
        destination_reading = pool.submit(destination.local_principals)
        unix_reading = pool.submit(_SambaAccounts(destination).unix_names) \
            if isinstance(destination, SambaSshHost) else None
    source_accounts, destination_accounts = source_reading.result(), destination_reading.result()
    unix = unix_reading.result() if unix_reading is not None else set()
    outcomes = plan_accounts(source_accounts, destination_accounts, mode, unix, service_accounts, previous)
    if isinstance(destination, SambaSshHost):
        _apply_samba(destination, outcomes)
    else:
        _apply_windows(destination, outcomes)
    sid_map = {o.source_sid: o.destination_sid for o in outcomes
               if o.source_sid and o.destination_sid and o.status in ("created", "renamed", "merged")
               and o.source_sid != o.destination_sid}
    return PrincipalMigration(sid_map, outcomes)


__all__ = [
    "MODES",
    "AccountOutcome",
    "PrincipalMigration",
    "migrate_principals",
    "parse_windows_accounts_output",
    "plan_accounts",
    "windows_accounts_script",
]
