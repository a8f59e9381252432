"""Benchmark: copy small files with full metadata, FastChannel vs plain smbprotocol compounds.

Starts two lab smbd instances (source, destination) on loopback, fills the source share
with small files (default 2,000 of 1 B to 64 KiB in 20 directories), and copies them in
the same run with each method, alternating rounds into fresh destination directories:

* ``fastpath``: common.smb.fastpath.FastChannel — per file a source compound CREATE +
  QUERY_INFO(SD) + READ + CLOSE and destination compounds CREATE(temp, SecD) + WRITE,
  then SET_INFO rename + SET_INFO basic + CLOSE; ``--depth`` files in flight.
* ``smbprotocol``: the same messages built from smbprotocol's objects and sent with
  ``Connection.send_compound(related=True)``, one file at a time in one thread (plus a
  QUERY_INFO FileBasicInformation, because smbprotocol's CREATE response gives datetimes
  that drop the last 100 ns digit).

Prints files/s (wall clock) and client CPU per file (time.process_time, all threads of
this process) for each method, and the ratios from the same run. ``--checksum sha256``
hashes every file's bytes in both methods, as the copy engine does. ``--large-mib N``
also copies one N MiB file with 1 MiB READs/WRITEs, ``--large-depth`` in flight, each
method, and prints MB/s and client CPU per GiB. Every copied file is checked byte for
byte afterwards. Not a test: run it by hand,
``.venv/bin/python bench/bench_fastpath.py``. Loopback only; stops every smbd it started.
"""

from __future__ import annotations

import common  # noqa: F401  (import before smbclient; impacket's bin/smbclient.py shadows it)

import argparse
import hashlib
import os
import random
import struct
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smbprotocol.connection import Connection  # noqa: E402
from smbprotocol.create_contexts import CreateContextName, SMB2CreateContextRequest  # noqa: E402
from smbprotocol.exceptions import SMBResponseException  # noqa: E402
from smbprotocol.file_info import FileRenameInformation  # noqa: E402
from smbprotocol.open import (  # noqa: E402
    CreateDisposition,
    CreateOptions,
    ImpersonationLevel,
    Open,
    SMB2QueryInfoRequest,
    SMB2QueryInfoResponse,
    SMB2SetInfoRequest,
)
from smbprotocol.session import Session  # noqa: E402
from smbprotocol.tree import TreeConnect  # noqa: E402

from common.smb.fastpath import DEST_ACCESS, SOURCE_ACCESS, DestFile, FastChannel  # noqa: E402
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, SambaServer  # noqa: E402

RELATED = b"\xff" * 16


def connect(server: SambaServer) -> tuple[Connection, Session, TreeConnect]:
    """An smbprotocol connection, session and tree connect to the server's ``data`` share."""
    connection = Connection(uuid.uuid4(), server.address, 445)
    connection.connect()
    session = Session(connection, MIGRATION_USER, MIGRATION_PASSWORD, require_encryption=False)
    session.connect()
    tree = TreeConnect(session, rf"\\{server.address}\data")
    tree.connect()
    return connection, session, tree


def _hash(data: bytes, algorithm: str) -> None:
    if algorithm != "none":
        hashlib.new(algorithm, data).digest()


def copy_fastpath(src, dst, names: list[str], prefix: str, depth: int, checksum: str = "none") -> int:
    """Copy with two FastChannels; returns the number of files copied without error."""
    reader = FastChannel.attach(*src)
    writer = FastChannel.attach(*dst)
    items = (
        DestFile(prefix + r.path, r.data, r.info.creation_time, r.info.last_access_time, r.info.last_write_time,
                 0, r.info.attributes, r.security)
        for r in reader.read_small_files(names, depth=depth)
        if r.complete and not _hash(r.data, checksum)
    )
    copied = sum(1 for result in writer.write_small_files(items, depth=depth) if result.status == 0)
    reader.release()
    writer.release()
    return copied


def _receive(connection, request):
    return connection.receive(request)["data"].get_value()


