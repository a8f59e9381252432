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
  common.smb.walk, files are copied in batches by ``--processes`` worker processes (each
  opens its own sessions), then directories, deepest first, so their times are final.
  When the engine cannot be imported the run says "engine not available" and goes on.

Prints files/s and MB/s per tool and dataset, and the engine/rclone ratios from the same
run. After each copy the destination is walked and its file count and bytes checked
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

from common.smb.connection import SmbEndpoint, open_tree  # noqa: E402
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


def _copy_chunk(job) -> tuple[int, int, list[str]]:
    """Worker: copy one batch; (files copied, bytes, failure messages)."""
    source, destination, paths, prefix = job
    engine = load_engine()
    results = engine.copy_batch(source, destination, paths,
                                engine.CopyOptions(destination_prefix=prefix))
    failed = [f"{r.path}: {r.status_name} {r.message}" for r in results
              if r.outcome == engine.Outcome.FAILED]
    copied = [r for r in results if r.outcome != engine.Outcome.FAILED]
    return len(copied), sum(r.size for r in copied), failed


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


def run_engine(pool, source: SmbEndpoint, destination: SmbEndpoint, dataset: str,
               processes: int) -> tuple[float, list[str]]:
    """Walk the source dataset, copy its files with the worker pool, then its
    directories; returns (wall-clock seconds, failure messages)."""
    engine = load_engine()
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
    per_process = max(1, len(files) // (processes * 4))
    jobs = [(source, destination, chunk, "engine")
            for chunk in batches(files, min(500, per_process), 64 << 20)]
    failures: list[str] = []
    for _copied, _bytes, failed in pool.imap_unordered(_copy_chunk, jobs):
        failures += failed
    directories = [dataset] + [e.path for e in entries if e.is_dir]
    results = engine.copy_batch(source, destination,
                                [engine.FileEntry(path, True) for path in directories],
                                engine.CopyOptions(destination_prefix="engine"))
    failures += [f"{r.path}: {r.status_name}" for r in results if r.outcome == engine.Outcome.FAILED]
    return time.perf_counter() - started, failures


# --- the run ----------------------------------------------------------------------------
def print_table(runs: list[Run]) -> None:
    """The figures, then engine/rclone ratios per dataset."""
    print(f"{'tool':8} {'dataset':8} {'files':>7} {'MB':>9} {'seconds':>8} {'files/s':>9} {'MB/s':>8}  note")
    for run in runs:
        print(f"{run.tool:8} {run.dataset:8} {run.files:7d} {run.bytes / 1e6:9.1f} "
              f"{run.seconds:8.2f} {run.files_per_second:9.1f} {run.megabytes_per_second:8.1f}  {run.note}")
    by_key = {(run.tool, run.dataset): run for run in runs}
    for dataset, measure, unit in (("small", "files_per_second", "files/s"),
                                   ("large", "megabytes_per_second", "MB/s")):
        ours, theirs = by_key.get(("engine", dataset)), by_key.get(("rclone", dataset))
        if ours and theirs and getattr(theirs, measure):
            print(f"ratio engine/rclone, {dataset} files ({unit}): "
                  f"{getattr(ours, measure) / getattr(theirs, measure):.2f}x")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see --help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20000, help="small files (1-64 KiB)")
    parser.add_argument("--large", type=int, default=8, help="large files")
    parser.add_argument("--large-mib", type=int, default=256, help="size of each large file")
    parser.add_argument("--transfers", type=int, default=16, help="rclone --transfers")
    parser.add_argument("--processes", type=int, default=2, help="engine worker processes")
    parser.add_argument("--tools", default="rclone,engine", help="comma-separated: rclone,engine")
    parser.add_argument("--workdir", type=Path, default=None, help="where servers keep files")
    parser.add_argument("--keep", action="store_true", help="keep the servers' files")
    args = parser.parse_args(argv)
    tools = [tool.strip() for tool in args.tools.split(",") if tool.strip()]

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sms-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = SambaServer("benchsrc", workdir / "src")
    destination = SambaServer("benchdst", workdir / "dst")
    pool = None
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
        if engine_ready:
            # Spawned workers start clean (no inherited receive threads); each opens its
            # own sessions on first use, inside the timed part.
            pool = multiprocessing.get_context("spawn").Pool(args.processes)
        for name in datasets:
            files, total = expected[name]
            if env is not None:
                seconds = run_rclone(env, name, args.transfers)
                got = tree_totals(dst, f"rclone\\{name}")
                runs.append(Run("rclone", name, files, total, seconds,
                                "data + mtime" + ("" if got == (files, total) else f"; MISMATCH {got}")))
            if engine_ready:
                seconds, failures = run_engine(pool, src, dst, name, args.processes)
                got = tree_totals(dst, f"engine\\{name}")
                note = "full metadata + checksum"
                if failures:
                    note += f"; {len(failures)} FAILED, first: {failures[0]}"
                if got != (files, total):
                    note += f"; MISMATCH {got}"
                runs.append(Run("engine", name, files, total, seconds, note))
        print_table(runs)
        return 0
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        for server in (source, destination):
            server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
