"""The fast SMB hot path against real lab smbd: bytes, 100 ns times, attributes and SD
bytes survive a copy; per-file NTSTATUS errors leave the channel usable; the message-id
and credit accounting stays in sync over a burst and when handed back to smbprotocol.

Source metadata is set, and destination state checked, through smbprotocol's own
messages (on other connections, or on the same one after ``release()``) and through the
share's directory on disk, never through the code under test.
"""

from __future__ import annotations

import common  # noqa: F401  (import before smbclient; impacket's bin/smbclient.py shadows it)

import os
import struct
import subprocess
import uuid

import pytest
from smbprotocol.connection import Connection, Dialects, SigningAlgorithms
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
    SMB2QueryInfoRequest,
    SMB2QueryInfoResponse,
    SMB2SetInfoRequest,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from common.smb.fastpath import (
    DEST_ACCESS,
    FILE_DIRECTORY_FILE,
    FILE_OVERWRITE_IF,
    FILE_READ_ATTRIBUTES,
    FILE_WRITE_ATTRIBUTES,
    ChannelBroken,
    DestFile,
    FastChannel,
    FastPathError,
)
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER

PLAIN_USER, PLAIN_PASSWORD = "smsfpplain", "Plain-Passw0rd!"


# --- smbprotocol helpers (independent of the code under test) -----------------------------
class Tree:
    """An smbprotocol connection + session + tree connect, closed by ``close()``."""

    def __init__(self, server, share="data", user=MIGRATION_USER, password=MIGRATION_PASSWORD, encrypt=False,
                 signing=None, dialect=None):
        self.connection = Connection(uuid.uuid4(), server.address, 445)
        self.connection.connect(dialect=dialect, preferred_signing_algos=signing)
        self.session = Session(self.connection, user, password, require_encryption=encrypt)
        self.session.connect()
        self.tree = TreeConnect(self.session, rf"\\{server.address}\{share}")
        self.tree.connect()

    def close(self):
        self.connection.disconnect()

    def _open(self, path, access, disposition=CreateDisposition.FILE_OPEN, share=ShareAccess.FILE_SHARE_READ):
        handle = Open(self.tree, path)
        handle.create(
            ImpersonationLevel.Impersonation, access, 0, share, disposition, CreateOptions.FILE_NON_DIRECTORY_FILE
        )
        return handle

    def create(self, path, data: bytes):
        handle = self._open(
            path,
            FilePipePrinterAccessMask.GENERIC_WRITE | FilePipePrinterAccessMask.WRITE_DAC
            | FilePipePrinterAccessMask.WRITE_OWNER,
            CreateDisposition.FILE_OVERWRITE_IF,
        )
        if data:
            handle.write(data, 0)
        return handle

    def query(self, handle, info_type, info_class, additional=0) -> bytes:
        request = SMB2QueryInfoRequest()
        request["info_type"] = info_type
        request["file_info_class"] = info_class
        request["output_buffer_length"] = 65535
        request["additional_information"] = additional
        request["file_id"] = handle.file_id
        sent = self.connection.send(request, self.session.session_id, self.tree.tree_connect_id)
        response = SMB2QueryInfoResponse()
        response.unpack(self.connection.receive(sent)["data"].get_value())
        return response["buffer"].get_value()

    def set(self, handle, info_type, info_class, buffer: bytes, additional=0):
        request = SMB2SetInfoRequest()
        request["info_type"] = info_type
        request["file_info_class"] = info_class
        request["additional_information"] = additional
        request["file_id"] = handle.file_id
        request["buffer"] = buffer
        sent = self.connection.send(request, self.session.session_id, self.tree.tree_connect_id)
        self.connection.receive(sent)

    def metadata(self, path) -> tuple[tuple[int, int, int, int], bytes]:
        """(creation, last access, last write, attributes) raw, and owner|group|dacl SD bytes."""
        handle = self._open(
            path,
            FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES | FilePipePrinterAccessMask.READ_CONTROL,
            share=ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE,
        )
        try:
            basic = self.query(handle, 1, 4)
            ctime, atime, mtime, _change, attributes = struct.unpack_from("<QQQQI", basic)
            sd = self.query(handle, 3, 0, 0x7)
        finally:
            handle.close()
        return (ctime, atime, mtime, attributes), sd


    def metadata_dir(self, path) -> tuple[int, int, int, int]:
        """(creation, last access, last write, attributes) of a directory, raw."""
        handle = Open(self.tree, path)
        handle.create(
            ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES, 0,
            ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE, CreateDisposition.FILE_OPEN,
            CreateOptions.FILE_DIRECTORY_FILE,
        )
        try:
            ctime, atime, mtime, _change, attributes = struct.unpack_from("<QQQQI", self.query(handle, 1, 4))
        finally:
            handle.close()
        return ctime, atime, mtime, attributes


