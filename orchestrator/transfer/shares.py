"""Recreate a pairing's source shares on the destination, with their settings and permissions.

``recreate_shares`` takes each chosen source share, maps its folder to the destination
with the pairing's path mapping (``map_path``: the longest matching source prefix wins;
Windows paths with drive letters or UNC prefixes compare case-insensitively, POSIX paths
exactly, always on whole path components), translates the SIDs of its share permissions
with an optional ``sid_map`` (``translate_share``), creates the folder and then the share
through the destination's host adapter (``ensure_directory``, ``create_share``), and
reports one ``ShareOutcome`` per share: created, updated, skipped or failed, with a
reason an administrator can act on. One share failing never stops the others.

Well-known SIDs (Everyone, BUILTIN\\..., NT AUTHORITY\\...) mean the same on every host and
are kept as they are. Machine or domain SIDs (S-1-5-21-...) and Samba's Unix SIDs
(S-1-22-...) are translated when ``sid_map`` names them; otherwise they are kept and
reported, with "local to the source" when the source's own accounts show it.

The share's root folder security (NTFS/POSIX ACL of the folder) is the copy engine's
business, not this module's. This module must never put a credential in an outcome or a
log, never create a share whose folder could not be created, and never let one share's
failure stop the others.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from orchestrator.hosts import HostAdapter, HostError, ShareExists
from orchestrator.hosts.facts import ShareFacts

log = logging.getLogger(__name__)

_SID = re.compile(r"S-1-\d+(?:-\d+)+")
_DRIVE = re.compile(r"^[A-Za-z]:")
# SIDs whose meaning depends on the machine or domain that issued them.
_HOST_BOUND_SID_PREFIXES = ("S-1-5-21-", "S-1-22-")


class PathNotMapped(ValueError):
    """No entry of the path mapping covers a source folder."""


@dataclass
class ShareOutcome:
    """What happened to one share: ``status`` is created, updated, skipped or failed.

    ``reason`` is one sentence for an administrator; ``notes`` list what was not carried
    over as is (parameters left out, SIDs kept untranslated, entries approximated).
    """

    name: str
    status: str
    reason: str
    source_path: str | None = None
    destination_path: str | None = None
    notes: list[str] = field(default_factory=list)


def _is_windows_path(path: str) -> bool:
    return bool(_DRIVE.match(path)) or path.startswith("\\\\") or ("\\" in path and "/" not in path)


def _components(path: str) -> list[str]:
    """Path split into components; a Windows path's first component is its drive or UNC root."""
    if _is_windows_path(path):
        parts = [p for p in path.replace("/", "\\").split("\\") if p]
        if path.startswith("\\\\"):
            parts[:2] = ["\\\\" + "\\".join(parts[:2])]
        return parts
    return [""] + [p for p in path.split("/") if p] if path.startswith("/") else [p for p in path.split("/") if p]


def _join(prefix: str, rest: list[str]) -> str:
    """``prefix`` extended by ``rest`` in the prefix's own path style."""
    if not rest:
        return prefix
    if _is_windows_path(prefix):
        return prefix.rstrip("\\/") + "\\" + "\\".join(rest)
    return prefix.rstrip("/") + "/" + "/".join(rest)


def map_path(source_path: str, path_mapping: Mapping[str, str]) -> str:
    """The destination folder of ``source_path`` under ``path_mapping`` ({source prefix: destination prefix}).

    The longest source prefix that covers whole components of ``source_path`` wins
    (``/srv/data`` covers ``/srv/data/fin`` but not ``/srv/database``); Windows prefixes
    compare case-insensitively and accept ``/`` or ``\\``. The remainder is appended in
    the destination prefix's style. Raises ``PathNotMapped`` when nothing covers it.
    """
    source = _components(source_path)
    windows = _is_windows_path(source_path)
    best: tuple[int, str] | None = None
    for source_prefix, destination_prefix in path_mapping.items():
        if _is_windows_path(source_prefix) != windows:
            continue
        prefix = _components(source_prefix)
        head = source[: len(prefix)]
        same = [a.casefold() for a in head] == [b.casefold() for b in prefix] if windows else head == prefix
        if len(prefix) <= len(source) and same and (best is None or len(prefix) > best[0]):
            best = (len(prefix), destination_prefix)
    if best is None:
        raise PathNotMapped(
            f"no entry of the pairing's path mapping covers {source_path!r}; "
            "add one (source prefix -> destination prefix)"
        )
    return _join(best[1], source[best[0]:])


def translate_share(share: ShareFacts, sid_map: Mapping[str, str] | None) -> tuple[ShareFacts, list[str]]:
    """A copy of ``share`` with its permission SIDs translated by ``sid_map``, and the
    host-bound SIDs that were kept untranslated (for the report).

    Translates SIDs inside the SDDL and in each access entry (by SID, or by trustee name
    for sources that report names only). Well-known SIDs are never reported.
    """
    mapping = dict(sid_map or {})
    kept: list[str] = []

    def translate(sid: str) -> str:
        if sid in mapping:
            return mapping[sid]
        if sid.startswith(_HOST_BOUND_SID_PREFIXES) and sid not in kept:
            kept.append(sid)
        return sid

    sddl = _SID.sub(lambda m: translate(m.group(0)), share.sddl) if share.sddl else share.sddl
    access = []
    for entry in share.access:
        if entry.sid:
            sid = translate(entry.sid)
            trustee = sid if entry.trustee == entry.sid else entry.trustee
            access.append(dataclasses.replace(entry, sid=sid, trustee=trustee))
        else:
            access.append(dataclasses.replace(entry, trustee=mapping.get(entry.trustee, entry.trustee)))
    return dataclasses.replace(share, sddl=sddl, access=access), kept


