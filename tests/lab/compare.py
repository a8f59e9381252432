"""Field-by-field comparison of two trees over SMB, independent of our data plane.

``compare_trees`` walks a source and a destination tree side by side with plain
smbprotocol (``tests.lab.smbio``; it never imports ``common.smb``, so a bug in our
walker or copy engine cannot hide itself) and returns a list of ``Difference``: path
and field. An empty list means identical. Compared, for every entry:

- presence, by exact name (no case folding, no Unicode normalisation: NFC and NFD
  names, or U+00C5 and U+212B, are different entries) and type (file or directory);
- data: size and SHA-256 of the bytes;
- alternate data streams: the set of stream names, and each stream's size and SHA-256,
  on files and directories;
- attributes, all bits as the server reports them (nothing masked: Samba sets ARCHIVE
  on every file created over SMB, so a copy must set the source's attributes
  explicitly, clearing ARCHIVE where the source has none);
- creation, last-access and last-write times as raw FILETIME integers (exact to 100 ns);
- owner SID, group SID, DACL (raw ACL bytes, so ACE order and flags count) and the
  DACL-related control bits (protected, auto-inherited, defaulted, present).

Not compared: the change time (the server sets it on any metadata change and SMB
cannot set it on Samba) and the SACL (reading it needs a privilege the lab account
does not have).

Reading a file moves its last-access time on a filesystem mounted ``relatime`` (any
last-access older than a day is updated, and listing a directory counts as reading
it), so times, attributes and the security descriptor of an entry are captured before
its data is read, and a directory's before it is listed. Comparing the same pair twice
therefore shows last-access differences the second time: build fresh trees for each
comparison. A copy reads the source too: take ``snapshot_times`` of the source before
copying and pass it as ``source_times``, so the destination is judged against the times
the source had before the copy touched it (files as they were before any read,
directories as they are once listed, which is what any copier can see).

It must never write to either tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

from tests.lab.smbio import ATTRIBUTE_DIRECTORY, LabTree

# SECURITY_DESCRIPTOR control bits that describe the DACL (MS-DTYP 2.4.6).
DACL_CONTROL_BITS = 0x0004 | 0x0008 | 0x0400 | 0x1000  # present, defaulted, auto-inherited, protected
TIME_FIELDS = ("creation_time", "last_access_time", "last_write_time")


@dataclasses.dataclass(frozen=True)
class Difference:
    """One field of one entry that is not the same on both sides.

    ``path`` is relative to the compared roots, with backslashes. ``field`` is one of
    missing, extra, type, size, data, streams, stream:<name>, attributes, creation_time,
    last_access_time, last_write_time, owner, group, dacl, dacl_control.
    """

    path: str
    field: str
    source: object = None
    destination: object = None


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    is_dir: bool
    times: tuple[int, int, int]
    attributes: int
    owner: bytes
    group: bytes
    dacl: bytes
    dacl_control: int
    streams: dict[str, int]


def split_security_descriptor(descriptor: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(control, owner SID bytes, group SID bytes, DACL bytes) of a self-relative SD."""
    if len(descriptor) < 20:
        return 0, b"", b"", b""
    _revision, _sbz1, control, owner_at, group_at, _sacl_at, dacl_at = struct.unpack_from(
        "<BBHIIII", descriptor)

    def sid_at(offset: int) -> bytes:
        if not offset:
            return b""
        return descriptor[offset:offset + 8 + 4 * descriptor[offset + 1]]

    dacl = b""
    if control & 0x0004 and dacl_at:
        dacl = descriptor[dacl_at:dacl_at + struct.unpack_from("<H", descriptor, dacl_at + 2)[0]]
    return control, sid_at(owner_at), sid_at(group_at), dacl


def _snapshot(lab: LabTree, path: str) -> _Snapshot:
    creation, access, write, _change, attributes = lab.basic_info(path)
    control, owner, group, dacl = split_security_descriptor(lab.security_descriptor(path))
    return _Snapshot(bool(attributes & ATTRIBUTE_DIRECTORY), (creation, access, write),
                     attributes, owner, group, dacl, control & DACL_CONTROL_BITS,
                     lab.streams(path))


def _digest(lab: LabTree, path: str) -> tuple[int, str]:
    hasher, size = hashlib.sha256(), 0
    for chunk in lab.read_chunks(path):
        hasher.update(chunk)
        size += len(chunk)
    return size, hasher.hexdigest()


