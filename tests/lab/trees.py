"""Trees of files built on lab shares: a hostile tree for fidelity tests, and benchmark data.

``build_hostile_tree`` writes, through SMB with smbprotocol only (never through our copy
engine, so a test that copies and compares stays independent of it), every case a
migration must carry across: empty directories, zero-byte and large mostly-zero files,
names that differ only by Unicode normalisation (NFC vs NFD, U+00C5 vs U+212B), CJK and
emoji names, spaces and symbols, a path over 260 characters, a tree deeper than 30
levels, alternate data streams on files and directories, READONLY/HIDDEN/SYSTEM/ARCHIVE
combinations, times set to odd 100 ns values, and security descriptors with chosen
owner and group SIDs, a protected DACL, non-canonical ACE order and inheritance flags.
It returns a ``HostileTree`` manifest of what it wrote. Left out on purpose: names
ending in "." or " " (Samba shows them as mangled 8.3 names), attributes Samba does not
keep (not-content-indexed, offline, temporary, sparse read back as NORMAL) and SACLs
(the lab account may not read them).

``make_dataset`` writes benchmark data (many small files in about N/100 directories, a
few large files) straight into a share's directory on disk, which is much faster than
SMB and gives both tools the same input.

It must never be pointed at anything but a lab share, and never reuses a name: building
into an existing root fails.
"""

from __future__ import annotations

import os
import random
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from smbprotocol.security_descriptor import (
    AccessAllowedAce,
    AccessDeniedAce,
    AclPacket,
    SDControl,
    SIDPacket,
    SMB2CreateSDBuffer,
)

from tests.lab.smbio import FILE_WRITE_DATA, SYNCHRONIZE, LabTree

# Attributes (MS-FSCC 2.6).
READONLY, HIDDEN, SYSTEM, DIRECTORY, ARCHIVE, NORMAL = 0x1, 0x2, 0x4, 0x10, 0x20, 0x80
# ACE types and flags (MS-DTYP 2.4.4.1).
ALLOW, DENY = 0, 1
OBJECT_INHERIT, CONTAINER_INHERIT, NO_PROPAGATE, INHERIT_ONLY = 0x1, 0x2, 0x4, 0x8
# Access masks.
FULL, READ, MODIFY, WRITE = 0x001F01FF, 0x001200A9, 0x001301BF, 0x00100116

EVERYONE = "S-1-1-0"
ADMINISTRATORS = "S-1-5-32-544"
USERS = "S-1-5-32-545"
GUESTS = "S-1-5-32-546"
SYSTEM_SID = "S-1-5-18"
UNKNOWN_DOMAIN_USER = "S-1-5-21-1111111111-2222222222-3333333333-1001"
UNKNOWN_DOMAIN_GROUP = "S-1-5-21-1111111111-2222222222-3333333333-513"

# FILETIMEs (100 ns ticks since 1601): around 2012-2021, every one odd, so a copy that
# rounds to microseconds, seconds or even ticks shows.
TIME_BASE = 129_700_000_000_000_001


def sid(text: str) -> SIDPacket:
    """A SID structure from its string form."""
    packet = SIDPacket()
    packet.from_string(text)
    return packet


def security_descriptor(owner: str, group: str, aces: list[tuple[int, int, int, str]],
                        *, protected: bool = False) -> bytes:
    """A self-relative security descriptor: owner, group and a DACL of ``aces`` in the
    order given, each ``(type ALLOW|DENY, flags, mask, sid)``. ``protected`` sets
    SE_DACL_PROTECTED (no inheritance from the parent)."""
    acl = AclPacket()
    entries = []
    for ace_type, flags, mask, who in aces:
        ace = AccessAllowedAce() if ace_type == ALLOW else AccessDeniedAce()
        ace["ace_flags"] = flags
        ace["mask"] = mask
        ace["sid"] = sid(who)
        entries.append(ace)
    acl["aces"] = entries
    descriptor = SMB2CreateSDBuffer()
    descriptor["control"].set_flag(SDControl.SELF_RELATIVE)
    if protected:
        descriptor["control"].set_flag(SDControl.DACL_PROTECTED)
    descriptor.set_owner(sid(owner))
    descriptor.set_group(sid(group))
    descriptor.set_dacl(acl)
    return descriptor.pack()


PLAIN_DIRECTORY = security_descriptor(
    ADMINISTRATORS, USERS,
    [(ALLOW, OBJECT_INHERIT | CONTAINER_INHERIT, FULL, ADMINISTRATORS),
     (ALLOW, OBJECT_INHERIT | CONTAINER_INHERIT, READ, EVERYONE)])
PLAIN_FILE = security_descriptor(
    ADMINISTRATORS, USERS, [(ALLOW, 0, FULL, ADMINISTRATORS), (ALLOW, 0, READ, EVERYONE)])


