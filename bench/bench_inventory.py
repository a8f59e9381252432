"""Benchmark: the inventory's file scan against ``rclone size`` / ``rclone lsf -R``, and
bulk ingestion of file records into PostgreSQL.

Part ``scan``: one lab smbd (tests.lab.samba) with a share ``data`` holding the small-file
dataset (tests.lab.trees.make_dataset: by default 20,000 files of 1-64 KiB in 200
folders). On the same share, in the same run:

* ``rclone size src:data`` and ``rclone lsf -R src:data`` (smb backend; remote defined by
  environment variables, password obscured, never on the command line);
* ``sms inventory`` through the real path: ``run_inventory`` (server facts over srvsvc,
  then the scan) with its directory tasks fanned out over Redis to a real orchestrator
  worker (Celery prefork, ``--concurrency`` processes) writing into a fresh PostgreSQL
  database; timed until every share reports its scan finished; each round a new job,
  so each is a first scan;
* the same job scanned again with nothing changed (the baseline is updated in place);
* before any of ours, one facts-only ``run_inventory`` of a throwaway job, untimed: a
  freshly started smbd starts its RPC service on the first srvsvc call (1-2 s);
* the worker's first scan after it started, shown apart as "cold" (its processes import,
  compile SQL and open SMB sessions then: a once-per-start cost of a long-running service);
* the inline mode (``sms inventory run --inline``: the scan in this process, one folder
  after another, no worker), after one untimed inline scan.

Each tool runs ``--rounds`` times, interleaved; the ratios compare medians.
Each of ours is checked against the dataset (files, bytes, no errors) and each rclone
listing against the file count, outside the timed part. Prints seconds, entries/s and
ours/rclone ratios (the issue's target: at least 1.5x rclone).

Part ``ingest``: ``common.db.bulk_insert_file_records`` of ``--records`` synthetic file
records (1 % of them folders) into a fresh PostgreSQL database, in one transaction, in a
spawned child process so that its peak RSS (``resource.getrusage``) is the ingestion's
alone. Prints the time, records/s, the time spent just generating the rows, and the
child's peak RSS before and after.

Not a test: run it by hand (bench/README.md). Loopback only; it stops the smbd, workers
and private servers it started and drops its databases; the dataset is removed unless
``--keep``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402,F401  (before smbclient; impacket's bin/smbclient.py shadows it)

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from sqlalchemy import func, select  # noqa: E402

from bench.bench_copy import rclone_environment  # noqa: E402
from bench.lab_env import Services, load_average, start_orchestrator_worker  # noqa: E402
from common.db import bulk_insert_file_records, session_scope  # noqa: E402
from common.settings import get_settings  # noqa: E402
from common.models import FileRecord, FileState, Share  # noqa: E402
from orchestrator.inventory.service import InventoryOptions, run_inventory, wait_for_scans  # noqa: E402
from orchestrator.inventory.tasks import run_scans_inline  # noqa: E402
from orchestrator.jobs import add_server, create_job  # noqa: E402
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, SambaServer  # noqa: E402
from tests.lab.trees import make_dataset  # noqa: E402

SHARE = "data"


@dataclass
class Timing:
    """One listing of the share by one tool."""

    tool: str
    seconds: float
    entries: int
    load: str
    note: str = ""

    @property
    def per_second(self) -> float:
        """Entries (files and folders) listed per wall-clock second."""
        return self.entries / self.seconds if self.seconds else 0.0


# --- rclone -----------------------------------------------------------------------------
def rclone_size(env: dict) -> tuple[float, int, int]:
    """``rclone size --json src:data``: (seconds, files, bytes)."""
    started = time.perf_counter()
    out = subprocess.run(["rclone", "size", "--json", f"src:{SHARE}"], env=env, check=True,
                         capture_output=True, text=True).stdout
    seconds = time.perf_counter() - started
    totals = json.loads(out)
    return seconds, int(totals["count"]), int(totals["bytes"])


def rclone_lsf(env: dict) -> tuple[float, int, int]:
    """``rclone lsf -R src:data``: (seconds, files, folders) listed."""
    started = time.perf_counter()
    out = subprocess.run(["rclone", "lsf", "-R", f"src:{SHARE}"], env=env, check=True,
                         capture_output=True, text=True).stdout
    seconds = time.perf_counter() - started
    lines = out.splitlines()
    folders = sum(1 for line in lines if line.endswith("/"))
    return seconds, len(lines) - folders, folders


# --- ours -------------------------------------------------------------------------------
def new_job(name: str, address: str) -> int:
    """A job with one SMB-only source server at ``address``; returns the job id."""
    with session_scope() as session:
        job = create_job(session, name)
        add_server(session, job, name="nas", kind="smb-only", role="source", address=address,
                   username=MIGRATION_USER, password=MIGRATION_PASSWORD)
        return job.id


def share_totals(share_id: int) -> tuple[int, int, int, int]:
    """(files, folders, bytes, errors) the scan stored for the share."""
    with session_scope() as session:
        share = session.get(Share, share_id)
        errors = session.scalar(select(func.count()).select_from(FileRecord).where(
            FileRecord.share_id == share_id, FileRecord.run_id.is_(None),
            FileRecord.state == FileState.FAILED))
        return share.file_count, share.directory_count, share.total_bytes, errors


def run_ours(job_id: int, *, inline: bool, timeout: float) -> tuple[float, float, int]:
    """Inventory the job (facts + file scan) until its share scan has finished.

    Returns (total seconds, seconds of run_inventory itself, share id). With Celery the
    scan runs on the orchestrator worker and run_inventory returns once it is queued;
    inline, run_inventory returns when the scan is done.
    """
    started = time.perf_counter()
    report = run_inventory(job_id, InventoryOptions(), publish=run_scans_inline if inline else None)
    returned = time.perf_counter() - started
    [share_id] = report.scan_share_ids
    if not wait_for_scans([share_id], timeout=timeout, poll=0.05):
        raise RuntimeError(f"the scan of share {share_id} did not finish in {timeout} s")
    return time.perf_counter() - started, returned, share_id


def check_ours(share_id: int, files: int, total_bytes: int) -> str:
    """A note on how the stored counters compare with the dataset."""
    got_files, folders, got_bytes, errors = share_totals(share_id)
    note = f"{got_files} files, {folders} folders"
    if (got_files, got_bytes) != (files, total_bytes) or errors:
        note += f"; MISMATCH: expected {files} files / {total_bytes} bytes, {errors} errors"
    return note


def scan_part(args, workdir: Path) -> list[Timing]:
    """The share scan comparison; returns the timings in the order they ran."""
    server = SambaServer("benchinv", workdir / "src")
    worker = None
    timings: list[Timing] = []
    try:
        server.add_share(SHARE, **{"aio read size": "0", "aio write size": "0"})
        server.start()
        made = make_dataset(server.shares[SHARE].path / "small", args.files)
        os.sync()
        files, total_bytes = made.small_files, made.total_bytes
        folders = made.directories + 1  # the dataset's folders and "small" itself
        entries = files + folders
        print(f"dataset: {files} files in {folders} folders, {total_bytes / 1e6:.1f} MB on "
              f"{server.address}; {os.cpu_count()} cores shared; orchestrator worker processes "
              f"{args.concurrency or get_settings().orchestrator_concurrency}; load {load_average()}", flush=True)
        env = rclone_environment(server, server, workdir)
        with Services(workdir):
            # A freshly started Samba starts its RPC service (samba-dcerpcd) on the first
            # srvsvc call, which then takes 1-2 s: a cold-server cost rclone (which never
            # calls srvsvc) would not pay. One facts-only run of a throwaway job warms it.
            run_inventory(new_job("bench-warm-up", server.address), InventoryOptions(scan_files=False))
            worker = start_orchestrator_worker(args.concurrency or get_settings().orchestrator_concurrency)
            # The orchestrator worker is a long-running service: its processes' first tasks
            # (imports, SQL compilation, SMB sessions) are a once-per-start cost, measured
            # apart ("cold") and kept out of the rounds by one full scan of a throwaway job.
            load = load_average()
            seconds, returned, share_id = run_ours(new_job("bench-cold", server.address), inline=False,
                                                   timeout=args.timeout)
            timings.append(Timing("ours celery, cold", seconds, entries, load,
                                  f"{check_ours(share_id, files, total_bytes)}; first scan after the worker started"))
            if args.inline:
                run_ours(new_job("bench-warm-inline", server.address), inline=True, timeout=args.timeout)
            for round_number in range(args.rounds):
                load = load_average()
                seconds, got, size = rclone_size(env)
                note = f"{got} files" + ("" if (got, size) == (files, total_bytes) else "; MISMATCH")
                timings.append(Timing("rclone size", seconds, entries, load, note))

                load = load_average()
                seconds, got, got_folders = rclone_lsf(env)
                note = f"{got} files, {got_folders} folders" + ("" if got == files else "; MISMATCH")
                timings.append(Timing("rclone lsf -R", seconds, entries, load, note))

                load = load_average()
                celery_job = new_job(f"bench-celery-{round_number}", server.address)
                seconds, returned, share_id = run_ours(celery_job, inline=False, timeout=args.timeout)
                timings.append(Timing("ours celery", seconds, entries, load,
                                      f"{check_ours(share_id, files, total_bytes)}; "
                                      f"run_inventory returned after {returned:.2f} s"))
                if args.rescan:
                    load = load_average()
                    seconds, returned, share_id = run_ours(celery_job, inline=False, timeout=args.timeout)
                    timings.append(Timing("ours celery rescan", seconds, entries, load,
                                          f"{check_ours(share_id, files, total_bytes)}; nothing changed"))
                if args.inline:
                    load = load_average()
                    inline_job = new_job(f"bench-inline-{round_number}", server.address)
                    seconds, returned, share_id = run_ours(inline_job, inline=True, timeout=args.timeout)
                    timings.append(Timing("ours inline", seconds, entries, load,
                                          check_ours(share_id, files, total_bytes)))
            worker.stop()
            worker = None
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
    return timings


def print_scan(timings: list[Timing]) -> None:
    """The scan figures in the order they ran, then ours/rclone ratios of the medians over
    the rounds (each tool's median seconds)."""
    print(f"{'tool':22} {'seconds':>8} {'entries/s':>10}  {'load (1 5 15)':15} note")
    for t in timings:
        print(f"{t.tool:22} {t.seconds:8.2f} {t.per_second:10.1f}  {t.load:15} {t.note}")
    runs: dict[str, list[float]] = {}
    for t in timings:
        runs.setdefault(t.tool, []).append(t.seconds)
    median = {tool: statistics.median(seconds) for tool, seconds in runs.items()}
    print("medians: " + ", ".join(f"{tool} {seconds:.2f} s ({len(runs[tool])})" for tool, seconds in median.items()))
    for ours in ("ours celery", "ours celery rescan", "ours inline", "ours celery, cold"):
        for theirs in ("rclone size", "rclone lsf -R"):
            if ours in median and theirs in median:
                print(f"ratio {ours} / {theirs} (speed, medians): {median[theirs] / median[ours]:.2f}x")


# --- ingestion --------------------------------------------------------------------------
def synthetic_rows(share_id: int, count: int):
    """``count`` file records of a plausible share: one folder per 99 files."""
    base = 133_000_000_000_000_001
    for number in range(count):
        folder = number // 100
        if number % 100 == 0:
            yield {"share_id": share_id, "relative_path": f"dept{folder % 50:02d}\\d{folder:06d}",
                   "is_dir": True, "size": 0, "creation_time": base + number,
                   "last_write_time": base + 2 * number, "last_access_time": base + 3 * number,
                   "change_time": base + 2 * number, "attributes": 0x10, "state": FileState.SCANNED}
        else:
            yield {"share_id": share_id,
                   "relative_path": f"dept{folder % 50:02d}\\d{folder:06d}\\report-{number:08d}.docx",
                   "is_dir": False, "size": (number * 7919) % (1 << 20), "creation_time": base + number,
                   "last_write_time": base + 2 * number, "last_access_time": base + 3 * number,
                   "change_time": base + 2 * number, "attributes": 0x20, "state": FileState.SCANNED}


def ingest_child(url: str, count: int) -> dict:
    """In a spawned process: insert ``count`` records in one transaction; the figures."""
    from common.models import Job, Server, ServerKind, ServerRole

    with session_scope(url) as session:
        job = Job(name="ingest")
        session.add(job)
        session.flush()
        server = Server(job_id=job.id, name="nas", role=ServerRole.SOURCE, kind=ServerKind.SMB_ONLY,
                        address="127.0.0.1", port=445, username="bench")
        session.add(server)
        session.flush()
        share = Share(server_id=server.id, name="data")
        session.add(share)
        session.flush()
        share_id = share.id
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for _row in synthetic_rows(share_id, count):
        pass
    generation = time.perf_counter() - started
    started = time.perf_counter()
    with session_scope(url) as session:
        written = bulk_insert_file_records(session, synthetic_rows(share_id, count))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with session_scope(url) as session:
        stored = session.scalar(select(func.count()).select_from(FileRecord).where(
            FileRecord.share_id == share_id))
    return {"written": written, "stored": stored, "seconds": seconds, "generation": generation,
            "baseline_kib": baseline, "peak_kib": peak}


def ingest_part(args, workdir: Path) -> dict:
    """Run the ingestion in a spawned child against a fresh database; its figures."""
    with Services(workdir) as services:
        load = load_average()
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            figures = pool.apply(ingest_child, (services.database_url, args.records))
        figures["load"] = load
    return figures


def print_ingest(figures: dict) -> None:
    """The ingestion figures."""
    note = "" if figures["stored"] == figures["written"] else f"; MISMATCH: {figures['stored']} stored"
    print(f"ingest: {figures['written']} records in {figures['seconds']:.2f} s "
          f"({figures['written'] / figures['seconds']:.0f} records/s, of which generating the rows "
          f"alone {figures['generation']:.2f} s); peak RSS {figures['peak_kib'] / 1024:.0f} MiB "
          f"(before inserting {figures['baseline_kib'] / 1024:.0f} MiB); load before "
          f"{figures['load']}{note}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see --help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20000, help="files of 1-64 KiB in the share")
    parser.add_argument("--records", type=int, default=1_000_000, help="records to ingest")
    parser.add_argument("--parts", default="scan,ingest", help="comma-separated: scan,ingest")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="orchestrator worker processes (default: the product's, cores + 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the scan comparison (medians compared)")
    parser.add_argument("--no-inline", dest="inline", action="store_false", help="skip the inline mode")
    parser.add_argument("--no-rescan", dest="rescan", action="store_false",
                        help="skip the re-scan with nothing changed")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a scan may take")
    parser.add_argument("--workdir", type=Path, default=None, help="where the server keeps files")
    parser.add_argument("--keep", action="store_true", help="keep the dataset")
    args = parser.parse_args(argv)
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sms-bench-inv-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; nice {os.nice(0)}; load {load_average()}")
    try:
        if "scan" in parts:
            print_scan(scan_part(args, workdir))
        if "ingest" in parts:
            print_ingest(ingest_part(args, workdir))
        print(f"ended {time.strftime('%H:%M:%S')}; load {load_average()}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
