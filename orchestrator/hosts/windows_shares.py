"""PowerShell that recreates a share on a Windows Server destination, and what it prints.

Used by ``WindowsWinRmHost.ensure_directory`` and ``create_share``. The script:

1. looks for a share of that name; if there is one and replacing was not asked for, it
   prints ``{"Action": "exists", "Path": ...}`` and changes nothing;
2. otherwise creates it with ``New-SmbShare -Name -Path -Description
   -FolderEnumerationMode -CachingMode -ConcurrentUserLimit -EncryptData
   -ContinuouslyAvailable`` (or, replacing a share on the same folder, applies the same
   settings with ``Set-SmbShare``; on another folder it removes and recreates it);
3. revokes every existing share permission entry (New-SmbShare's default Everyone: Read
   included, Deny entries with Unblock-SmbShareAccess), then applies the source's
   entries with ``Grant-SmbShareAccess`` / ``Block-SmbShareAccess``; SIDs are turned into
   account names on the destination (``SecurityIdentifier.Translate``);
4. optionally (``path_acl_from_share``) runs ``Set-SmbPathAcl``, which overwrites the
   folder's NTFS ACL with one derived from the share permissions; off by default because
   the transfer gives the share's root folder the source root's own security;
5. prints the share and its permissions as Get-SmbShare / Get-SmbShareAccess report
   them, so the caller sees what the server really holds.

Every value from the source (name, path, description, account) enters the script as a
PowerShell single-quoted literal built by ``ps_quote`` (each quote character doubled,
including the typographic ones PowerShell also treats as quotes); nothing from the source
is ever placed in code position. This module must never put a credential in a script and
never run anything itself. Unverified against a real Windows server (docs/share-recreation.md).
"""

from __future__ import annotations

import json

from orchestrator.hosts.facts import ShareFacts
from orchestrator.hosts.windows_winrm import SHARE_PROPERTIES, load_ps_json, parse_shares

# Characters PowerShell's tokenizer treats as a single quote (ASCII and U+2018..U+201B).
PS_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"
# Characters Windows refuses in a share name.
INVALID_NAME_CHARACTERS = set('"/\\[]:|<>+=;,?*')
FOLDER_ENUMERATION_MODES = {"AccessBased", "Unrestricted"}
CACHING_MODES = {"None", "Manual", "Documents", "Programs", "BranchCache"}
# Share access masks (as sharesec and Get-SmbShare's SDDL give them) behind each right.
RIGHT_MASKS = {"Full": 0x001F01FF, "Change": 0x001301BF, "Read": 0x001200A9}
# Samba parameters whose effect Windows share settings cannot express, with the value that
# means "nothing special"; any other value is reported as not carried.
SAMBA_ONLY_NOTABLE = {
    "browseable": "Yes",
    "valid users": "",
    "invalid users": "",
    "read list": "",
    "write list": "",
    "hosts allow": "",
    "hosts deny": "",
    "veto files": "",
    "hide files": "",
    "force user": "",
    "force group": "",
}


def ps_quote(value: str) -> str:
    """``value`` as a PowerShell single-quoted string literal (no expansion of any kind)."""
    if "\0" in value:
        raise ValueError("a NUL character cannot be passed to PowerShell")
    return "'" + "".join(c + c if c in PS_SINGLE_QUOTES else c for c in value) + "'"


def check_share_name(name: str) -> None:
    """Raise ValueError when Windows cannot hold ``name`` as a share name."""
    bad = sorted({c for c in name if c in INVALID_NAME_CHARACTERS or ord(c) < 32})
    if not name.strip() or bad:
        shown = ", ".join(repr(c) for c in bad) or "an empty name"
        raise ValueError(f"share name {name!r} cannot be used on Windows ({shown})")
    if len(name) > 80:
        raise ValueError(f"share name {name!r} is longer than Windows accepts (80 characters)")