def copy_smbprotocol(src, dst, names: list[str], prefix: str, checksum: str = "none") -> int:
    """Copy with smbprotocol's objects and related compounds, one file at a time."""
    s_conn, s_sess, s_tree = src
    d_conn, d_sess, d_tree = dst
    copied = 0
    for name in names:
        try:
            # Source: CREATE + QUERY_INFO basic + QUERY_INFO security + READ + CLOSE.
            handle = Open(s_tree, name)
            create, create_done = handle.create(
                ImpersonationLevel.Impersonation, SOURCE_ACCESS, 0, 7, CreateDisposition.FILE_OPEN,
                CreateOptions.FILE_NON_DIRECTORY_FILE, send=False,
            )
            basic_q = SMB2QueryInfoRequest()
            basic_q["info_type"], basic_q["file_info_class"] = 1, 4
            basic_q["output_buffer_length"] = 40
            basic_q["file_id"] = RELATED
            sd_q = SMB2QueryInfoRequest()
            sd_q["info_type"], sd_q["additional_information"] = 3, 7
            sd_q["output_buffer_length"] = 65535
            sd_q["file_id"] = RELATED
            read, read_done = handle.read(0, 65536, send=False)
            close, close_done = handle.close(send=False)
            requests = s_conn.send_compound([create, basic_q, sd_q, read, close], s_sess.session_id,
                                            s_tree.tree_connect_id, related=True)
            create_done(requests[0])
            responses = []
            for request in requests[1:3]:
                query = SMB2QueryInfoResponse()
                query.unpack(_receive(s_conn, request))
                responses.append(query["buffer"].get_value())
            data = read_done(requests[3])
            close_done(requests[4])
            _hash(data, checksum)
            ctime, atime, mtime, _change, attributes = struct.unpack_from("<QQQQI", responses[0])
            sd = responses[1]

            # Destination: CREATE(temp, SecD) + WRITE; then rename + SET_INFO basic + CLOSE.
            target = prefix + name
            out = Open(d_tree, target + ".sms-partial")
            context = SMB2CreateContextRequest()
            context["buffer_name"] = CreateContextName.SMB2_CREATE_SD_BUFFER
            context["buffer_data"] = sd
            create, create_done = out.create(
                ImpersonationLevel.Impersonation, DEST_ACCESS, 0x80, 0, CreateDisposition.FILE_OVERWRITE_IF,
                CreateOptions.FILE_NON_DIRECTORY_FILE, create_contexts=[context], send=False,
            )
            messages = [create]
            write_done = None
            if data:
                write, write_done = out.write(data, 0, send=False)
                messages.append(write)
            requests = d_conn.send_compound(messages, d_sess.session_id, d_tree.tree_connect_id, related=True)
            create_done(requests[0])
            if write_done:
                write_done(requests[1])
            rename_info = FileRenameInformation()
            rename_info["replace_if_exists"] = True
            rename_info["file_name"] = target.replace("/", "\\")
            rename = SMB2SetInfoRequest()
            rename["info_type"], rename["file_info_class"] = 1, 10
            rename["file_id"] = out.file_id
            rename["buffer"] = rename_info
            basic = SMB2SetInfoRequest()
            basic["info_type"], basic["file_info_class"] = 1, 4
            basic["file_id"] = RELATED
            basic["buffer"] = struct.pack("<QQQQI4x", ctime, atime, mtime, 0, attributes or 0x80)
            close, close_done = out.close(get_attributes=True, send=False)
            requests = d_conn.send_compound([rename, basic, close], d_sess.session_id, d_tree.tree_connect_id,
                                            related=True)
            _receive(d_conn, requests[0])
            _receive(d_conn, requests[1])
            close_done(requests[2])
            copied += 1
        except SMBResponseException as exc:
            print(f"  {name}: {exc.status}", file=sys.stderr)
    return copied


def large_fastpath(src, dst, name: str, target: str, depth: int) -> int:
    """Copy one large file with pipelined 1 MiB READs and WRITEs; returns its size."""
    reader = FastChannel.attach(*src)
    writer = FastChannel.attach(*dst)
    handle = reader.open(name)
    out = writer.open(target, DEST_ACCESS, 5, share=0)
    chunks = reader.read_range(handle, 0, handle.info.end_of_file, chunk=1 << 20, depth=depth)
    size = writer.write_range(out, chunks, depth=depth)
    reader.close(handle)
    writer.close(out)
    reader.release()
    writer.release()
    return size


def large_smbprotocol(src, dst, name: str, target: str, depth: int) -> int:
    """Copy one large file with smbprotocol: ``depth`` 1 MiB READs, then WRITEs, in flight."""
    for connection, session, _ in (src, dst):
        connection.echo(sid=session.session_id, credit_request=512)
    handle = Open(src[2], name)
    handle.create(ImpersonationLevel.Impersonation, SOURCE_ACCESS, 0, 7, CreateDisposition.FILE_OPEN,
                  CreateOptions.FILE_NON_DIRECTORY_FILE)
    out = Open(dst[2], target)
    out.create(ImpersonationLevel.Impersonation, DEST_ACCESS, 0x80, 0, CreateDisposition.FILE_OVERWRITE_IF,
               CreateOptions.FILE_NON_DIRECTORY_FILE)
    size, offset, chunk = handle.end_of_file, 0, 1 << 20
    while offset < size:
        reads = []
        for start in range(offset, min(size, offset + depth * chunk), chunk):
            message, done = handle.read(start, min(chunk, size - start), send=False)
            reads.append((start, done, src[0].send(message, src[1].session_id, src[2].tree_connect_id)))
        writes = []
        for start, done, request in reads:
            message, write_done = out.write(done(request), start, send=False)
            writes.append((write_done, dst[0].send(message, dst[1].session_id, dst[2].tree_connect_id)))
        for write_done, request in writes:
            write_done(request)
        offset += depth * chunk
    handle.close()
    out.close()
    return size


