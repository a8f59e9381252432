"""Reversible edits of an smb.conf text: parameters added under a marker, removed by it.

Cutover changes a few parameters of a live Samba server (``netbios name`` in [global];
``read only``, ``hosts allow`` and ``hosts deny`` of a share) and must be able to undo
exactly that, whatever else the file holds. So an edit never rewrites an administrator's
line: it appends, at the end of the section, a marker comment and the parameter line

    # sms-cutover <tag>: <parameter>
    <parameter> = <value>

Samba applies a section's parameters in file order, so the appended line wins over an
earlier one; removing the marker and its line brings the earlier value (or Samba's
default) back. ``<tag>`` names the cutover run, so two runs never undo each other's lines.

Pure text functions only: this module must never talk to a host, and never drop or change
a line it did not add.
"""

from __future__ import annotations

import re

MARKER_PREFIX = "# sms-cutover"
_SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*$")


def _marker(tag: str, parameter: str) -> str:
    return f"{MARKER_PREFIX} {tag}: {parameter}"


def _is_marker(line: str, tag: str, parameter: str | None = None) -> bool:
    text = line.strip()
    head = f"{MARKER_PREFIX} {tag}:"
    if not text.startswith(head):
        return False
    return parameter is None or text[len(head):].strip().lower() == parameter.lower()


def _section_of(lines: list[str]) -> list[str | None]:
    """The (lower-case) section each line belongs to; a header belongs to its own section."""
    owners: list[str | None] = []
    current: str | None = None
    for line in lines:
        match = _SECTION.match(line)
        if match:
            current = match.group(1).strip().lower()
        owners.append(current)
    return owners


def sections(text: str) -> list[str]:
    """Section names in file order, as written (``global`` included when present)."""
    return [m.group(1).strip() for line in text.splitlines() if (m := _SECTION.match(line))]


def remove_marked(text: str, tag: str, section: str | None = None, parameter: str | None = None) -> str:
    """``text`` without the lines ``tag`` added (only in ``section`` / for ``parameter`` if given)."""
    lines = text.splitlines(keepends=True)
    owners = _section_of(lines)
    keep: list[str] = []
    skip_next = False
    for line, owner in zip(lines, owners):
        if skip_next:
            skip_next = False
            continue
        if _is_marker(line, tag, parameter) and (section is None or owner == section.lower()):
            skip_next = True
            continue
        keep.append(line)
    return "".join(keep)


def add_marked(text: str, tag: str, section: str, parameter: str, value: str) -> str:
    """``text`` with ``parameter = value`` appended to ``section`` under a ``tag`` marker.

    An earlier line of the same tag for this parameter in this section is replaced. The
    section must exist (Samba would make a new share of a new one); ``ValueError`` if not.
    Values must be one line.
    """
    if "\n" in value or "\r" in value:
        raise ValueError(f"{parameter}: a value must be one line")
    text = remove_marked(text, tag, section, parameter)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    owners = _section_of(lines)
    wanted = section.lower()
    positions = [i for i, owner in enumerate(owners) if owner == wanted]
    if not positions:
        raise ValueError(f"smb.conf has no section [{section}]")
    # After the section's last non-blank line (its header at least); a section given
    # twice is extended where it ends last.
    end = positions[-1]
    while end > positions[0] and not lines[end].strip():
        end -= 1
    addition = []
    if lines[end].rstrip("\r\n").endswith("\\"):
        addition.append("\n")  # end a continued line before ours
    addition += [_marker(tag, parameter) + "\n", f"\t{parameter} = {value}\n"]
    return "".join(lines[: end + 1] + addition + lines[end + 1:])