def sid(text: str) -> bytes:
    parts = text.split("-")
    subs = [int(x) for x in parts[3:]]
    return struct.pack("<BB", 1, len(subs)) + int(parts[2]).to_bytes(6, "big") + b"".join(
        struct.pack("<I", s) for s in subs
    )


def security_descriptor(owner: str, group: str, aces: list[tuple[int, int, int, str]], protected=True) -> bytes:
    """A self-relative SD with owner, group and a DACL of (type, flags, mask, sid) ACEs."""
    body = b"".join(
        struct.pack("<BBHI", kind, flags, 8 + len(sid(who)), mask) + sid(who) for kind, flags, mask, who in aces
    )
    acl = struct.pack("<BBHHH", 2, 0, 8 + len(body), len(aces), 0) + body
    o, g = sid(owner), sid(group)
    control = 0x8000 | 0x0004 | (0x1000 if protected else 0)
    offset_owner = 20
    offset_group = offset_owner + len(o)
    offset_dacl = offset_group + len(g)
    return struct.pack("<BBHIIII", 1, 0, control, offset_owner, offset_group, 0, offset_dacl) + o + g + acl


EVERYONE, ADMINS = "S-1-1-0", "S-1-5-32-544"
UNKNOWN = "S-1-5-21-1111111111-2222222222-3333333333-1234"


def attach(tree: Tree) -> FastChannel:
    return FastChannel.attach(tree.connection, tree.session, tree.tree)


# --- tests ---------------------------------------------------------------------------------
def test_small_files_round_trip_bytes_times_attributes_and_sd(samba_pair):
    src, dst = samba_pair
    setup = Tree(src)
    cases = {
        "empty.bin": (b"", 0x20, security_descriptor(UNKNOWN, ADMINS, [(0, 0, 0x1F01FF, EVERYONE)])),
        "one.bin": (b"x", 0x01 | 0x02, security_descriptor(ADMINS, ADMINS, [(0, 0x3, 0x1F01FF, ADMINS)])),
        "sys.bin": (os.urandom(4095), 0x04, security_descriptor(UNKNOWN, UNKNOWN, [(0, 0, 0x120089, EVERYONE)])),
        "full.bin": (os.urandom(65536), 0x80, security_descriptor(
            ADMINS, EVERYONE, [(1, 0, 0x40000, EVERYONE), (0, 0, 0x1F01FF, ADMINS)], protected=False)),
        "ünï cødé 名前 😀.txt": (b"names in any unicode form\n" * 40, 0x20, security_descriptor(
            UNKNOWN, ADMINS, [(0, 0, 0x1F01FF, UNKNOWN), (0, 0, 0x120089, EVERYONE)])),
    }
    # Odd 100 ns times; last access after last write so reads do not move it (relatime).
    for number, (name, (data, attributes, sd)) in enumerate(cases.items()):
        handle = setup.create(name, data)
        times = struct.pack("<QQQQI4x", 130000000000000001 + number, 133000000000000007 + number,
                            131000000000000003 + number, 0, attributes)
        setup.set(handle, 3, 0, sd, 0x7)
        setup.set(handle, 1, 4, times)
        handle.close()
    expected = {name: setup.metadata(name) for name in cases}

    source, dest = Tree(src), Tree(dst)
    reader, writer = attach(source), attach(dest)
    read = {item.path: item for item in reader.read_small_files(cases)}
    assert all(item.complete for item in read.values()), [(i.path, i.status_name) for i in read.values()]
    for name, item in read.items():
        (ctime, atime, mtime, attributes), sd = expected[name]
        assert (item.info.creation_time, item.info.last_access_time, item.info.last_write_time) == (ctime, atime, mtime)
        assert item.info.attributes == attributes
        assert item.security == sd
        assert item.data == cases[name][0]

    results = list(writer.write_small_files(
        DestFile(item.path, item.data, item.info.creation_time, item.info.last_access_time,
                 item.info.last_write_time, 0, item.info.attributes, item.security)
        for item in read.values()
    ))
    assert [r.status_name for r in results] == ["STATUS_SUCCESS"] * len(cases)
    reader.release()
    writer.release()
    for name in cases:  # metadata first: reading the bytes moves the last-access time
        assert dest.metadata(name) == expected[name], name
        assert (dst.shares["data"].path / name).read_bytes() == cases[name][0]
    assert not [p for p in dst.shares["data"].path.iterdir() if p.name.endswith(".sms-partial")]
    for tree in (setup, source, dest):
        tree.close()