def make_source(root: Path, count: int, max_size: int, seed: int) -> dict[str, bytes]:
    """Write ``count`` files of 1..max_size bytes in 20 directories; returns their bytes."""
    rng = random.Random(seed)
    files = {}
    for number in range(count):
        name = f"d{number % 20:02d}/f{number:05d}.bin"
        (root / name).parent.mkdir(exist_ok=True)
        files[name] = os.urandom(rng.randint(1, max_size))
        (root / name).write_bytes(files[name])
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--max-size", type=int, default=65536)
    parser.add_argument("--depth", type=int, default=32, help="files in flight on the fast path")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per method")
    parser.add_argument("--checksum", default="none", help="hash each file's bytes: none, sha256, md5 ...")
    parser.add_argument("--large-mib", type=int, default=0, help="also copy one file of this many MiB")
    parser.add_argument("--large-depth", type=int, default=4, help="1 MiB requests in flight (large file)")
    args = parser.parse_args()

    servers = [SambaServer("bsrc"), SambaServer("bdst")]
    try:
        for server in servers:
            server.add_share("data")
            server.start()
        src_root, dst_root = (s.shares["data"].path for s in servers)
        files = make_source(src_root, args.files, args.max_size, 1)
        names = list(files)
        total = {"fastpath": [0.0, 0.0, 0], "smbprotocol": [0.0, 0.0, 0]}
        for round_number in range(args.rounds):
            for method in ("smbprotocol", "fastpath") if round_number % 2 == 0 else ("fastpath", "smbprotocol"):
                prefix = f"{method}{round_number}/"
                for directory in {name.split("/")[0] for name in names}:
                    (dst_root / prefix / directory).mkdir(parents=True, exist_ok=True)
                src, dst = connect(servers[0]), connect(servers[1])
                wall, cpu = time.perf_counter(), time.process_time()
                if method == "fastpath":
                    copied = copy_fastpath(src, dst, names, prefix, args.depth, args.checksum)
                else:
                    copied = copy_smbprotocol(src, dst, names, prefix, args.checksum)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                for connection, _, _ in (src, dst):
                    connection.disconnect()
                bad = [n for n in names if (dst_root / prefix / n).read_bytes() != files[n]]
                print(f"round {round_number} {method:12s} {copied} files in {wall:6.2f} s: "
                      f"{copied / wall:7.1f} files/s, client CPU {cpu / copied * 1000:6.3f} ms/file"
                      + (f", {len(bad)} MISMATCHED" if bad else ""))
                total[method][0] += wall
                total[method][1] += cpu
                total[method][2] += copied
        summary = {}
        for method, (wall, cpu, copied) in total.items():
            summary[method] = (copied / wall, cpu / copied * 1000)
            print(f"{method:12s} {summary[method][0]:7.1f} files/s  {summary[method][1]:6.3f} ms client CPU/file")
        fast, slow = summary["fastpath"], summary["smbprotocol"]
        print(f"fastpath / smbprotocol: {fast[0] / slow[0]:.2f}x files/s, {slow[1] / fast[1]:.2f}x less client CPU")
        if args.large_mib:
            big = os.urandom(1 << 20) * args.large_mib
            (src_root / "large.bin").write_bytes(big)
            rates = {}
            for method in ("smbprotocol", "fastpath"):
                src, dst = connect(servers[0]), connect(servers[1])
                wall, cpu = time.perf_counter(), time.process_time()
                copy = large_fastpath if method == "fastpath" else large_smbprotocol
                size = copy(src, dst, "large.bin", f"large-{method}.bin", args.large_depth)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                for connection, _, _ in (src, dst):
                    connection.disconnect()
                same = (dst_root / f"large-{method}.bin").read_bytes() == big
                rates[method] = size / wall / 1e6
                print(f"large {method:12s} {args.large_mib} MiB: {rates[method]:7.1f} MB/s, "
                      f"client CPU {cpu / (size / (1 << 30)):5.2f} s/GiB" + ("" if same else ", MISMATCHED"))
            print(f"large fastpath / smbprotocol: {rates['fastpath'] / rates['smbprotocol']:.2f}x MB/s")
    finally:
        for server in servers:
            server.destroy()


if __name__ == "__main__":
    main()
