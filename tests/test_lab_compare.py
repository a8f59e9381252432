"""The lab's hostile tree is built as specified, and the independent tree comparison
finds every kind of difference (a comparison that always says "equal" would fail here)."""

from __future__ import annotations

import os
import unicodedata

from tests.lab.compare import compare_trees, snapshot_times, split_security_descriptor
from tests.lab.smbio import FILE_WRITE_DATA, SYNCHRONIZE, LabTree
from tests.lab.trees import (
    ADMINISTRATORS,
    ALLOW,
    ARCHIVE,
    DENY,
    EVERYONE,
    FULL,
    GUESTS,
    HIDDEN,
    PLAIN_FILE,
    READ,
    TIME_BASE,
    USERS,
    WRITE,
    build_hostile_tree,
    security_descriptor,
)

LARGE = 1 << 20


def _relative(tree, path: str) -> str:
    return path[len(tree.root) + 1:]


def test_hostile_tree_is_built_as_specified(samba_factory):
    server = samba_factory("hostile")
    disk = server.shares["data"].path
    with LabTree(server.address, "data") as lab:
        tree = build_hostile_tree(lab, large_size=LARGE)
        # Times and attributes first: reading data moves last-access times.
        for path, (creation, access, write) in tree.times.items():
            assert lab.basic_info(path)[:3] == (creation, access, write), path
            assert creation % 2 == access % 2 == write % 2 == 1
        for path, attributes in tree.attributes.items():
            assert lab.basic_info(path)[4] == attributes, path
        for path, descriptor in tree.descriptors.items():
            assert lab.security_descriptor(path) == descriptor, path
        control, owner, _group, dacl = split_security_descriptor(
            lab.security_descriptor(tree.names["secured_dir"]))
        assert control & 0x1000  # SE_DACL_PROTECTED
        assert dacl[8 + 1] == 0x3  # first ACE: OBJECT_INHERIT | CONTAINER_INHERIT
        # Non-canonical order kept: an allow ACE, then a deny ACE.
        _c, _o, _g, dacl = split_security_descriptor(lab.security_descriptor(tree.names["non_canonical"]))
        assert (dacl[8], dacl[8 + 20]) == (ALLOW, DENY)

        names = {name for name, _a, _s in lab.listdir(tree.path("names"))}
        nfc = tree.names["nfc"].rsplit("\\", 1)[1]
        nfd = tree.names["nfd"].rsplit("\\", 1)[1]
        assert nfc != nfd and unicodedata.normalize("NFC", nfd) == nfc
        assert {nfc, nfd, "\u00c5ngstr\u00f6m.txt", "\u212bngstr\u00f6m.txt"} <= names
        assert b"".join(lab.read_chunks(tree.names["nfd"])) == b"NFD form, same letters\n"
        assert b"".join(lab.read_chunks(tree.names["angstrom_sign"])) == b"U+212B\n"
        assert len(tree.names["long_path"]) > 260
        assert b"".join(lab.read_chunks(tree.names["long_path"])) == b"long\n"
        assert tree.names["deep"].count("\\") > 31
        assert list(lab.listdir(tree.names["empty_dir"])) == []
        assert b"".join(lab.read_chunks(tree.names["zero_file"])) == b""
        large = b"".join(lab.read_chunks(tree.names["large_file"]))
        assert len(large) == LARGE and large[65536:-65536] == bytes(LARGE - 131072)
        for path, streams in tree.streams.items():
            assert lab.streams(path) == {name: len(data) for name, data in streams.items()}
            for name, data in streams.items():
                assert b"".join(lab.read_chunks(path + ":" + name.split(":")[1])) == data

    # Independently of SMB, the names are distinct files on the server's disk.
    on_disk = os.listdir(disk / "hostile" / "names")
    assert nfc in on_disk and nfd in on_disk
    assert "\u00c5ngstr\u00f6m.txt" in on_disk and "\u212bngstr\u00f6m.txt" in on_disk
    assert os.path.getsize(disk / "hostile" / "large mostly zero.bin") == LARGE


def test_identical_trees_compare_equal(samba_pair):
    source, destination = samba_pair
    with LabTree(source.address, "data") as left, LabTree(destination.address, "data") as right:
        build_hostile_tree(left, large_size=LARGE)
        build_hostile_tree(right, large_size=LARGE)
        assert compare_trees(left, "hostile", right, "hostile") == []