def test_ntstatus_errors_are_per_file_and_the_channel_survives(samba_factory, tmp_path):
    server = samba_factory("err")
    root = server.shares["data"].path
    (root / "a.txt").write_bytes(b"alpha")
    (root / "b.txt").write_bytes(b"bravo")
    (root / "sub").mkdir()
    admin = Tree(server)
    locked = admin._open("a.txt", FilePipePrinterAccessMask.FILE_READ_DATA, share=0)  # no sharing

    mine = Tree(server)
    channel = attach(mine)
    got = {r.path: r for r in channel.read_small_files(["b.txt", "missing.txt", "sub", "a.txt", "b.txt"])}
    assert got["missing.txt"].status_name == "STATUS_OBJECT_NAME_NOT_FOUND"
    assert got["missing.txt"].command == "CREATE"
    assert got["sub"].status_name == "STATUS_FILE_IS_A_DIRECTORY"
    assert got["a.txt"].status_name == "STATUS_SHARING_VIOLATION"
    assert got["b.txt"].complete and got["b.txt"].data == b"bravo"
    locked.close()

    # Destination errors: a missing directory, a refused replace; no temporary file left.
    results = {r.path: r for r in channel.write_small_files(
        [DestFile("nodir/x.txt", b"1"), DestFile("b.txt", b"new", attributes=0x20), DestFile("c.txt", b"charlie")],
        replace=False,
    )}
    assert results["nodir/x.txt"].status_name == "STATUS_OBJECT_PATH_NOT_FOUND"
    assert results["b.txt"].status_name == "STATUS_OBJECT_NAME_COLLISION"
    assert results["b.txt"].command == "SET_INFO rename"
    assert results["c.txt"].status == 0
    assert (root / "b.txt").read_bytes() == b"bravo"
    assert (root / "c.txt").read_bytes() == b"charlie"
    assert not [p for p in root.iterdir() if p.name.endswith(".sms-partial")]

    with pytest.raises(FastPathError) as error:
        channel.open("missing.txt")
    assert error.value.status_name == "STATUS_OBJECT_NAME_NOT_FOUND"
    assert [r.data for r in channel.read_small_files(["a.txt"])] == [b"alpha"]
    abandoned = channel.read_small_files(["a.txt", "b.txt"] * 20)
    assert next(abandoned).data == b"alpha"
    channel.release()  # drops the responses still due, then smbprotocol is in sync again
    assert mine.metadata("c.txt")[0][2] > 0
    mine.close()

    # ACCESS_DENIED needs an account the DACL shuts out (the migration account is admin).
    public = tmp_path / "public"
    public.mkdir()
    for directory in [public, *public.parents]:
        if directory == directory.parent or str(directory) == "/tmp":
            break
        directory.chmod(directory.stat().st_mode | 0o011)  # let the plain account traverse
    public.chmod(0o777)
    server.add_share("public", path=public)
    server.add_user(PLAIN_USER, PLAIN_PASSWORD)
    other = Tree(server, share="public")
    secret = other.create("secret.txt", b"classified")
    other.set(secret, 3, 0, security_descriptor(ADMINS, ADMINS, [(0, 0, 0x1F01FF, ADMINS)]), 0x7)
    secret.close()
    (public / "open.txt").write_bytes(b"open")
    (public / "open.txt").chmod(0o644)
    plain = Tree(server, share="public", user=PLAIN_USER, password=PLAIN_PASSWORD)
    channel = attach(plain)
    got = {r.path: r for r in channel.read_small_files(["secret.txt", "open.txt"])}
    assert (got["secret.txt"].status_name, got["secret.txt"].command) == ("STATUS_ACCESS_DENIED", "CREATE")
    assert got["open.txt"].complete and got["open.txt"].data == b"open", got["open.txt"]
    channel.release()
    plain.close()
    other.close()
    admin.close()


