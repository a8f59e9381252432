"""Two sources migrate to two destinations at once over a real Redis and PostgreSQL.

Four lab smbd instances; each destination has its own ``sms-worker`` process (Celery
prefork) consuming only its own queue on Redis; the job database is PostgreSQL (file
records bulk-loaded with COPY). One ``sms transfer run --wait`` drives both pairings in
parallel; the second source has a folder so wide that its subfolders' metadata goes out
as parallel batches. Both go into destination shares of another name (``--share-map``).
Afterwards each destination is compared with its source field by field by the
independent comparison (tests.lab.compare), both runs reconcile clean, every batch was
copied by its own destination's worker, and the two runs overlapped in time.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

import uuid

import pytest
from sqlalchemy import func, select

from common.db import session_scope
from common.models import Batch, FileRecord, Pairing, Server, ServerRole, TransferRun
from orchestrator.database import upgrade_to_head
from orchestrator.transfer import planning
from orchestrator.transfer.reconcile import cutover_allowed, reconcile
from tests.lab.smbio import LabTree
from tests.lab.trees import TIME_BASE, build_hostile_tree
from tests.transfer_support import register_servers, sms, unexplained_differences, use_settings


def fill_source(server, seed: int, folders: int, wide: int = 0) -> set[str]:
    """A hostile tree, ``folders`` folders of small files and a folder holding ``wide``
    subfolders (more than planning.DIRECTORY_PARALLEL_MIN makes their metadata go out as
    parallel batches); returns the file paths."""
    with LabTree(server.address, "data") as lab:
        tree = build_hostile_tree(lab, "hostile", large_size=2 << 20, seed=seed)
        files = set(tree.files)
        for folder in range(folders):
            lab.mkdir(f"bulk{folder}")
            for number in range(12):
                path = f"bulk{folder}\\file{number:02d}.bin"
                lab.write_file(path, bytes([seed, folder, number]) * (100 * number + 1))
                files.add(path)
        if wide:
            lab.mkdir("wide")
            for number in range(wide):
                lab.mkdir(f"wide\\sub{number:03d}")
                lab.set_basic_info(f"wide\\sub{number:03d}", TIME_BASE + 2 * number,
                                   TIME_BASE + 4 * number, TIME_BASE + 6 * number, 0, 0)
    return files


@pytest.mark.timeout(600)
def test_two_sources_to_two_destinations_at_once(samba_factory, worker_factory, redis_url,
                                                 fresh_postgres_url, tmp_path, monkeypatch):
    env = use_settings(monkeypatch, SMS_DATABASE_URL=fresh_postgres_url, SMS_BROKER_URL=redis_url,
                       SMS_QUEUE_PREFIX=f"t{uuid.uuid4().hex[:10]}", SMS_BATCH_MAX_FILES="10",
                       SMS_STATE_DIR=str(tmp_path / "state"))
    upgrade_to_head(fresh_postgres_url)
    src1, src2 = samba_factory("src1"), samba_factory("src2")
    dst1, dst2 = samba_factory("dst1", shares=("archive",)), samba_factory("dst2", shares=("archive",))
    files = {"src1": fill_source(src1, seed=3, folders=2),
             "src2": fill_source(src2, seed=5, folders=3, wide=planning.DIRECTORY_PARALLEL_MIN + 10)}
    register_servers("multi", {"src1": (src1, ServerRole.SOURCE), "src2": (src2, ServerRole.SOURCE),
                               "dst1": (dst1, ServerRole.DESTINATION),
                               "dst2": (dst2, ServerRole.DESTINATION)})
    for source, destination in (("src1", "dst1"), ("src2", "dst2")):
        paired = sms("transfer", "pair", "--job", "multi", "--source", source,
                     "--destination", destination, "--share", "data")
        assert paired.returncode == 0, paired.stdout + paired.stderr
    workers = {"dst1": worker_factory("dst1", env, concurrency=2),
               "dst2": worker_factory("dst2", env, concurrency=2)}

    result = sms("transfer", "run", "--job", "multi", "--wait", "--checksum", "sha256",
                 "--retries", "0", "--share-map", "data=archive")
    assert result.returncode == 0, result.stdout + result.stderr

    with session_scope() as session:
        runs = {session.scalar(select(Server.name).join(Pairing, Pairing.destination_server_id == Server.id)
                               .where(Pairing.id == run.pairing_id)): run
                for run in session.scalars(select(TransferRun))}
        assert sorted(runs) == ["dst1", "dst2"]
        for destination, run in runs.items():
            report = reconcile(session, run.id)
            assert report.state == "succeeded" and report.clean, report.to_json()
            [share] = report.shares
            assert share.copied == share.inventoried and share.verified == share.files
            assert cutover_allowed(session, run.id)
            owners = set(session.scalars(select(Batch.lease_owner).where(Batch.run_id == run.id)))
            worker_pids = workers[destination].pids()
            assert owners and all(int(owner.rsplit(":", 1)[1]) in worker_pids for owner in owners), \
                (destination, owners, worker_pids)
            assert run.files_total == len(files["src1" if destination == "dst1" else "src2"])
        directory_batches = session.scalar(select(func.count(func.distinct(FileRecord.batch_id))).where(
            FileRecord.run_id == runs["dst2"].id, FileRecord.is_dir.is_(True)))
        assert directory_batches >= 3  # deeper levels, the wide level in two, then the rest
        first, second = runs["dst1"], runs["dst2"]
        assert first.started_at < second.ended_at and second.started_at < first.ended_at

    for source, destination, name in ((src1, dst1, "src1"), (src2, dst2, "src2")):
        assert unexplained_differences(source, destination, destination_share="archive",
                                       ignore_access_times_of=files[name]) == []
