"""The share walker streams every entry of a real share with exact raw metadata, pages
through large directories, and records unreadable directories without stopping."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)
from common.smb.connection import SmbEndpoint, open_tree
from common.smb.fastpath import FastChannel
from common.smb.walk import PipelinedWalker, ShareWalker, walk
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER
from tests.lab.smbio import LabTree
from tests.lab.trees import ALLOW, DENY, EVERYONE, FULL, build_hostile_tree, security_descriptor


def _disk_tree(root) -> dict[str, tuple[bool, int]]:
    """Share-relative path -> (is directory, size), read from the server's disk."""
    found = {}
    for directory, dirs, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        for name in dirs + files:
            path = name if relative == "." else os.path.join(relative, name)
            full = os.path.join(directory, name)
            found[path.replace("/", "\\")] = (name in dirs, 0 if name in dirs else os.path.getsize(full))
    return found


def test_walk_yields_every_entry_with_exact_metadata(samba_factory):
    server = samba_factory("walk")
    with LabTree(server.address, "data") as lab:
        tree = build_hostile_tree(lab, large_size=1 << 20)
        walker = ShareWalker(lab.tree)
        entries = {entry.path: entry for entry in walker}
    assert walker.errors == []
    # Same names (exact, NFC and NFD twins included), types and sizes as on disk.
    assert {path: (e.is_dir, e.size if not e.is_dir else 0) for path, e in entries.items()} \
        == _disk_tree(server.shares["data"].path)
    assert set(entries) == set(tree.entries)
    for path, size in tree.files.items():
        assert entries[path].size == size
    # Raw FILETIMEs to the 100 ns tick (every value the builder set is odd).
    for path, (creation, access, write) in tree.times.items():
        entry = entries[path]
        assert (entry.creation_time, entry.last_write_time) == (creation, write), path
        if not entry.is_dir:  # listing a directory moves its own last-access (relatime)
            assert entry.last_access_time == access, path
    for path, attributes in tree.attributes.items():
        assert entries[path].attributes == attributes, path
    assert entries[tree.names["deep"]].path.count("\\") > 31
    assert len(entries[tree.names["long_path"]].path) > 260
    ids = [e.file_id for e in entries.values()]
    assert all(ids) and len(set(ids)) == len(ids)
    assert entries[tree.names["large_file"]].allocation_size < entries[tree.names["large_file"]].size


def test_walk_is_lazy_and_pages_through_large_directories(samba_factory):
    server = samba_factory("page")
    disk = server.shares["data"].path
    (disk / "big").mkdir()
    names = {f"{n:04d} " + "a fairly long file name to fill the buffer quickly" * 2 for n in range(1200)}
    for name in names:
        (disk / "big" / name).write_bytes(b"x")
    for n in range(50):
        (disk / "many" / f"d{n:02d}").mkdir(parents=True)
    endpoint = SmbEndpoint(server.address, "data", MIGRATION_USER, MIGRATION_PASSWORD)
    tree = open_tree(endpoint)  # composes with the pooled session type as well
    try:
        walker = ShareWalker(tree, "big", max_output=65536)
        iterator = iter(walker)
        first = next(iterator)
        assert walker.directories_listed == 1
        listed = {first.name} | {entry.name for entry in iterator}
        assert listed == names
        # A page of 64 KiB holds about 230 of these entries: several responses were read.
        assert len(names) * (80 + 2 * 110) > 4 * 65536
        lazy = ShareWalker(tree, "many")
        iterator = iter(lazy)
        next(iterator)
        assert lazy.directories_listed == 1  # the 50 subdirectories are not listed yet
        assert sum(1 for _ in iterator) == 49 and lazy.directories_listed == 51
    finally:
        tree.close()


