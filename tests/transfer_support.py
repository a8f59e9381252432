"""Helpers shared by the transfer end-to-end tests: settings, server rows, the CLI, comparison.

Servers are registered straight through the models (the job/server service is another
engineer's); the migration account's password is stored only encrypted. The ``sms`` CLI
runs as a real subprocess with settings in its environment, never on its command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import select

from common.crypto import encrypt_secret
from common.db import dispose_engines, session_scope
from common.models import FileRecord, Job, Server, ServerKind, run_records
from common.settings import reset_settings_cache
from tests.lab.compare import compare_trees
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER
from tests.lab.smbio import LabTree

SMS = Path(sys.executable).with_name("sms")


def use_settings(monkeypatch, **values: str) -> dict[str, str]:
    """Make exactly these SMS_* settings (plus a fresh credential key) this process's and
    return them as an environment for subprocesses."""
    for name in list(os.environ):
        if name.startswith("SMS_"):
            monkeypatch.delenv(name)
    env = {"SMS_SECRET_KEY": Fernet.generate_key().decode(), **values}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    dispose_engines()
    return env


def register_servers(job_name: str, servers: dict[str, tuple]) -> None:
    """A job with one Samba server row per lab smbd: {name: (SambaServer, role)}, or
    {name: (SambaServer, role, management)} for servers managed over SSH (``management``)."""
    with session_scope() as session:
        job = Job(name=job_name)
        session.add(job)
        session.flush()
        for name, (samba, role, *management) in servers.items():
            session.add(Server(job_id=job.id, name=name, role=role, kind=ServerKind.SAMBA,
                               address=samba.address, port=445, username=MIGRATION_USER,
                               credential=encrypt_secret(MIGRATION_PASSWORD),
                               management=management[0] if management else {}))


def management(sshd, server) -> dict:
    """The management settings of a lab smbd reached as root through the lab sshd."""
    return {"ssh_host": sshd.host, "ssh_port": sshd.port, "ssh_user": sshd.root_user,
            "key_file": str(sshd.client_key), "known_hosts": str(sshd.known_hosts),
            "smb_conf": str(server.conf)}


def sms(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the ``sms`` CLI in a subprocess with this process's environment."""
    return subprocess.run([str(SMS), *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


def record_states(run_id: int) -> dict[str, tuple[str, str | None]]:
    """{relative path: (state, error code)} of every record of a run."""
    records = run_records(run_id).c
    with session_scope() as session:
        return {path: (state.value, code) for path, state, code in session.execute(
            select(records.relative_path, records.state, records.error_code))}


def record_kinds(run_id: int) -> dict[str, bool]:
    """{relative path: is a folder} of every record of a run."""
    records = run_records(run_id).c
    with session_scope() as session:
        return dict(session.execute(select(records.relative_path, records.is_dir)).all())


def unexplained_differences(source, destination, share: str = "data", *,
                            destination_share: str | None = None,
                            ignore_access_times_of: set[str] | None = None,
                            ignore_all_access_times: bool = False) -> list:
    """compare_trees of the two shares' roots (the destination's share named ``share`` too
    unless ``destination_share`` says otherwise), minus what is expected after a transfer:

    - PreExistingData exists on the destination only;
    - a source file's last-access time moves when the copy reads it (relatime), so for the
      files in ``ignore_access_times_of`` the destination keeps the time from before;
    - ``ignore_all_access_times``: a second comparison of the same trees reads every file
      again and moves last-access times on both sides (tests.lab.compare says so).
    """
    ignored = ignore_access_times_of or set()
    with LabTree(source.address, share) as src, \
            LabTree(destination.address, destination_share or share) as dst:
        differences = compare_trees(src, "", dst, "")
    return [d for d in differences
            if not (d.path == "PreExistingData" and d.field == "extra")
            and not (d.field == "last_access_time" and (ignore_all_access_times or d.path in ignored))]


def fill_rerun_tree(address: str) -> None:
    """The small tree the re-run tests start from, written over SMB on share 'data': an
    empty folder, 'a', 'b' and 'b\\deep' with five files each, 'top.txt' and a stream."""
    with LabTree(address, "data") as lab:
        lab.mkdir("empty")
        for folder in ("a", "b", "b\\deep"):
            lab.mkdir(folder)
            for number in range(5):
                lab.write_file(f"{folder}\\f{number}.txt", f"{folder} {number}\n".encode() * (number + 1))
        lab.write_file("top.txt", b"top\n")
        lab.write_file("a\\f0.txt:note", b"a stream\n")


def change_both_sides(source_address: str, destination_address: str) -> list[str]:
    """On the re-run tree: a file edited, one added, one deleted and one given the hidden
    attribute on the source; a file deleted and one altered on the destination behind
    the migration's back. Returns the files a re-run must copy."""
    with LabTree(source_address, "data") as lab:
        lab.write_file("a\\f1.txt", b"edited on the source\n")
        lab.write_file("b\\deep\\new.txt", b"added on the source\n")
        lab.delete("b\\f2.txt")
        lab.set_basic_info("a\\f3.txt", attributes=0x2)
    with LabTree(destination_address, "data") as lab:
        lab.delete("b\\f4.txt")
        lab.write_file("a\\f4.txt", b"altered on the destination\n")
    return ["a\\f1.txt", "a\\f3.txt", "a\\f4.txt", "b\\deep\\new.txt", "b\\f4.txt"]


def drive_in_process(pairing_id: int, options, progress=None,
                     expected: str = "succeeded") -> tuple[int, list[list[str]]]:
    """Create and drive a run of the pairing in this process, every batch it publishes
    copied by the real ``copy_batch`` task body as a worker would; (run id, the sorted
    paths of each published batch). The run must end ``expected``."""
    from common.smb.connection import close_pool
    from orchestrator.transfer import planning
    from proxy_worker.copy_tasks import copy_batch

    with session_scope() as session:
        run_id = planning.create_run(session, session.get(planning.Pairing, pairing_id), options).id
    published: list[list[str]] = []

    def publish(dispatch) -> None:
        with session_scope() as session:
            published.append(sorted(session.scalars(select(FileRecord.relative_path).where(
                FileRecord.batch_id == dispatch.batch_id))))
        assert copy_batch.run(dispatch.batch_id) == "done"

    try:
        state = planning.execute_run(run_id, publish, poll_interval=0.1, progress=progress)
        assert state.value == expected
    finally:
        close_pool()
    return run_id, published