def test_burst_of_2000_files_stays_in_sync_and_hands_back_to_smbprotocol(samba_pair):
    src, dst = samba_pair
    src_root, dst_root = src.shares["data"].path, dst.shares["data"].path
    payloads = {}
    for number in range(2000):
        name = f"d{number % 20:02d}/f{number:04d}.dat"
        (src_root / name).parent.mkdir(exist_ok=True)
        (dst_root / name).parent.mkdir(exist_ok=True)
        payloads[name] = os.urandom(1 + (number * 7919) % 20000)
        (src_root / name).write_bytes(payloads[name])

    source, dest = Tree(src), Tree(dst)
    reader, writer = attach(source), attach(dest)
    items = (
        DestFile(r.path, r.data, r.info.creation_time, r.info.last_access_time, r.info.last_write_time, 0,
                 r.info.attributes, r.security)
        for r in reader.read_small_files(payloads, depth=48)
    )
    results = list(writer.write_small_files(items, depth=48))
    assert len(results) == 2000 and all(r.status == 0 for r in results)
    assert reader.credits > 0 and writer.credits > 0
    for name, data in payloads.items():
        assert (dst_root / name).read_bytes() == data

    # Still in sync: another round trip on each channel, then smbprotocol takes over again.
    assert [r.data for r in reader.read_small_files(["d00/f0000.dat"])] == [payloads["d00/f0000.dat"]]
    reader.release()
    writer.release()
    assert source.metadata("d07/f0007.dat")[0][3] == dest.metadata("d07/f0007.dat")[0][3]
    handle = source._open("d01/f0001.dat", FilePipePrinterAccessMask.FILE_READ_DATA)
    assert handle.read(0, len(payloads["d01/f0001.dat"])) == payloads["d01/f0001.dat"]
    handle.close()
    with pytest.raises(ChannelBroken):
        list(reader.read_small_files(["d00/f0000.dat"]))
    source.close()
    dest.close()