@dataclass
class HostileTree:
    """What ``build_hostile_tree`` wrote, share-relative paths with backslashes."""

    root: str
    directories: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)  # path -> size
    streams: dict[str, dict[str, bytes]] = field(default_factory=dict)  # path -> {name: data}
    attributes: dict[str, int] = field(default_factory=dict)
    times: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # creation, access, write
    descriptors: dict[str, bytes] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # case -> path

    def path(self, *parts: str) -> str:
        """A path under the tree's root."""
        return "\\".join((self.root, *parts)) if self.root else "\\".join(parts)

    @property
    def entries(self) -> list[str]:
        """Every directory and file, parents before children."""
        return self.directories + list(self.files)


def build_hostile_tree(lab: LabTree, root: str = "hostile", *, large_size: int = 8 << 20,
                       seed: int = 3) -> HostileTree:
    """Write the hostile tree under ``root`` of ``lab``'s share and return its manifest.

    ``large_size`` is the size of the mostly-zero file (random first and last 64 KiB).
    The same ``seed`` writes the same bytes, names and metadata every time, so two calls
    on two servers build identical trees.
    """
    rng = random.Random(seed)
    tree = HostileTree(root)

    def mkdir(*parts: str) -> str:
        path = tree.path(*parts)
        lab.mkdir(path)
        tree.directories.append(path)
        return path

    def write(path: str, data: bytes, **kwargs) -> str:
        lab.write_file(path, data, **kwargs)
        tree.files[path] = kwargs.get("sparse_total") or len(data)
        return path

    lab.mkdir(root)  # fails if it exists: never build over an older tree
    tree.directories.append(root)

    # Empty directories and zero-byte files.
    tree.names["empty_dir"] = mkdir("empty dir")
    mkdir("nested empty")
    tree.names["nested_empty_dir"] = mkdir("nested empty", "inner")
    tree.names["zero_file"] = write(tree.path("zero.bin"), b"")

    # A large, mostly-zero file: random head, zeros, random tail.
    head, tail = rng.randbytes(65536), rng.randbytes(65536)
    large = tree.path("large mostly zero.bin")
    lab.write_file(large, head, sparse_total=large_size - len(tail))
    handle = lab.open(large, FILE_WRITE_DATA | SYNCHRONIZE)
    try:
        handle.write(tail, large_size - len(tail))
    finally:
        handle.close()
    tree.files[large] = large_size
    tree.names["large_file"] = large

    # Names: normalisation twins, look-alikes, CJK, emoji, spaces and symbols.
    mkdir("names")
    nfc = unicodedata.normalize("NFC", "caf\u00e9 r\u00e9sum\u00e9.txt")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    tree.names["nfc"] = write(tree.path("names", nfc), b"NFC form\n")
    tree.names["nfd"] = write(tree.path("names", nfd), b"NFD form, same letters\n")
    tree.names["angstrom_letter"] = write(tree.path("names", "\u00c5ngstr\u00f6m.txt"), b"U+00C5\n")
    tree.names["angstrom_sign"] = write(tree.path("names", "\u212bngstr\u00f6m.txt"), b"U+212B\n")
    cjk_dir = mkdir("names", "\u6587\u4ef6\u5939 \u30c7\u30fc\u30bf")
    tree.names["cjk"] = write(cjk_dir + "\\\u6570\u636e\u62a5\u544a \ud55c\uad6d\uc5b4.txt",
                              "\u4e2d\u6587\n".encode())
    emoji_dir = mkdir("names", "\U0001f4c1 folder \U0001f680")
    tree.names["emoji"] = write(emoji_dir + "\\\U0001f389 party \U0001f468\u200d\U0001f469\u200d\U0001f467.txt",
                                b"emoji\n")
    tree.names["symbols"] = write(
        tree.path("names", "  two leading spaces & symbols (1) [x] {y} #%+,;=@^`~!'$.txt"),
        b"symbols\n")
    tree.names["dots"] = write(tree.path("names", "many.dots.in.name.tar.gz"), b"dots\n")

    # A path over 260 characters.
    parts = ["long path"] + [f"segment {i:02d} " + "x" * 40 for i in range(6)]
    for depth in range(1, len(parts) + 1):
        mkdir(*parts[:depth])
    long_file = tree.path(*parts, "file at the end of a long path.txt")
    assert len(long_file) > 260
    tree.names["long_path"] = write(long_file, b"long\n")

    # A tree deeper than 30 levels.
    levels = ["deep"] + [f"level{i:02d}" for i in range(1, 36)]
    for depth in range(1, len(levels) + 1):
        mkdir(*levels[:depth])
    tree.names["deep"] = write(tree.path(*levels, "bottom.txt"), b"deep\n")

    # Alternate data streams on a file and on a directory (kept small: on ext4 a file's
    # streams, NT ACL and DOS attributes share one 4 KiB xattr block).
    with_streams = write(tree.path("with streams.txt"), rng.randbytes(3000))
    dir_streams = mkdir("directory with streams")
    for owner, streams in ((with_streams, {"alpha": rng.randbytes(200), "b\u00eata \u6d41": b"second\n",
                                           "empty": b""}),
                           (dir_streams, {"dirmeta": rng.randbytes(120)})):
        for name, data in streams.items():
            lab.write_file(f"{owner}:{name}", data)
        tree.streams[owner] = {f":{name}:$DATA": data for name, data in streams.items()}
    tree.names["file_streams"], tree.names["dir_streams"] = with_streams, dir_streams

    # Attribute combinations (set last, with the times, below).
    mkdir("attributes")
    combos = {"readonly": READONLY, "hidden": HIDDEN, "system": SYSTEM, "archive": ARCHIVE,
              "normal": NORMAL, "ro hidden": READONLY | HIDDEN, "hidden system": HIDDEN | SYSTEM,
              "ro hidden system archive": READONLY | HIDDEN | SYSTEM | ARCHIVE,
              "ro archive": READONLY | ARCHIVE}
    for label, value in combos.items():
        tree.attributes[write(tree.path("attributes", f"{label}.txt"), label.encode())] = value
    tree.attributes[mkdir("attributes", "hidden system dir")] = DIRECTORY | HIDDEN | SYSTEM
    tree.attributes[mkdir("attributes", "readonly dir")] = DIRECTORY | READONLY

    # Security descriptors: chosen owner/group, protected DACL, non-canonical order,
    # inheritance flags, an unknown domain SID.
    secured = mkdir("secured")
    tree.descriptors[secured] = security_descriptor(
        ADMINISTRATORS, USERS,
        [(ALLOW, OBJECT_INHERIT | CONTAINER_INHERIT, FULL, ADMINISTRATORS),
         (ALLOW, OBJECT_INHERIT | CONTAINER_INHERIT | INHERIT_ONLY, MODIFY, USERS),
         (ALLOW, CONTAINER_INHERIT | NO_PROPAGATE, READ, EVERYONE)],
        protected=True)
    non_canonical = write(tree.path("secured", "allow before deny.txt"), b"order matters\n")
    tree.descriptors[non_canonical] = security_descriptor(
        USERS, ADMINISTRATORS,
        [(ALLOW, 0, READ, EVERYONE), (DENY, 0, WRITE, GUESTS), (ALLOW, 0, FULL, ADMINISTRATORS)])
    foreign = write(tree.path("secured", "foreign owner.txt"), b"owner from another domain\n")
    tree.descriptors[foreign] = security_descriptor(
        UNKNOWN_DOMAIN_USER, UNKNOWN_DOMAIN_GROUP,
        [(ALLOW, 0, FULL, UNKNOWN_DOMAIN_USER), (ALLOW, 0, FULL, SYSTEM_SID),
         (ALLOW, 0, READ, USERS)], protected=True)
    # Every other entry gets a plain explicit descriptor too: left to the server, owners
    # would name each server's own machine SID and two builds would never be identical.
    for path in tree.entries:
        tree.descriptors.setdefault(path, PLAIN_DIRECTORY if path in tree.directories else PLAIN_FILE)
    for path, descriptor in tree.descriptors.items():
        lab.set_security_descriptor(path, descriptor)
    tree.names["secured_dir"], tree.names["non_canonical"] = secured, non_canonical
    tree.names["foreign_owner"] = foreign

    # Times (odd 100 ns values) and attributes, children before parents: writing a child
    # or a stream changes its parent's last-write time.
    for index, path in enumerate(reversed(tree.entries)):
        creation = TIME_BASE + 2 * (index * 1_000_003)
        write_time = creation + 2 * 86_400_0000_001
        access = write_time + 2 * 3_600_0000_001
        tree.times[path] = (creation, access, write_time)
        attributes = tree.attributes.get(path, 0)
        lab.set_basic_info(path, creation, access, write_time, 0, attributes)
    return tree