def share_settings(share: ShareFacts) -> tuple[dict[str, str], list[str]]:
    """New-SmbShare / Set-SmbShare parameters (PowerShell literals) for ``share``, and notes."""
    settings = {"Description": ps_quote(share.description or "")}
    notes: list[str] = []
    if share.folder_enumeration_mode in FOLDER_ENUMERATION_MODES:
        settings["FolderEnumerationMode"] = ps_quote(share.folder_enumeration_mode)
    if share.caching_mode in CACHING_MODES:
        settings["CachingMode"] = ps_quote(share.caching_mode)
    elif share.caching_mode is not None:
        notes.append(f"caching mode {share.caching_mode!r} not carried: Windows' default kept")
    if share.concurrent_user_limit is not None:
        settings["ConcurrentUserLimit"] = str(int(share.concurrent_user_limit))
    if share.encrypt_data is not None:
        settings["EncryptData"] = "$true" if share.encrypt_data else "$false"
    if share.continuously_available is not None:
        settings["ContinuouslyAvailable"] = "$true" if share.continuously_available else "$false"
    if share.scope_name and share.scope_name != "*":
        notes.append(f"scope name {share.scope_name!r} not carried: the share is created in the default scope")
    for name, default in SAMBA_ONLY_NOTABLE.items():
        value = share.properties.get(name)
        if value is not None and str(value) != default:
            notes.append(f"not carried: smb.conf {name} = {value} (no Windows share setting does this)")
    return settings, notes


def _allowed_right(entry) -> str | None:
    if entry.right in RIGHT_MASKS:
        return entry.right
    for right in ("Full", "Change", "Read"):  # a custom mask: the largest right it fully holds
        if entry.mask is not None and entry.mask & RIGHT_MASKS[right] == RIGHT_MASKS[right]:
            return right
    return None


def access_commands(share: ShareFacts) -> tuple[list[str], list[str]]:
    """Grant-/Block-SmbShareAccess lines for the share's entries, and notes on approximations.

    Windows share permissions are Full, Change or Read (allow) and Full (deny): a custom
    allow mask becomes the largest of those it fully holds (never more access), a deny
    entry becomes a deny of everything (never less protection). A Samba share with
    ``read only = Yes`` gets at most Read. Deny entries come first: if the script stops
    on an entry (an account the destination cannot resolve), the share has never more
    access than the source gave.
    """
    read_only = str(share.properties.get("read only", "")).lower() == "yes"
    blocks: list[str] = []
    lines: list[str] = []
    notes: list[str] = []
    for entry in share.access:
        account = entry.sid or entry.trustee
        target = f"-Name $name -AccountName (Resolve-Account {ps_quote(account)}) -Force | Out-Null"
        if entry.access_type == "Deny":
            if entry.right != "Full" and entry.mask != RIGHT_MASKS["Full"]:
                notes.append(
                    f"deny entry for {account} widened to Full: Windows share permissions deny everything or nothing"
                )
            blocks.append(f"Block-SmbShareAccess {target}")
            continue
        if entry.access_type != "Allow":
            raise ValueError(f"share permission entry for {account!r} has unknown type {entry.access_type!r}")
        right = _allowed_right(entry)
        if right is None:
            notes.append(f"allow entry for {account} left out: its access mask holds less than Read")
            continue
        if read_only and right != "Read":
            notes.append(f"allow {right} for {account} reduced to Read: the source share is read only")
            right = "Read"
        elif entry.right not in RIGHT_MASKS:
            notes.append(f"custom allow entry for {account} approximated as {right}")
        lines.append(f"Grant-SmbShareAccess -AccessRight {right} {target}")
    if not share.access:
        notes.append("the source reported no share permission entries: the share gets none (nobody can connect)")
    return blocks + lines, notes


