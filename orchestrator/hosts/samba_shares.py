"""What a share becomes on a Samba destination: smb.conf parameters, section text, ACL.

Pure functions used by ``SambaSshHost.create_share``; nothing here talks to a host.

- ``carried_parameters`` turns a source share (a Samba share with every effective
  smb.conf parameter, or a Windows / SMB-only share with SMS's typed fields) into the
  parameters to write on the destination: every share-level parameter except those in
  ``NOT_CARRIED`` (bound to the source host, or meaningless for a disk share), and only
  where the value differs from what a new share inherits on the destination. The
  destination's effective value therefore equals the source's for every carried
  parameter, whatever the two servers' [global] sections say.
- ``section_text`` and ``splice_section`` build the ``[share]`` section and put it into
  an smb.conf text (appended, or replacing the share's own section in place).
- ``sharesec_arguments`` gives the ``sharesec`` arguments that set the share permissions
  from the source's SDDL (exact), else from its access entries.
- ``EDIT_CONF_SCRIPT`` and ``IMPORT_REGISTRY_SCRIPT`` are the fixed POSIX shell scripts
  run on the destination; every variable part reaches them as a positional argument
  (quoted by the adapter) or on standard input, never spliced into the script text.

This module must never run a command, and must never let a value that smb.conf cannot
hold (a line break, a trailing backslash that would join the next line) into a section.
"""

from __future__ import annotations

import re

from orchestrator.hosts.facts import ShareFacts

# Share-level parameters that are not carried over, and why (docs/share-recreation.md).
_RUNS_A_PROGRAM = "runs a program on the source host; copy the program and set it by hand if wanted"
_PRINTING = "printing parameter; only disk shares are recreated"
NOT_CARRIED: dict[str, str] = {
    "path": "replaced by the mapped destination folder",
    "copy": "copies another section of the source's smb.conf; its effect is already in the values",
    "include": "includes a file of the source host; its effect is already in the values",
    "-valid": "Samba-internal marker, not a setting",
    "preexec": _RUNS_A_PROGRAM,
    "exec": _RUNS_A_PROGRAM,
    "postexec": _RUNS_A_PROGRAM,
    "root preexec": _RUNS_A_PROGRAM,
    "root postexec": _RUNS_A_PROGRAM,
    "preexec close": "belongs to preexec, which is not carried",
    "root preexec close": "belongs to root preexec, which is not carried",
    "magic script": _RUNS_A_PROGRAM,
    "magic output": "belongs to magic script, which is not carried",
    "dfree command": _RUNS_A_PROGRAM,
    "cups options": _PRINTING,
    "default devmode": _PRINTING,
    "force printername": _PRINTING,
    "lppause command": _PRINTING,
    "lpq command": _PRINTING,
    "lpresume command": _PRINTING,
    "lprm command": _PRINTING,
    "max print jobs": _PRINTING,
    "max reported print jobs": _PRINTING,
    "min print space": _PRINTING,
    "printable": _PRINTING,
    "print command": _PRINTING,
    "printer name": _PRINTING,
    "printing": _PRINTING,
    "printjob username": _PRINTING,
    "print notify backchannel": _PRINTING,
    "queuepause command": _PRINTING,
    "queueresume command": _PRINTING,
    "use client driver": _PRINTING,
}

# Characters Samba refuses in a share name (source3 INVALID_SHARENAME_CHARS) plus the
# brackets that delimit a section.
INVALID_NAME_CHARACTERS = set('%<>*?|/\\+=;:",[]')

# Canonical names of newer Samba releases, and the name an older destination knows.
OLDER_NAMES = {"server smb encrypt": "smb encrypt"}
CACHING_MODE_TO_CSC = {"None": "disable", "Manual": "manual", "Documents": "documents", "Programs": "programs"}
_SECTION = re.compile(r"^\s*\[([^\]]*)\]")
_INCLUDE_REGISTRY = re.compile(r"^\s*include\s*=\s*registry\s*$", re.IGNORECASE | re.MULTILINE)
SHARESEC_RIGHT = {"Full": "FULL", "Change": "CHANGE", "Read": "READ"}


def check_share_name(name: str) -> None:
    """Raise ValueError when Samba cannot hold ``name`` as a share name."""
    bad = sorted({c for c in name if c in INVALID_NAME_CHARACTERS or ord(c) < 32})
    if not name.strip() or bad:
        shown = ", ".join(repr(c) for c in bad) or "an empty name"
        raise ValueError(f"share name {name!r} cannot be used on Samba ({shown})")
    if len(name.encode("utf-8")) > 80:
        raise ValueError(f"share name {name!r} is longer than Samba accepts (80 bytes)")