@dataclass(frozen=True)
class Dataset:
    """What ``make_dataset`` wrote: counts and total bytes."""

    small_files: int
    directories: int
    large_files: int
    total_bytes: int


def make_dataset(directory: Path, files: int, large_files: int = 0, *,
                 large_size: int = 256 << 20, min_size: int = 1024, max_size: int = 65536,
                 seed: int = 1) -> Dataset:
    """Write ``files`` random files of ``min_size``..``max_size`` bytes in about
    ``files / 100`` directories (``dir00000`` ...) and ``large_files`` random files of
    ``large_size`` bytes (``large\\large00.bin`` ...) into ``directory`` on local disk.

    Point it at a lab share's directory (``server.shares["data"].path``); Samba then
    serves the files. The same arguments produce the same tree.
    """
    rng = random.Random(seed)
    directories = max(1, round(files / 100)) if files else 0
    total = 0
    for number in range(directories):
        (directory / f"dir{number:05d}").mkdir(parents=True, exist_ok=True)
    for number in range(files):
        size = rng.randint(min_size, max_size)
        target = directory / f"dir{number % directories:05d}" / f"file{number:06d}.bin"
        target.write_bytes(rng.randbytes(size))
        total += size
    if large_files:
        (directory / "large").mkdir(parents=True, exist_ok=True)
    block = 8 << 20
    for number in range(large_files):
        with open(directory / "large" / f"large{number:02d}.bin", "wb") as handle:
            remaining = large_size
            while remaining:
                chunk = min(block, remaining)
                handle.write(os.urandom(chunk))
                remaining -= chunk
        total += large_size
    return Dataset(files, directories, large_files, total)