def test_compare_detects_each_kind_of_difference(samba_pair):
    source, destination = samba_pair
    with LabTree(source.address, "data") as left, LabTree(destination.address, "data") as right:
        build_hostile_tree(left, large_size=LARGE)
        tree = build_hostile_tree(right, large_size=LARGE)
        expected = set()

        def restore_times(path):
            right.set_basic_info(path, *tree.times[path][:3])

        # One byte of data changed (times put back, so only the data differs).
        changed = tree.names["large_file"]
        handle = right.open(changed, FILE_WRITE_DATA | SYNCHRONIZE)
        handle.write(b"\x01", LARGE // 2)
        handle.close()
        restore_times(changed)
        expected.add((_relative(tree, changed), "data"))

        # One time moved by a single 100 ns tick, and a creation time by two.
        one_tick = tree.names["deep"]
        creation, access, write = tree.times[one_tick]
        right.set_basic_info(one_tick, last_write=write + 1)
        expected.add((_relative(tree, one_tick), "last_write_time"))
        right.set_basic_info(tree.names["cjk"], creation=tree.times[tree.names["cjk"]][0] + 2)
        expected.add((_relative(tree, tree.names["cjk"]), "creation_time"))

        # One ACE's mask changed (READ -> FULL for Everyone), order kept.
        acl_path = tree.names["non_canonical"]
        right.set_security_descriptor(acl_path, security_descriptor(
            USERS, ADMINISTRATORS,
            [(ALLOW, 0, FULL, EVERYONE), (DENY, 0, WRITE, GUESTS), (ALLOW, 0, FULL, ADMINISTRATORS)]))
        expected.add((_relative(tree, acl_path), "dacl"))
        # Another file's owner and group changed.
        owner_path = tree.names["dots"]
        right.set_security_descriptor(owner_path, security_descriptor(
            USERS, ADMINISTRATORS, [(ALLOW, 0, FULL, ADMINISTRATORS), (ALLOW, 0, READ, EVERYONE)]))
        expected |= {(_relative(tree, owner_path), "owner"), (_relative(tree, owner_path), "group")}

        # The protected flag dropped from a DACL, its ACEs unchanged.
        secured = tree.names["secured_dir"]
        _control, _owner, _group, dacl = split_security_descriptor(tree.descriptors[secured])
        unprotected = bytearray(tree.descriptors[secured])
        unprotected[2:4] = (int.from_bytes(unprotected[2:4], "little") & ~0x1000).to_bytes(2, "little")
        right.set_security_descriptor(secured, bytes(unprotected))
        assert split_security_descriptor(right.security_descriptor(secured))[3] == dacl
        expected.add((_relative(tree, secured), "dacl_control"))

        # One alternate data stream dropped; another one's bytes changed.
        streams = tree.names["file_streams"]
        right.delete(streams + ":alpha")
        restore_times(streams)
        expected.add((_relative(tree, streams), "streams"))
        dir_streams = tree.names["dir_streams"]
        right.write_file(dir_streams + ":dirmeta", bytes(120))
        restore_times(dir_streams)
        expected.add((_relative(tree, dir_streams), "stream:dirmeta"))

        # One attribute bit flipped.
        flipped = tree.path("attributes", "normal.txt")
        right.set_basic_info(flipped, attributes=HIDDEN)
        expected.add((_relative(tree, flipped), "attributes"))

        # One file dropped (the NFD twin: its NFC sibling must not stand in for it) and one
        # extra file; the parent directory's times put back.
        right.delete(tree.names["nfd"])
        right.write_file(tree.path("names", "extra.txt"), b"not in the source\n")
        restore_times(tree.path("names"))
        expected |= {(_relative(tree, tree.names["nfd"]), "missing"), ("names\\extra.txt", "extra")}

        found = {(d.path, d.field) for d in compare_trees(left, "hostile", right, "hostile")}
        assert found == expected


def test_compare_detects_a_file_replaced_by_a_directory(samba_pair):
    source, destination = samba_pair
    with LabTree(source.address, "data") as left, LabTree(destination.address, "data") as right:
        for lab in (left, right):
            lab.mkdir("root")
        left.write_file("root\\thing", b"a file")
        right.mkdir("root\\thing")
        differences = compare_trees(left, "root", right, "root", include_root=False)
        assert [(d.path, d.field) for d in differences] == [("thing", "type")]


def test_source_times_from_before_a_copy_read_the_source(samba_pair):
    """A copier reads the source, which moves its last-access times (relatime); judged
    against a snapshot taken before, an exact destination compares equal, and a
    destination one tick off still does not."""
    source, destination = samba_pair
    files = {f"file {n}.bin": bytes([n]) * (1000 * n) for n in range(1, 6)}
    with LabTree(source.address, "data") as left, LabTree(destination.address, "data") as right:
        for lab in (left, right):
            lab.mkdir("flat")
            for number, (name, data) in enumerate(files.items()):
                lab.write_file("flat\\" + name, data, security_descriptor=PLAIN_FILE)
                lab.set_basic_info("flat\\" + name, TIME_BASE + 2 * number, TIME_BASE + 4 * number,
                                   TIME_BASE + 6 * number, 0, ARCHIVE)
        before = snapshot_times(left, "flat")
        assert before["file 2.bin"] == (TIME_BASE + 2, TIME_BASE + 4, TIME_BASE + 6)
        for name in files:  # what a copier does to the source: read every file
            b"".join(left.read_chunks("flat\\" + name))
        assert all(left.basic_info("flat\\" + name)[1] != before[name][1] for name in files)
        right.set_basic_info("flat\\file 3.bin", last_access=TIME_BASE + 4 * 2 + 1)
        # One comparison only: it reads the destination's data, which moves its times too.
        found = compare_trees(left, "flat", right, "flat", include_root=False, source_times=before)
        assert [(d.path, d.field) for d in found] == [("file 3.bin", "last_access_time")]
