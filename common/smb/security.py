"""Security descriptors as SID holders: read the owner, translate SIDs with a map.

A transfer that migrates the source's local users and groups gives them new SIDs on the
destination; every security descriptor it copies must then name the new accounts. This
module parses self-relative security descriptors (the bytes the copy engine reads with
QUERY_INFO / SECURITY) with impacket's ``ldaptypes.SR_SECURITY_DESCRIPTOR`` and

- ``owner_sid(sd)`` returns the owner SID as text (for the per-file log);
- ``translate_descriptor(sd, sid_map)`` rewrites the owner, the group and the SID of
  every ACE of the DACL and SACL that ``sid_map`` names, and returns the new bytes.

A descriptor that names no mapped SID is returned as the very same bytes (byte-exact
copies stay byte-exact); a rewritten one keeps every control bit, ACE type, flag, mask
and ACE order, only the layout of the parts in the buffer may differ. Bytes that do not
parse raise ``ValueError``: this module never guesses and never drops an entry. It must
never change anything but SIDs, and never do I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from impacket.ldap import ldaptypes

_SID_TEXT_PREFIX = "S-1-"


def _parse(descriptor: bytes) -> ldaptypes.SR_SECURITY_DESCRIPTOR:
    try:
        parsed = ldaptypes.SR_SECURITY_DESCRIPTOR(data=descriptor)
    except Exception as exc:  # noqa: BLE001 - impacket raises assorted errors on bad input
        raise ValueError(f"not a self-relative security descriptor: {exc}") from None
    # impacket leaves the trailing bytes in an absent ACL's field: an offset of 0 means none.
    if parsed["OffsetDacl"] == 0:
        parsed["Dacl"] = b""
    if parsed["OffsetSacl"] == 0:
        parsed["Sacl"] = b""
    return parsed


def _sid_text(sid) -> str | None:
    return sid.formatCanonical() if sid not in (b"", None) else None


def _sid(text: str) -> ldaptypes.LDAP_SID:
    if not text.startswith(_SID_TEXT_PREFIX):
        raise ValueError(f"not a SID: {text!r}")
    sid = ldaptypes.LDAP_SID()
    sid.fromCanonical(text)
    return sid


_SD_HEADER = struct.Struct("<BBHIIII")  # revision, sbz1, control, owner, group, sacl, dacl offsets


def owner_sid(descriptor: bytes | None) -> str | None:
    """The owner SID of a self-relative security descriptor ('S-1-5-...'), None if it has none.

    Reads only the header and the owner SID, with struct: a proxy worker calls this for
    every file it copies, and a full impacket parse cost about a third of its time.
    """
    if not descriptor:
        return None
    try:
        revision, _sbz1, _control, offset = _SD_HEADER.unpack_from(descriptor)[:4]
        if revision != 1:
            raise ValueError(f"revision {revision}")
        if offset == 0:
            return None
        sid_revision, count = descriptor[offset], descriptor[offset + 1]
        if sid_revision != 1 or count > 15 or offset + 8 + 4 * count > len(descriptor):
            raise ValueError("malformed owner SID")
        authority = int.from_bytes(descriptor[offset + 2:offset + 8], "big")
        subauthorities = struct.unpack_from(f"<{count}I", descriptor, offset + 8)
    except (struct.error, IndexError, ValueError) as exc:
        raise ValueError(f"not a self-relative security descriptor: {exc}") from None
    text = f"S-1-{authority}" if authority < 1 << 32 else f"S-1-0x{authority:012X}"
    return "".join([text, *(f"-{value}" for value in subauthorities)])


def descriptor_sids(descriptor: bytes) -> list[str]:
    """Every SID a descriptor names: owner, group, then each DACL and SACL ACE's, in order."""
    parsed = _parse(descriptor)
    found = [text for text in (_sid_text(parsed["OwnerSid"]), _sid_text(parsed["GroupSid"])) if text]
    for part in ("Dacl", "Sacl"):
        if parsed[part] != b"":
            found += [ace["Ace"]["Sid"].formatCanonical() for ace in parsed[part].aces
                      if "Sid" in ace["Ace"].fields]
    return found


def translate_descriptor(descriptor: bytes, sid_map: Mapping[str, str]) -> bytes:
    """``descriptor`` with every SID that ``sid_map`` names replaced by its mapped SID.

    Owner, group and ACE SIDs of the DACL and SACL are translated. Returns the same
    bytes object when nothing was mapped.
    """
    if not sid_map or not descriptor:
        return descriptor
    parsed = _parse(descriptor)
    changed = False
    for part in ("OwnerSid", "GroupSid"):
        text = _sid_text(parsed[part])
        if text in sid_map:
            parsed[part] = _sid(sid_map[text])
            changed = True
    for part in ("Dacl", "Sacl"):
        acl = parsed[part]
        if acl == b"":
            continue
        for ace in acl.aces:
            body = ace["Ace"]
            if "Sid" not in body.fields:
                continue
            text = body["Sid"].formatCanonical()
            if text in sid_map:
                body["Sid"] = _sid(sid_map[text])
                changed = True
    if not changed:
        return descriptor
    return parsed.getData()


__all__ = ["descriptor_sids", "owner_sid", "translate_descriptor"]