def check_value(parameter: str, value: str) -> None:
    """Raise ValueError when ``value`` cannot be written on one smb.conf line."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"value of {parameter!r} contains a line break, which smb.conf cannot hold")
    if value.rstrip().endswith("\\"):
        raise ValueError(
            f"value of {parameter!r} ends with a backslash, which smb.conf reads as 'continue on the next line'"
        )


def is_samba_share(share: ShareFacts) -> bool:
    """True when ``share.properties`` holds smb.conf parameters (a Samba source)."""
    return "read only" in share.properties and "path" in share.properties


def typed_parameters(share: ShareFacts) -> tuple[dict[str, str], list[str]]:
    """smb.conf parameters for a share known only by SMS's typed fields (Windows, SMB only)."""
    params: dict[str, str] = {"comment": share.description or "", "read only": "No"}
    notes: list[str] = []
    if share.folder_enumeration_mode is not None:
        params["access based share enum"] = "Yes" if share.folder_enumeration_mode == "AccessBased" else "No"
    if share.caching_mode in CACHING_MODE_TO_CSC:
        params["csc policy"] = CACHING_MODE_TO_CSC[share.caching_mode]
    elif share.caching_mode is not None:
        notes.append(f"caching mode {share.caching_mode} has no Samba equivalent; Samba's default kept")
    if share.concurrent_user_limit is not None:
        params["max connections"] = str(share.concurrent_user_limit)
    if share.encrypt_data:
        params["server smb encrypt"] = "required"
    if share.continuously_available:
        notes.append("continuously available: Samba without CTDB has no equivalent; not carried")
    if share.scope_name and share.scope_name != "*":
        notes.append(
            f"scope name {share.scope_name!r} not carried: the share is created for every name of the server"
        )
    return params, notes