def create_share_script(
    share: ShareFacts, path: str, *, replace: bool, path_acl_from_share: bool = False
) -> tuple[str, list[str]]:
    """The PowerShell body (without the adapter's preamble) that creates the share, and notes."""
    check_share_name(share.name)
    settings, notes = share_settings(share)
    access, access_notes = access_commands(share)
    splat = "; ".join(f"{key} = {value}" for key, value in settings.items())
    body = [
        f"$name = {ps_quote(share.name)}",
        f"$path = {ps_quote(path)}",
        f"$replace = {'$true' if replace else '$false'}",
        f"$settings = @{{ {splat} }}",
        "function Resolve-Account([string]$account) {",
        "    if ($account -match '^S-1-[0-9-]+$') {",
        "        return (New-Object System.Security.Principal.SecurityIdentifier $account)"
        ".Translate([System.Security.Principal.NTAccount]).Value",
        "    }",
        "    return $account",
        "}",
        "$existing = @(Get-SmbShare | Where-Object { $_.Name -eq $name })",
        "if ($existing.Count -gt 0 -and -not $replace) {",
        "    [pscustomobject]@{ Action = 'exists'; Path = $existing[0].Path } | ConvertTo-Json -Depth 4",
        "} else {",
        "    $action = 'created'",
        "    if ($existing.Count -gt 0) {",
        "        $action = 'updated'",
        "        if ($existing[0].Path -ne $path) { Remove-SmbShare -Name $name -Force; $existing = @() }",
        "        else { Set-SmbShare -Name $name -Force @settings }",
        "    }",
        "    if ($existing.Count -eq 0) { New-SmbShare -Name $name -Path $path @settings | Out-Null }",
        "    foreach ($entry in @(Get-SmbShareAccess -Name $name)) {",
        "        if ([string]$entry.AccessControlType -eq 'Deny') {",
        "            Unblock-SmbShareAccess -Name $name -AccountName $entry.AccountName -Force | Out-Null",
        "        } else {",
        "            Revoke-SmbShareAccess -Name $name -AccountName $entry.AccountName -Force | Out-Null",
        "        }",
        "    }",
        *(f"    {line}" for line in access),
        *(["    Set-SmbPathAcl -ShareName $name"] if path_acl_from_share else []),
        "    [pscustomobject]@{",
        "        Action = $action",
        f"        Share = Get-SmbShare -Name $name | Select-Object {SHARE_PROPERTIES}",
        "        Access = @(Get-SmbShareAccess -Name $name | Select-Object "
        "Name, ScopeName, AccountName, AccessControlType, AccessRight)",
        "    } | ConvertTo-Json -Depth 4",
        "}",
    ]
    return "\n".join(body) + "\n", notes + access_notes


def ensure_directory_script(path: str) -> str:
    """The PowerShell body that creates folder ``path`` (literal path, parents included)."""
    return "\n".join([
        f"$path = {ps_quote(path)}",
        "$existed = Test-Path -LiteralPath $path -PathType Container",
        "[void][System.IO.Directory]::CreateDirectory($path)",
        "[pscustomobject]@{ Path = $path; Created = -not $existed } | ConvertTo-Json -Depth 4",
    ]) + "\n"


def parse_create_share_output(text: str | bytes) -> tuple[str, str | None, ShareFacts | None]:
    """(action, existing share's path, share as read back) from the create script's JSON.

    ``action`` is created, updated or exists; for exists the share is None.
    """
    items = load_ps_json(text, "create share")
    if len(items) != 1 or not isinstance(items[0], dict) or "Action" not in items[0]:
        raise ValueError("the create-share script printed no result object")
    result = items[0]
    action = result["Action"]
    if action == "exists":
        return action, result.get("Path") or None, None
    if action not in ("created", "updated") or not isinstance(result.get("Share"), dict):
        raise ValueError(f"the create-share script printed action {action!r} without the share")
    shares = parse_shares(json.dumps(result["Share"]), json.dumps(result.get("Access")))
    return action, None, shares[0]


def parse_ensure_directory_output(text: str | bytes) -> bool:
    """True when the ensure-directory script created the folder, False when it existed."""
    items = load_ps_json(text, "ensure directory")
    if len(items) != 1 or not isinstance(items[0], dict) or not isinstance(items[0].get("Created"), bool):
        raise ValueError("the ensure-directory script printed no result object")
    return items[0]["Created"]