def _source_local_domains(source: HostAdapter) -> set[str]:
    """Domain parts (SID minus its last RID) of the source's local accounts; empty if unknown."""
    try:
        principals = source.local_principals()
    except HostError as exc:
        log.info("local accounts of %s unknown (%s); untranslated SIDs reported without that detail",
                 source.host, exc)
        return set()
    sids = [p.sid for p in [*principals.users, *principals.groups] if p.sid]
    return {sid.rsplit("-", 1)[0] for sid in sids if sid.startswith("S-1-5-21-")}


def _kept_notes(kept: list[str], local_domains: set[str]) -> list[str]:
    notes = []
    for sid in kept:
        if sid.rsplit("-", 1)[0] in local_domains or sid.startswith("S-1-22-"):
            notes.append(
                f"share permission SID {sid} is local to the source and was kept untranslated: it names nothing "
                "on the destination; add it to the SID map"
            )
        else:
            notes.append(
                f"share permission SID {sid} kept untranslated (right for a domain account; orphaned if it was "
                "local to the source; add it to the SID map otherwise)"
            )
    return notes


def _reason(exc: HostError) -> str:
    """A host error's text without the leading ``host:`` (the outcome already says where)."""
    text = str(exc)
    prefix = f"{exc.host}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def recreate_shares(
    source_adapter: HostAdapter,
    destination_adapter: HostAdapter,
    shares: Iterable[ShareFacts | str],
    path_mapping: Mapping[str, str],
    sid_map: Mapping[str, str] | None = None,
    *,
    replace: bool = False,
) -> list[ShareOutcome]:
    """Create each source share on the destination with its settings and share permissions.

    ``shares`` are ShareFacts from the source's inventory, or share names (then read from
    ``source_adapter``). ``path_mapping`` maps source folder prefixes to destination
    ones, ``sid_map`` source SIDs to destination SIDs. An existing destination share of
    the same name fails the share unless ``replace`` (then it is updated: re-runs).
    Special shares (IPC$, ADMIN$, printers, homes ...) are skipped. When names are given
    and the source's shares cannot be read, that ``HostError`` is raised: no share can be
    recreated then.
    """
    chosen = list(shares)
    inventory: dict[str, ShareFacts] = {}
    if any(isinstance(s, str) for s in chosen):
        inventory = {s.name.lower(): s for s in source_adapter.shares()}
    outcomes: list[ShareOutcome] = []
    local_domains: set[str] | None = None
    destination = destination_adapter.host
    for item in chosen:
        if isinstance(item, str):
            share = inventory.get(item.lower())
            if share is None:
                reason = f"the source {source_adapter.host} has no share {item!r}"
                outcomes.append(ShareOutcome(item, "failed", reason))
                continue
        else:
            share = item
        outcome = ShareOutcome(share.name, "failed", "", source_path=share.path)
        outcomes.append(outcome)
        if share.special or share.share_type not in (None, "disk"):
            outcome.status = "skipped"
            outcome.reason = "special or non-disk share (IPC$, administrative, printer, homes): not recreated"
            continue
        if not share.path:
            outcome.reason = "the source reported no folder for this share"
            continue
        try:
            outcome.destination_path = map_path(share.path, path_mapping)
        except PathNotMapped as exc:
            outcome.reason = str(exc)
            continue
        translated, kept = translate_share(share, sid_map)
        if kept:
            if local_domains is None:
                local_domains = _source_local_domains(source_adapter)
            outcome.notes += _kept_notes(kept, local_domains)
        try:
            destination_adapter.ensure_directory(outcome.destination_path)
        except HostError as exc:
            outcome.reason = (
                f"folder {outcome.destination_path} could not be created on {destination}: {_reason(exc)}"
            )
            log.warning("share %s: %s", share.name, outcome.reason)
            continue
        try:
            result = destination_adapter.create_share(translated, outcome.destination_path, replace=replace)
        except ShareExists as exc:
            where = f" on folder {exc.path}" if exc.path else ""
            outcome.reason = (
                f"{destination} already has a share named {share.name!r}{where}; nothing was changed "
                "(recreate with replace to update it)"
            )
            log.warning("share %s: %s", share.name, outcome.reason)
            continue
        except HostError as exc:
            outcome.reason = f"share could not be created on {destination}: {_reason(exc)}"
            log.warning("share %s: %s", share.name, outcome.reason)
            continue
        outcome.status = result.action
        outcome.reason = f"{result.action} on {destination} at {outcome.destination_path}"
        outcome.notes += result.notes
        log.info("share %s: %s", share.name, outcome.reason)
    return outcomes