def carried_parameters(
    share: ShareFacts, *, known: set[str], inherited: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The parameters to write for ``share`` on a destination, and notes on what was left out.

    ``known`` are the destination Samba's share-level parameter names, ``inherited`` the
    value a new share gets there for each (its [global] section and defaults). A value
    equal to the inherited one is not written; the effective value is the same.
    """
    if is_samba_share(share):
        source = dict(share.properties)
        notes: list[str] = []
    else:
        source, notes = typed_parameters(share)
    params: dict[str, str] = {}
    for name, value in source.items():
        value = "" if value is None else str(value)
        if name not in known and OLDER_NAMES.get(name) in known:
            name = OLDER_NAMES[name]
        if name in NOT_CARRIED:
            if name != "path" and value != inherited.get(name, ""):
                notes.append(f"not carried: {name} = {value} ({NOT_CARRIED[name]})")
            continue
        if name not in known and ":" not in name:
            notes.append(f"not carried: {name} = {value} (the destination's Samba has no such share parameter)")
            continue
        if inherited.get(name) == value:
            continue
        check_value(name, value)
        params[name] = value
    return params, notes


def section_text(name: str, path: str, params: dict[str, str]) -> str:
    """The smb.conf section of a share: ``[name]``, its path, then its parameters."""
    check_share_name(name)
    check_value("path", path)
    lines = [f"[{name}]", f"\tpath = {path}"]
    lines += [f"\t{key} = {value}" for key, value in params.items()]
    return "\n".join(lines) + "\n"


def _blank_or_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith(("#", ";"))


def section_span(conf_text: str, name: str) -> tuple[int, int] | None:
    """Line range [start, end) of section ``name`` (case-insensitive) in an smb.conf text.

    The range runs from the header to the next header, leaving out the blank and comment
    lines just before the next header (they usually describe that section).
    """
    lines = conf_text.splitlines(keepends=True)
    start = None
    for index, line in enumerate(lines):
        match = _SECTION.match(line)
        if not match:
            continue
        if start is not None:
            end = index
            while end > start + 1 and _blank_or_comment(lines[end - 1]):
                end -= 1
            return start, end
        if match.group(1).strip().lower() == name.lower():
            start = index
    return (start, len(lines)) if start is not None else None


def splice_section(conf_text: str, name: str, section: str) -> str:
    """``conf_text`` with share ``name``'s section replaced by ``section``, or appended."""
    lines = conf_text.splitlines(keepends=True)
    span = section_span(conf_text, name)
    if span is None:
        head = conf_text if not conf_text or conf_text.endswith("\n") else conf_text + "\n"
        return head + "\n" + section
    start, end = span
    return "".join(lines[:start]) + section + "".join(lines[end:])


def uses_registry_shares(conf_text: str, global_parameters: dict[str, str]) -> bool:
    """True when Samba reads shares from its registry (``net conf``) on this host."""
    return (
        global_parameters.get("registry shares", "").lower() in ("yes", "true", "1")
        or global_parameters.get("config backend", "").lower() == "registry"
        or bool(_INCLUDE_REGISTRY.search(conf_text))
    )


def _sharesec_ace(entry) -> str:
    kind = {"Allow": "ALLOWED", "Deny": "DENIED"}.get(entry.access_type)
    if kind is None:
        raise ValueError(f"share permission entry for {entry.trustee!r} has unknown type {entry.access_type!r}")
    if entry.mask is not None:
        mask = f"0x{entry.mask:08x}"
    elif entry.right in SHARESEC_RIGHT:
        mask = SHARESEC_RIGHT[entry.right]
    else:
        raise ValueError(f"share permission entry for {entry.trustee!r} has no mask and right {entry.right!r}")
    trustee = entry.sid or entry.trustee
    if any(c in trustee for c in ",\n"):
        raise ValueError(f"trustee {trustee!r} cannot be written in a sharesec ACL")
    return f"{trustee}:{kind}/0x{entry.flags:x}/{mask}"


def sharesec_arguments(share: ShareFacts) -> tuple[list[str] | None, list[str]]:
    """``sharesec`` arguments that set ``share``'s permissions, and notes.

    The SDDL is used when the source gave one (byte-for-byte the same descriptor on a
    Samba destination); else the access entries (``--replace`` ACL, masks as given or
    FULL/CHANGE/READ). None when the source reported no permissions at all.
    """
    if share.sddl:
        check_value("share permissions", share.sddl)
        return ["--setsddl", share.sddl], []
    if share.access:
        return ["--replace", ",".join(_sharesec_ace(entry) for entry in share.access)], []
    return None, ["the source reported no share permissions; the destination's default (Everyone: Full) applies"]


# Run as: sh -c EDIT_CONF_SCRIPT sh CONF EXPECTED_SHA256 TESTPARM; new smb.conf text on stdin.
# Holds a lock on the config's directory, refuses if smb.conf changed since it was read,
# checks the new text with testparm, keeps the previous file as CONF.sms-previous and
# swaps the new one in with a rename (same owner and mode), so smbd never sees half a file.
EDIT_CONF_SCRIPT = r"""set -eu
conf=$1 expected=$2 testparm=$3
exec 9<"$(dirname -- "$conf")"
flock -w 30 9 || { echo "another change to $conf is in progress; try again" >&2; exit 75; }
tmp=$(mktemp "$conf.sms-XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat >"$tmp"
current=$(sha256sum <"$conf" | cut -d' ' -f1)
if [ "$current" != "$expected" ]; then
  echo "$conf changed while the share was being prepared; nothing was written, try again" >&2
  exit 75
fi
if ! err=$("$testparm" -s "$tmp" 2>&1 >/dev/null); then
  printf '%s\n' "$err" "the new smb.conf did not pass testparm; nothing was written" >&2
  exit 65
fi
case $err in *"nknown parameter"*)
  printf '%s\n' "$err" "the new smb.conf has an unknown parameter; nothing was written" >&2
  exit 65;;
esac
chown --reference="$conf" -- "$tmp"
chmod --reference="$conf" -- "$tmp"
cp -p -- "$conf" "$conf.sms-previous"
mv -f -- "$tmp" "$conf"
trap - EXIT
"""

# Run as: sh -c IMPORT_REGISTRY_SCRIPT sh SHARE NET [-s CONF]; the share's section on stdin.
# ``net conf import FILE SHARE`` replaces (or creates) the share in Samba's registry in
# one transaction: it appears with all its parameters at once, or not at all.
IMPORT_REGISTRY_SCRIPT = r"""set -eu
share=$1
shift
tmp=$(mktemp)
trap 'rm -f -- "$tmp"' EXIT
cat >"$tmp"
"$@" conf import "$tmp" "$share"
"""