@pytest.mark.parametrize(
    ("encrypt", "signing", "dialect", "expected"),
    [
        (False, None, None, "AES-GMAC"),
        (False, [SigningAlgorithms.AES_CMAC], None, "AES-CMAC"),
        (False, None, Dialects.SMB_2_1_0, "HMAC-SHA256"),
        (True, None, None, ""),
    ],
    ids=["gmac", "cmac", "smb2.1-hmac", "encrypted"],
)
def test_large_file_pipelined_ranges(samba_pair, encrypt, signing, dialect, expected):
    src, dst = samba_pair
    data = os.urandom(5 * (1 << 20) + 123)
    (src.shares["data"].path / "big.bin").write_bytes(data)
    source = Tree(src, encrypt=encrypt, signing=signing, dialect=dialect)
    dest = Tree(dst, encrypt=encrypt, signing=signing, dialect=dialect)
    reader, writer = attach(source), attach(dest)
    assert (reader.encrypted, reader.signing_algorithm) == (encrypt, expected)
    handle = reader.open("big.bin")
    assert handle.info.end_of_file == len(data)
    chunks = list(reader.read_range(handle, 0, handle.info.end_of_file + 4096, chunk=1 << 20, depth=4))
    assert b"".join(chunks) == data
    sd = reader.query_security(handle)
    reader.close(handle)

    # The engine's large-file commit: temporary name, data, SD, rename, times, close.
    out = writer.open("big.bin.sms-partial", DEST_ACCESS, FILE_OVERWRITE_IF, share=0)
    assert writer.write_range(out, iter(chunks), depth=4) == len(data)
    writer.set_security(out, sd)
    writer.rename(out, "big.bin")
    writer.set_basic_info(out, 0, 0, 131000000000000009, 0, 0x20)
    info = writer.close(out)
    assert (info.end_of_file, info.last_write_time, info.attributes) == (len(data), 131000000000000009, 0x20)
    assert (dst.shares["data"].path / "big.bin").read_bytes() == data
    scratch = writer.open("scratch.tmp", DEST_ACCESS, FILE_OVERWRITE_IF, share=0)
    writer.delete_on_close(scratch)
    writer.close(scratch)
    assert not (dst.shares["data"].path / "scratch.tmp").exists()
    # Small files through an encrypted session too.
    assert [r.data for r in reader.read_small_files(["big.bin"], max_bytes=10)] == [data[:10]]
    reader.release()
    writer.release()
    assert dest.metadata("big.bin")[1] == source.metadata("big.bin")[1] == sd
    source.close()
    dest.close()