def test_unreadable_directories_are_recorded_and_the_walk_goes_on(samba_factory):
    server = samba_factory("denied")
    server.add_user("smswalker", "Walker-Pw1!")
    # An account that is not an admin user must be able to reach the share's directory
    # (pytest's tmp_path is private to root).
    public = Path(tempfile.mkdtemp(prefix="sms-walk-"))
    public.chmod(0o755)
    try:
        server.add_share("public", path=public)
        _walk_as_plain_user(server)
    finally:
        shutil.rmtree(public, ignore_errors=True)


def _walk_as_plain_user(server):
    deny_everyone = security_descriptor(EVERYONE, EVERYONE, [(DENY, 0, FULL, EVERYONE)])
    with LabTree(server.address, "public") as admin:
        for directory in ("a open", "b closed", "c open", "c open\\d closed", "e open"):
            admin.mkdir(directory)
            admin.write_file(directory + "\\file.txt", b"x")
        admin.set_security_descriptor("b closed", deny_everyone)
        admin.set_security_descriptor("c open\\d closed", deny_everyone)
        readable = security_descriptor(EVERYONE, EVERYONE, [(ALLOW, 0, FULL, EVERYONE)])
        admin.set_security_descriptor("", readable)
    with LabTree(server.address, "public", "smswalker", "Walker-Pw1!") as user:
        errors = []
        paths = {entry.path for entry in walk(user.tree, "", errors)}
    assert {(e.path, e.status_name) for e in errors} == {
        ("b closed", "STATUS_ACCESS_DENIED"), ("c open\\d closed", "STATUS_ACCESS_DENIED")}
    # The denied directories themselves are listed by their parents; their insides are not,
    # and everything after them was still walked.
    assert paths == {"a open", "a open\\file.txt", "b closed", "c open", "c open\\file.txt",
                     "c open\\d closed", "e open", "e open\\file.txt"}


def test_walk_of_a_missing_root_records_one_error(samba_factory):
    server = samba_factory("missing")
    with LabTree(server.address, "data") as lab:
        walker = ShareWalker(lab.tree, "no such dir")
        assert list(walker) == []
    assert [(e.path, e.status_name) for e in walker.errors] == [
        ("no such dir", "STATUS_OBJECT_NAME_NOT_FOUND")]


def _walk_with(kind: str, lab: LabTree):
    """A ShareWalker, or a PipelinedWalker on the lab tree's session, and its entries."""
    if kind == "share":
        walker = ShareWalker(lab.tree)
        return walker, list(walker)
    channel = FastChannel.attach(lab.tree.session.connection, lab.tree.session, lab.tree)
    try:
        walker = PipelinedWalker(channel)
        return walker, list(walker)
    finally:
        channel.release()


@pytest.mark.parametrize("kind", ["share", "pipelined"])
def test_links_back_to_an_ancestor_are_not_entered(kind, samba_factory):
    """ShareWalker sees the loop in the parent's listing (the entry's file id);
    PipelinedWalker, whose listing has no file ids, when the folder's own id is read."""
    server = samba_factory("loops")
    disk = server.shares["data"].path
    (disk / "a" / "b").mkdir(parents=True)
    (disk / "a" / "b" / "f.txt").write_bytes(b"x")
    (disk / "a" / "sibling").mkdir()
    # Samba follows symbolic links inside the share: these show up as directories.
    os.symlink("..", disk / "a" / "b" / "up")
    os.symlink("..", disk / "a" / "to root")
    os.symlink("sibling", disk / "a" / "second way in")
    with LabTree(server.address, "data") as lab:
        walker, entries = _walk_with(kind, lab)
        paths = sorted(entry.path for entry in entries)
    assert paths == ["a", "a\\b", "a\\b\\f.txt", "a\\b\\up", "a\\second way in",
                     "a\\sibling", "a\\to root"]
    assert sorted((e.path, e.status_name) for e in walker.errors) == [
        ("a\\b\\up", "STATUS_STOPPED_ON_SYMLINK"), ("a\\to root", "STATUS_STOPPED_ON_SYMLINK")]
