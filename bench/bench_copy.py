"""Benchmark: our copy engine against ``rclone copy`` on the same pair of lab servers.

Starts two lab smbd instances (source and destination, tests.lab.samba) on loopback,
writes the datasets into the source share (default: 20,000 files of 1-64 KiB in about
200 directories, and 8 files of 256 MiB), then copies each dataset with each tool into
its own directory of the destination share:

* ``rclone``: ``rclone copy`` with its smb backend, ``--transfers 16`` (content and
  last-write time only; the smb backend has no hash, so rclone checks sizes). The
  remotes are configured through environment variables only; the password is passed
  obscured in ``RCLONE_CONFIG_*_PASS``, never on the command line.
* ``engine``: common.smb.copy (full metadata: streams, attributes, 100 ns times, owner,
  group, DACL; a checksum of every byte read). The source is walked with
  common.smb.walk; then, as prefork proxy workers do, each of ``--processes`` forked
  worker processes takes its own slice of the files, opens its own sessions after the
  fork and copies its slice in batches of ``--batch-files``; then directories, deepest
  first, so their times are final. ``--processes 1,2`` measures each count in the same
  run (``engine1``, ``engine2``). When the engine cannot be imported the run says
  "engine not available" and goes on.

Prints files/s and MB/s per tool and dataset, the machine's 1-minute load average at the
end of each copy, the CPU seconds both smbd instances spent on it, and the engine/rclone
ratios from the same run. After each copy the destination is walked and its file count and bytes checked
against the source (outside the timed part). Not a test: run it by hand (see
bench/README.md). Loopback only; it stops every smbd it started and removes its files
unless ``--keep``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402,F401  (before smbclient; impacket's bin/smbclient.py shadows it)

import argparse  # noqa: E402
import importlib  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from common.smb.connection import SmbEndpoint, close_pool, open_tree  # noqa: E402
from common.smb.walk import ShareWalker  # noqa: E402
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, SambaServer  # noqa: E402
from tests.lab.trees import make_dataset  # noqa: E402

SHARE = "data"


@dataclass
class Run:
    """One tool on one dataset."""

    tool: str
    dataset: str
    files: int
    bytes: int
    seconds: float
    note: str = ""
    load: float = 0.0
    smbd_cpu: float = 0.0

    @property
    def files_per_second(self) -> float:
        """Files copied per wall-clock second."""
        return self.files / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        """Megabytes (10^6 bytes) copied per wall-clock second."""
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def tree_totals(endpoint: SmbEndpoint, root: str) -> tuple[int, int]:
    """(files, bytes) under ``root`` of a share, counted with our walker."""
    tree = open_tree(endpoint)
    try:
        walker = ShareWalker(tree, root)
        files = total = 0
        for entry in walker:
            if not entry.is_dir:
                files += 1
                total += entry.size
        if walker.errors:
            raise RuntimeError(f"walking {root!r} failed: {walker.errors[:3]}")
        return files, total
    finally:
        tree.close()


# --- rclone ---------------------------------------------------------------------------
def rclone_environment(source: SambaServer, destination: SambaServer, workdir: Path) -> dict:
    """Environment variables that define remotes ``src:`` and ``dst:`` (no config file)."""
    obscured = subprocess.run(["rclone", "obscure", "-"], input=MIGRATION_PASSWORD, text=True,
                              capture_output=True, check=True).stdout.strip()
    config = workdir / "rclone.conf"
    config.touch()  # empty: the remotes come from the environment
    env = dict(os.environ, RCLONE_CONFIG=str(config))
    for remote, server in (("SRC", source), ("DST", destination)):
        env.update({
            f"RCLONE_CONFIG_{remote}_TYPE": "smb",
            f"RCLONE_CONFIG_{remote}_HOST": server.address,
            f"RCLONE_CONFIG_{remote}_USER": MIGRATION_USER,
            f"RCLONE_CONFIG_{remote}_PASS": obscured,
        })
    return env


def run_rclone(env: dict, dataset: str, transfers: int) -> float:
    """Copy ``dataset`` from src: to dst:rclone/; returns the wall-clock seconds."""
    started = time.perf_counter()
    subprocess.run(["rclone", "copy", f"src:{SHARE}/{dataset}", f"dst:{SHARE}/rclone/{dataset}",
                    "--transfers", str(transfers), "--checkers", str(transfers)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


# --- our engine ---------------------------------------------------------------------
def load_engine():
    """The engine module, or None when it is not there (yet)."""
    try:
        return importlib.import_module("common.smb.copy")
    except ImportError:
        return None


def batches(entries: list, max_files: int, max_bytes: int) -> list[list[str]]:
    """Group file entries into batches of at most max_files files / max_bytes bytes."""
    grouped, current, size = [], [], 0
    for entry in entries:
        if current and (len(current) >= max_files or size + entry.size > max_bytes):
            grouped.append(current)
            current, size = [], 0
        current.append(entry.path)
        size += entry.size
    if current:
        grouped.append(current)
    return grouped


def _worker(source: SmbEndpoint, destination: SmbEndpoint, work: list[list[str]], options, report) -> None:
    """A forked worker: copy its batches over sessions it opens itself; report failures."""
    engine = load_engine()
    failed = []
    try:
        for paths in work:
            failed += [f"{r.path}: {r.status_name} {r.message}"
                       for r in engine.copy_batch(source, destination, paths, options)
                       if r.outcome == engine.Outcome.FAILED]
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        failed.append(f"worker: {type(exc).__name__}: {exc}")
    finally:
        close_pool()
    report.put(failed)


def run_engine(source: SmbEndpoint, destination: SmbEndpoint, dataset: str, processes: int,
               prefix: str, checksum: str, batch_files: int) -> tuple[float, list[str]]:
    """Walk the source dataset, copy its files in ``processes`` forked workers (each its
    own contiguous slice and its own sessions), then its directories; returns
    (wall-clock seconds, failure messages)."""
    engine = load_engine()
    options = engine.CopyOptions(destination_prefix=prefix, checksum=checksum)
    started = time.perf_counter()
    tree = open_tree(source)
    try:
        walker = ShareWalker(tree, dataset)
        entries = list(walker)
        if walker.errors:
            raise RuntimeError(f"walking {dataset!r} failed: {walker.errors[:3]}")
    finally:
        tree.close()
    files = [e for e in entries if not e.is_dir]
    share = -(-len(files) // processes)
    context = multiprocessing.get_context("fork")  # no session is open in this process now
    report = context.Queue()
    workers = []
    for number in range(processes):
        work = batches(files[number * share:(number + 1) * share], batch_files, 256 << 20)
        worker = context.Process(target=_worker, args=(source, destination, work, options, report))
        worker.start()
        workers.append(worker)
    failures: list[str] = []
    for _worker_process in workers:
        failures += report.get()
    for worker in workers:
        worker.join()
    directories = [dataset] + [e.path for e in entries if e.is_dir]
    results = engine.copy_batch(source, destination,
                                [engine.FileEntry(path, True) for path in directories], options)
    close_pool()
    failures += [f"{r.path}: {r.status_name}" for r in results if r.outcome == engine.Outcome.FAILED]
    return time.perf_counter() - started, failures


def smbd_cpu_seconds(*servers: SambaServer) -> float:
    """CPU seconds (user + system, exited children included) of every process started
    with one of ``servers``' smb.conf; waits a moment first so that the per-connection
    smbd processes of sessions just closed have exited and been counted."""
    time.sleep(1.0)
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read()
            if not any(str(server.conf).encode() in command for server in servers):
                continue
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


# --- the run ----------------------------------------------------------------------------
def print_table(runs: list[Run]) -> None:
    """The figures, then engine/rclone ratios per dataset."""
    print(f"{'tool':8} {'dataset':8} {'files':>7} {'MB':>9} {'seconds':>8} {'files/s':>9} {'MB/s':>8}"
          f" {'smbd CPU s':>10} {'load':>5}  note")
    for run in runs:
        print(f"{run.tool:8} {run.dataset:8} {run.files:7d} {run.bytes / 1e6:9.1f} "
              f"{run.seconds:8.2f} {run.files_per_second:9.1f} {run.megabytes_per_second:8.1f}"
              f" {run.smbd_cpu:10.1f} {run.load:5.2f}  {run.note}")
    by_key = {(run.tool, run.dataset): run for run in runs}
    for dataset, measure, unit in (("small", "files_per_second", "files/s"),
                                   ("large", "megabytes_per_second", "MB/s")):
        theirs = by_key.get(("rclone", dataset))
        for ours in [run for run in runs if run.tool.startswith("engine") and run.dataset == dataset]:
            if theirs and getattr(theirs, measure):
                print(f"ratio {ours.tool}/rclone, {dataset} files ({unit}): "
                      f"{getattr(ours, measure) / getattr(theirs, measure):.2f}x")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see --help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20000, help="small files (1-64 KiB)")
    parser.add_argument("--large", type=int, default=8, help="large files")
    parser.add_argument("--large-mib", type=int, default=256, help="size of each large file")
    parser.add_argument("--transfers", type=int, default=16, help="rclone --transfers")
    parser.add_argument("--processes", default="2",
                        help="engine worker processes; a list (1,2) measures each in turn")
    parser.add_argument("--batch-files", type=int, default=500, help="files per engine batch")
    parser.add_argument("--checksum", default="xxh3_128", help="engine checksum (docs/checksums.md)")
    parser.add_argument("--tools", default="rclone,engine", help="comma-separated: rclone,engine")
    parser.add_argument("--workdir", type=Path, default=None, help="where servers keep files")
    parser.add_argument("--keep", action="store_true", help="keep the servers' files")
    args = parser.parse_args(argv)
    tools = [tool.strip() for tool in args.tools.split(",") if tool.strip()]
    process_counts = [int(count) for count in str(args.processes).split(",") if count.strip()]

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sms-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = SambaServer("benchsrc", workdir / "src")
    destination = SambaServer("benchdst", workdir / "dst")
    try:
        for server in (source, destination):
            # Synchronous I/O: rclone 1.60's go-smb2 rejects Samba's unsigned-looking async
            # STATUS_PENDING interim responses ("signing required") and retries whole
            # files, which would measure that bug rather than rclone. Same for both tools.
            server.add_share(SHARE, **{"aio read size": "0", "aio write size": "0"})
            server.start()
        src_dir = source.shares[SHARE].path
        datasets = {}
        started = time.perf_counter()
        if args.files:
            made = make_dataset(src_dir / "small", args.files)
            datasets["small"] = made
            print(f"small: {made.small_files} files of 1-64 KiB in {made.directories} directories,"
                  f" {made.total_bytes / 1e6:.1f} MB")
        if args.large:
            made = make_dataset(src_dir, 0, args.large, large_size=args.large_mib << 20)
            datasets["large"] = made
            print(f"large: {made.large_files} files of {args.large_mib} MiB")
        os.sync()
        print(f"datasets written in {time.perf_counter() - started:.1f} s; servers "
              f"{source.address} -> {destination.address}; {os.cpu_count()} cores shared")

        src = SmbEndpoint(source.address, SHARE, MIGRATION_USER, MIGRATION_PASSWORD)
        dst = SmbEndpoint(destination.address, SHARE, MIGRATION_USER, MIGRATION_PASSWORD)
        expected = {name: tree_totals(src, name) for name in datasets}
        runs: list[Run] = []
        env = rclone_environment(source, destination, workdir) if "rclone" in tools else None
        engine_ready = "engine" in tools and load_engine() is not None
        if "engine" in tools and not engine_ready:
            print("engine not available (common.smb.copy cannot be imported): rclone only")
        for name in datasets:
            files, total = expected[name]
            if env is not None:
                cpu = smbd_cpu_seconds(source, destination)
                seconds = run_rclone(env, name, args.transfers)
                cpu = smbd_cpu_seconds(source, destination) - cpu
                load = os.getloadavg()[0]
                got = tree_totals(dst, f"rclone\\{name}")
                runs.append(Run("rclone", name, files, total, seconds,
                                "data + mtime" + ("" if got == (files, total) else f"; MISMATCH {got}"),
                                load, cpu))
            for count in process_counts if engine_ready else []:
                tool = f"engine{count}" if len(process_counts) > 1 else "engine"
                cpu = smbd_cpu_seconds(source, destination)
                seconds, failures = run_engine(src, dst, name, count, tool, args.checksum, args.batch_files)
                cpu = smbd_cpu_seconds(source, destination) - cpu
                load = os.getloadavg()[0]
                got = tree_totals(dst, f"{tool}\\{name}")
                note = f"full metadata + {args.checksum}, {count} process{'es' if count > 1 else ''}"
                if failures:
                    note += f"; {len(failures)} FAILED, first: {failures[0]}"
                if got != (files, total):
                    note += f"; MISMATCH {got}"
                runs.append(Run(tool, name, files, total, seconds, note, load, cpu))
        print_table(runs)
        return 0
    finally:
        for server in (source, destination):
            server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