def test_failed_write_never_appears_under_its_real_name(samba_factory, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        server = samba_factory("full", shares=())
        server.add_share("small", path=small)
        dest = Tree(server, share="small")
        writer = attach(dest)
        fits, too_big = os.urandom(40000), os.urandom(65536)
        results = {r.path: r for r in writer.write_small_files(
            [DestFile("fits.bin", fits), DestFile("big1.bin", too_big), DestFile("big2.bin", too_big)]
        )}
        assert results["fits.bin"].status == 0
        failed = [r for r in results.values() if r.status]
        assert failed and all((r.status_name, r.command) == ("STATUS_DISK_FULL", "WRITE") for r in failed)
        names = {p.name for p in small.iterdir()}
        assert "fits.bin" in names
        assert not any(n.endswith(".sms-partial") for n in names)
        assert not names & {r.path for r in failed}
        # The channel is still in sync after the failures.
        assert [r.data for r in writer.read_small_files(["fits.bin"])] == [fits]
        writer.release()
        dest.close()
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_streams_and_directory_times_through_handles(samba_pair):
    src, dst = samba_pair
    (src.shares["data"].path / "doc.txt").write_bytes(b"main")
    (dst.shares["data"].path / "doc.txt").write_bytes(b"main")
    (dst.shares["data"].path / "folder").mkdir()
    setup = Tree(src)
    stream = setup.create("doc.txt:meta", b"stream bytes")
    stream.close()
    setup_sd = setup.metadata("doc.txt")[1]
    source, dest = Tree(src), Tree(dst)
    reader, writer = attach(source), attach(dest)
    (main,) = reader.read_small_files(["doc.txt"], streams=True)
    assert main.complete and main.data == b"main" and main.streams == [(":meta:$DATA", 12)]
    assert main.security == setup_sd
    (item,) = reader.read_small_files(["doc.txt:meta"], security=False)
    assert item.complete and item.data == b"stream bytes" and item.security is None

    out = writer.open("doc.txt:meta", DEST_ACCESS, FILE_OVERWRITE_IF, share=0)
    assert writer.write_range(out, [item.data]) == len(item.data)
    writer.close(out)
    folder = writer.open("folder", FILE_WRITE_ATTRIBUTES | FILE_READ_ATTRIBUTES, options=FILE_DIRECTORY_FILE)
    writer.set_basic_info(folder, 130000000000000011, 130000000000000012, 130000000000000013, 0, 0x10 | 0x2)
    writer.close(folder)
    (copied,) = writer.read_small_files(["doc.txt:meta"], security=False)
    assert copied.data == b"stream bytes"
    reader.release()
    writer.release()
    ctime, atime, mtime, attributes = dest.metadata_dir("folder")
    assert (ctime, atime, mtime, attributes) == (130000000000000011, 130000000000000012, 130000000000000013, 0x12)
    for tree in (setup, source, dest):
        tree.close()


def test_pipelining_waits_for_credits_when_few_are_granted(samba_factory):
    server = samba_factory("credits")
    root = server.shares["data"].path
    payloads = {f"c{number:03d}.bin": os.urandom(100 + number) for number in range(300)}
    for name, data in payloads.items():
        (root / name).write_bytes(data)
    tree = Tree(server)
    channel = FastChannel.attach(tree.connection, tree.session, tree.tree, credits=8)
    channel.target_credits = 8  # keep the window small: the pipeline must wait for grants
    assert channel.credits < 4 * 64  # fewer than 64 files in flight would need
    got = {r.path: r.data for r in channel.read_small_files(payloads, depth=64)}
    assert got == payloads
    written = list(channel.write_small_files(
        (DestFile("copy-" + name, data) for name, data in payloads.items()), depth=64
    ))
    assert all(r.status == 0 for r in written)
    channel.release()
    assert all((root / ("copy-" + name)).read_bytes() == data for name, data in payloads.items())
    tree.close()


def test_listing_probing_end_of_file_and_server_side_copy(samba_factory):
    server = samba_factory("inspect")
    root = server.shares["data"].path
    (root / "dir").mkdir()
    names = ["a.bin", "\u00c5.txt", "\u212b.txt", "name with spaces"]  # two different "Å" files
    for number, name in enumerate(names):
        (root / "dir" / name).write_bytes(b"x" * (number + 1))
    (root / "dir" / "sub").mkdir()
    data = os.urandom(3 << 20)
    (root / "big.bin").write_bytes(data)
    tree = Tree(server)
    channel = attach(tree)
    listing = channel.list_directory("dir")
    assert sorted(listing) == sorted(names + ["sub"])
    assert [listing[name].end_of_file for name in names] == [1, 2, 3, 4]
    assert listing["sub"].attributes & 0x10
    with pytest.raises(FastPathError) as missing:
        channel.list_directory("nowhere")
    assert missing.value.status_name == "STATUS_OBJECT_NAME_NOT_FOUND"
    probed = list(channel.stat_files(["dir\\a.bin", "dir\\gone", "dir\\sub", "big.bin"]))
    assert [(path, status) for path, status, _info in probed] == [
        ("dir\\a.bin", 0), ("dir\\gone", 0xC0000034), ("dir\\sub", 0), ("big.bin", 0)]
    assert probed[3][2].end_of_file == len(data) and probed[1][2] is None

    # Server-side copy (FSCTL_SRV_REQUEST_RESUME_KEY + FSCTL_SRV_COPYCHUNK_WRITE) and end of file.
    source = channel.open("big.bin")
    copy = channel.open("copy.bin", DEST_ACCESS, FILE_OVERWRITE_IF, share=0)
    resume_key = channel.ioctl(source, 0x00140078, b"", 32)[:24]
    chunks = [(offset, offset, 1 << 20) for offset in range(0, len(data), 1 << 20)]
    request = resume_key + struct.pack("<II", len(chunks), 0) + b"".join(
        struct.pack("<QQII", s, t, n, 0) for s, t, n in chunks)
    written, _chunk, total = struct.unpack("<III", channel.ioctl(copy, 0x001480F2, request, 12))
    assert (written, total) == (len(chunks), len(data))
    channel.set_end_of_file(copy, len(data) + 5)
    assert channel.query_streams(copy) == []
    assert channel.close(copy).end_of_file == len(data) + 5
    channel.close(source)
    # A delete-on-close handle closed without post-query (Samba panics on some otherwise).
    scratch = channel.open("scratch.tmp", DEST_ACCESS, FILE_OVERWRITE_IF, share=0)
    channel.delete_on_close(scratch)
    assert channel.close(scratch, query=False) is None
    channel.release()
    assert (root / "copy.bin").read_bytes() == data + bytes(5)
    assert not (root / "scratch.tmp").exists()
    tree.close()