def _join(root: str, relative: str) -> str:
    return "\\".join(part for part in (root, relative) if part)


def _compare_entry(source: LabTree, source_path: str, destination: LabTree,
                   destination_path: str, relative: str,
                   source_times: tuple[int, int, int] | None) -> tuple[list[Difference], bool]:
    """Differences of one entry present on both sides, and whether to descend into it."""
    found: list[Difference] = []
    before, after = _snapshot(source, source_path), _snapshot(destination, destination_path)
    if source_times is not None:
        before = dataclasses.replace(before, times=source_times)
    if before.is_dir != after.is_dir:
        return [Difference(relative, "type", "directory" if before.is_dir else "file",
                           "directory" if after.is_dir else "file")], False
    if before.attributes != after.attributes:
        found.append(Difference(relative, "attributes", hex(before.attributes), hex(after.attributes)))
    for name, mine, theirs in zip(TIME_FIELDS, before.times, after.times):
        if mine != theirs:
            found.append(Difference(relative, name, mine, theirs))
    for name in ("owner", "group", "dacl"):
        if getattr(before, name) != getattr(after, name):
            found.append(Difference(relative, name, getattr(before, name).hex(),
                                    getattr(after, name).hex()))
    if before.dacl_control != after.dacl_control:
        found.append(Difference(relative, "dacl_control", hex(before.dacl_control),
                                hex(after.dacl_control)))
    if set(before.streams) != set(after.streams):
        found.append(Difference(relative, "streams", sorted(before.streams), sorted(after.streams)))
    for stream in sorted(set(before.streams) & set(after.streams)):
        name = stream.split(":")[1]
        mine = _digest(source, f"{source_path}:{name}")
        theirs = _digest(destination, f"{destination_path}:{name}")
        if mine != theirs:
            found.append(Difference(relative, f"stream:{name}", mine, theirs))
    if not before.is_dir:
        mine, theirs = _digest(source, source_path), _digest(destination, destination_path)
        if mine[0] != theirs[0]:
            found.append(Difference(relative, "size", mine[0], theirs[0]))
        if mine[1] != theirs[1]:
            found.append(Difference(relative, "data", mine[1], theirs[1]))
    return found, before.is_dir


def snapshot_times(lab: LabTree, root: str) -> dict[str, tuple[int, int, int]]:
    """(creation, last-access, last-write) of ``root`` and everything under it, keyed by
    path relative to ``root`` ('' for the root itself): files without reading them,
    directories after listing them. Take it before a copy; see ``compare_trees``."""
    times: dict[str, tuple[int, int, int]] = {}
    stack = [""]
    while stack:
        relative = stack.pop()
        children = list(lab.listdir(_join(root, relative)))
        times[relative] = lab.basic_info(_join(root, relative))[:3]
        for name, attributes, _size in children:
            child = _join(relative, name)
            if attributes & ATTRIBUTE_DIRECTORY:
                stack.append(child)
            else:
                times[child] = lab.basic_info(_join(root, child))[:3]
    return times


def compare_trees(source: LabTree, source_root: str, destination: LabTree,
                  destination_root: str, *, include_root: bool = True,
                  source_times: dict[str, tuple[int, int, int]] | None = None) -> list[Difference]:
    """Every difference between ``source_root`` on ``source`` and ``destination_root`` on
    ``destination`` (share-relative directories; '' is the share root). With
    ``include_root`` the two root directories' own metadata is compared too. With
    ``source_times`` (from ``snapshot_times`` before a copy) the source's creation,
    last-access and last-write times are taken from it instead of read now."""
    differences: list[Difference] = []
    times = source_times or {}
    if include_root:
        found, _ = _compare_entry(source, source_root, destination, destination_root, "",
                                  times.get(""))
        differences += found
    stack = [""]
    while stack:
        relative = stack.pop()
        mine = {name for name, _attributes, _size in source.listdir(_join(source_root, relative))}
        theirs = {name for name, _attributes, _size
                  in destination.listdir(_join(destination_root, relative))}
        for name in sorted(mine - theirs):
            differences.append(Difference(_join(relative, name), "missing"))
        for name in sorted(theirs - mine):
            differences.append(Difference(_join(relative, name), "extra"))
        for name in sorted(mine & theirs):
            child = _join(relative, name)
            found, descend = _compare_entry(source, _join(source_root, child), destination,
                                            _join(destination_root, child), child,
                                            times.get(child))
            differences += found
            if descend:
                stack.append(child)
    return differences
