"""A copier killed mid-file, or a connection lost mid-file, leaves no file under the real
name, and the next run recovers.

The copy runs in a separate process (as in a proxy worker) on a large file of random
bytes; the test watches the destination share's directory on disk and sends SIGKILL as
soon as the in-progress file holds some but not all of the data. What is left must be
at most the engine's temporary name; a re-run must then copy the file whole and leave
no temporary file behind.
"""

from __future__ import annotations

import common  # noqa: F401  (import before smbclient; impacket's bin/smbclient.py shadows it)

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from common.smb import CopyOptions, Outcome, SmbEndpoint, close_pool, copy_batch, get_tree, is_temp_name
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER

REPO = Path(__file__).resolve().parents[1]
SIZE = 192 << 20

COPIER = textwrap.dedent("""
    import sys
    import common
    from common.smb import SmbEndpoint, copy_batch
    source, destination = sys.argv[1], sys.argv[2]
    password = sys.stdin.readline().rstrip("\\n")
    copy_batch(SmbEndpoint(source, "data", sys.argv[3], password),
               SmbEndpoint(destination, "data", sys.argv[3], password), ["dir/huge.bin"])
""")


def test_killed_copier_leaves_only_a_temporary_name(samba_pair):
    src, dst = samba_pair
    source_dir = Path(src.shares["data"].path, "dir")
    source_dir.mkdir()
    data = os.urandom(SIZE)
    (source_dir / "huge.bin").write_bytes(data)
    destination_dir = Path(dst.shares["data"].path, "dir")

    copier = subprocess.Popen(
        [sys.executable, "-c", COPIER, src.address, dst.address, MIGRATION_USER],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    copier.stdin.write(f"{MIGRATION_PASSWORD}\n".encode())
    copier.stdin.close()
    killed_at = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and copier.poll() is None:
            partial = [p for p in destination_dir.glob("*")] if destination_dir.exists() else []
            sizes = [p.stat().st_size for p in partial if p.is_file()]
            if sizes and 0 < max(sizes) < SIZE:
                os.kill(copier.pid, signal.SIGKILL)
                killed_at = max(sizes)
                break
            time.sleep(0.005)
    finally:
        if copier.poll() is None:
            os.kill(copier.pid, signal.SIGKILL)
        copier.wait(timeout=30)
    assert killed_at is not None, f"copier ended before it could be killed: {copier.stderr.read()!r}"
    assert copier.returncode == -signal.SIGKILL

    time.sleep(0.5)  # let smbd finish whatever request was already on the wire
    left = sorted(p.name for p in destination_dir.iterdir())
    assert "huge.bin" not in left
    assert len(left) == 1 and is_temp_name(left[0]), left

    # The next run replaces the leftover and finishes the file.
    source = SmbEndpoint(src.address, "data", MIGRATION_USER, MIGRATION_PASSWORD)
    destination = SmbEndpoint(dst.address, "data", MIGRATION_USER, MIGRATION_PASSWORD)
    try:
        [result] = copy_batch(source, destination, ["dir/huge.bin"], CopyOptions(verify=True))
    finally:
        close_pool()
    assert result.outcome is Outcome.COPIED, result.message
    assert result.source_hash == result.destination_hash
    assert sorted(p.name for p in destination_dir.iterdir()) == ["huge.bin"]
    assert (destination_dir / "huge.bin").read_bytes() == data


def _server_process_of(client_port: int) -> int:
    """The pid of the smbd process serving the connection from local port ``client_port``."""
    lines = subprocess.run(["ss", "-tnpH", "state", "established", "( sport = :445 )"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for line in lines:
        if f":{client_port} " in line + " ":
            return int(line.split("pid=")[1].split(",")[0])
    raise AssertionError(f"no smbd serves client port {client_port}")


def test_lost_connection_fails_the_batch_cleanly_and_a_rerun_recovers(samba_pair):
    """The destination's smbd dies mid-file: the batch returns (no exception) with every
    unfinished entry failed as STATUS_TRANSPORT_ERROR, nothing appears under a real name,
    and the next batch (on a fresh session from the pool) copies everything."""
    src, dst = samba_pair
    source_dir = Path(src.shares["data"].path, "dir")
    source_dir.mkdir()
    data = os.urandom(SIZE)
    (source_dir / "huge.bin").write_bytes(data)
    for number in range(5):
        (source_dir / f"after{number}.txt").write_bytes(b"small %d" % number)
    entries = ["dir/huge.bin"] + [f"dir/after{number}.txt" for number in range(5)]
    source = SmbEndpoint(src.address, "data", MIGRATION_USER, MIGRATION_PASSWORD)
    destination = SmbEndpoint(dst.address, "data", MIGRATION_USER, MIGRATION_PASSWORD)
    destination_dir = Path(dst.shares["data"].path, "dir")
    try:
        client_port = get_tree(destination).connection.transport._sock.getsockname()[1]
        server_pid = _server_process_of(client_port)
        outcome: list = []
        copier = threading.Thread(target=lambda: outcome.append(copy_batch(source, destination, entries)))
        copier.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and copier.is_alive():
            sizes = [p.stat().st_size for p in destination_dir.glob("*")] if destination_dir.exists() else []
            if sizes and 0 < max(sizes) < SIZE:
                os.kill(server_pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        copier.join(timeout=120)
        assert not copier.is_alive() and outcome, "copy_batch did not return"
        [results] = outcome
        assert [r.path for r in results] == entries
        assert results[0].outcome is Outcome.FAILED
        assert results[0].status_name == "STATUS_TRANSPORT_ERROR"
        assert all(r.outcome is Outcome.FAILED for r in results[1:])  # not reached before the loss
        assert MIGRATION_PASSWORD not in "".join(r.message for r in results)
        left = sorted(p.name for p in destination_dir.iterdir())
        assert all(is_temp_name(name) for name in left), left

        again = copy_batch(source, destination, entries, CopyOptions(verify=True))
        assert [r.outcome for r in again] == [Outcome.COPIED] * len(entries), [r.message for r in again]
        assert sorted(p.name for p in destination_dir.iterdir()) == sorted(Path(e).name for e in entries)
        assert (destination_dir / "huge.bin").read_bytes() == data
    finally:
        close_pool()
