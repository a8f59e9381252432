"""Benchmark: transfers end to end through the orchestrator, against rclone and against the
bare data plane, on one pair of lab servers, in one run.

Two lab smbd instances (tests.lab.samba), the source holding the data-plane datasets
(tests.lab.trees.make_dataset; by default 20,000 files of 1-64 KiB in 200 folders, and 8
files of 256 MiB), each dataset also published as a share of its own. Services as in
production: a fresh PostgreSQL database, Redis, real ``sms-worker`` proxy workers (Celery
prefork) started per measurement (bench/lab_env.py). Before each timed run: ``os.sync()``
and a 3-second pause, so that no run pays for the previous copy's writeback. Parts
(``--parts``):

``datasets``
    For each dataset: ``rclone copy`` (``--transfers 16``; remotes from environment
    variables, password obscured, never on the command line), then for each worker
    process count (``--processes``, default 1, 2, 4): the orchestrator (a pairing and a
    run, ``planning.execute_run`` as ``sms transfer run --wait`` drives it: walk, batches
    recorded and published on Redis, one ``sms-worker --concurrency N`` copying them,
    directories, reconciliation) and the bare data plane (walk, then
    ``common.smb.copy.copy_batch`` over the same batches in N spawned processes, then the
    folders; the same copy options as the workers use). files/s, MB/s, the ratio to
    rclone and the orchestration overhead (time through the orchestrator / bare time - 1;
    target at most 10 %). ``--rounds N`` repeats both N times per process count, in turn
    (each orchestrator round a first run of a new pairing into the emptied share) and
    compares medians: single copies of the large files move by tens of percent with the
    disk's writeback.
``rerun``
    The small dataset again with nothing changed: runs of the last orchestrator pairing
    (the most processes) and ``rclone copy`` into its existing copy, in turn,
    ``--rerun-rounds`` times; medians compared (target: at least 3x faster).
``slow``
    Scale-out over a slow link. The kernel has no netem, so a delaying TCP proxy (asyncio,
    in a child process) sits between the clients and both servers: it listens on loopback
    addresses of its own, port 445, and forwards each read ``--delay-ms`` later in each
    direction (a delay line: latency, not a bandwidth cap). The servers are registered
    under the proxy's addresses, so the orchestrator's walk and every worker go through
    it. The ``--slow-files`` dataset through the orchestrator with each process count
    (target: at least 3x the 1-process throughput at 4) and rclone through the same proxy.

``--cpu`` prints under each figure the CPU seconds each process name used during the
timed run (bench.lab_env.cpu_spent): whether the run was bound by the shared cores or by
round trips. Every copy is walked afterwards and its file count and bytes compared with
the source, and every orchestrator run must reconcile clean (outside the timed part).
Each figure carries the load average at its start. Not a test: run it by hand (bench/README.md),
preferably under ``nice``. Loopback only; it stops every smbd, worker, proxy and private
server it started, drops its database and removes its files unless ``--keep``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402,F401  (before smbclient; impacket's bin/smbclient.py shadows it)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from bench.bench_copy import rclone_environment, tree_totals  # noqa: E402
from bench.lab_env import Services, cpu_seconds_by_process, cpu_spent, load_average, start_proxy_worker  # noqa: E402
from common.crypto import encrypt_secret  # noqa: E402
from common.db import session_scope  # noqa: E402
from common.models import Job, Pairing, RunState, Server, ServerKind, ServerRole  # noqa: E402
from common.settings import get_settings, reset_settings_cache  # noqa: E402
from common.smb import copy as engine  # noqa: E402
from common.smb.connection import SmbEndpoint, open_tree  # noqa: E402
from common.smb.walk import ShareWalker  # noqa: E402
from common.transfer_options import TransferOptions  # noqa: E402
from orchestrator.transfer import planning  # noqa: E402
from orchestrator.transfer.reconcile import reconcile  # noqa: E402
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, SambaServer, reserve_loopback_address  # noqa: E402
from tests.lab.sshd import SshServer  # noqa: E402
from tests.transfer_support import management  # noqa: E402
from tests.lab.trees import make_dataset  # noqa: E402

SMB_PORT = 445
# Seconds to wait, after os.sync(), before each timed run.
SETTLE_SECONDS = 3


@dataclass
class Figure:
    """One copy of one dataset by one tool."""

    tool: str
    dataset: str
    processes: int
    files: int
    bytes: int
    seconds: float
    load: str
    note: str = ""

    @property
    def files_per_second(self) -> float:
        """Files copied per wall-clock second."""
        return self.files / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        """Megabytes (10^6 bytes) copied per wall-clock second."""
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


# --- the delaying proxy -------------------------------------------------------------------
async def _delay_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward everything ``reader`` yields to ``writer``, each read ``delay`` s later, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    delivery = asyncio.create_task(deliver())
    try:
        while data := await reader.read(1 << 16):
            queue.put_nowait((loop.time() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((0.0, None))
    try:
        await delivery
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _serve_proxy(routes: list[tuple[str, str]], delay: float, ready) -> None:
    async def connect(target: str, client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(target, SMB_PORT)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_delay_line(client_reader, server_writer, delay),
                             _delay_line(server_reader, client_writer, delay),
                             return_exceptions=True)

    servers = []
    for listen, target in routes:
        servers.append(await asyncio.start_server(
            lambda r, w, target=target: connect(target, r, w), listen, SMB_PORT))
    ready.set()
    await asyncio.gather(*(server.serve_forever() for server in servers))


def run_proxy(routes: list[tuple[str, str]], delay: float, ready) -> None:
    """Child process: proxy each (listen address, target address) pair on port 445."""
    asyncio.run(_serve_proxy(routes, delay, ready))


class DelayProxy:
    """The delaying proxy in a child process, with a loopback address of its own per target."""

    def __init__(self, targets: list[str], delay: float):
        self.reserved = [reserve_loopback_address() for _ in targets]
        self.addresses = dict(zip(targets, (address for address, _lock in self.reserved)))
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        self.process = context.Process(target=run_proxy, daemon=True, args=(
            [(self.addresses[target], target) for target in targets], delay, ready))
        self.process.start()
        if not ready.wait(30):
            self.stop()
            raise RuntimeError("the delaying proxy did not start")

    def stop(self) -> None:
        """Stop the proxy process and release its addresses."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(10)
        for address, lock in self.reserved:
            subprocess.run(["ip", "addr", "del", f"{address}/8", "dev", "lo"], capture_output=True, check=False)
            lock.close()


# --- timing -------------------------------------------------------------------------------
# The CPU every process name used during the last timed run (bench.lab_env.cpu_spent).
_last_run_cpu = {"reading": {}, "spent": ""}


def start_timing() -> float:
    """Start a timed run: read the processes' CPU times, then the clock."""
    _last_run_cpu["reading"] = cpu_seconds_by_process()
    return time.perf_counter()


def stop_timing(started: float) -> float:
    """End the timed run begun at ``started``: its seconds; the CPU each process name used
    meanwhile is kept for ``last_run_cpu``."""
    seconds = time.perf_counter() - started
    _last_run_cpu["spent"] = cpu_spent(_last_run_cpu["reading"], cpu_seconds_by_process())
    return seconds


def last_run_cpu() -> str:
    """CPU seconds by process name of the last timed run ("smbd 0.48, this process 0.31, ...")."""
    return _last_run_cpu["spent"]


# --- rclone -------------------------------------------------------------------------------
def settle() -> str:
    """Flush dirty pages to disk and pause before a timed run; the load average then.

    Without it each run paid for the previous copy's writeback: the first orchestrator
    run after rclone's copy and the first re-run measured the disk, not the tools."""
    os.sync()
    time.sleep(SETTLE_SECONDS)
    return load_average()


def run_rclone(env: dict, source: str, destination: str, transfers: int) -> float:
    """``rclone copy src:SOURCE dst:DESTINATION``; the wall-clock seconds."""
    started = start_timing()
    subprocess.run(["rclone", "copy", f"src:{source}", f"dst:{destination}",
                    "--transfers", str(transfers), "--checkers", str(transfers)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return stop_timing(started)


# --- the bare data plane ------------------------------------------------------------------
def plan_batches(entries: list, max_files: int, max_bytes: int) -> list[list[str]]:
    """File paths in batches cut as the orchestrator's planner cuts them."""
    grouped, current, size = [], [], 0
    for entry in entries:
        current.append(entry.path)
        size += entry.size
        if len(current) >= max_files or size >= max_bytes:
            grouped.append(current)
            current, size = [], 0
    if current:
        grouped.append(current)
    return grouped


def _copy_chunk(job) -> tuple[int, int, list[str]]:
    """Pool task: copy one batch with the options a proxy worker uses; (files copied,
    bytes, failure messages)."""
    source, destination, paths, prefix, checksum = job
    options = replace(TransferOptions(checksum=checksum).copy_options(), destination_prefix=prefix)
    results = engine.copy_batch(source, destination, paths, options)
    failed = [f"{r.path}: {r.status_name} {r.message}" for r in results
              if r.outcome == engine.Outcome.FAILED]
    copied = [r for r in results if r.outcome != engine.Outcome.FAILED]
    return len(copied), sum(r.size for r in copied), failed


def _warm(_: int) -> int:
    """Pool initialisation task: the engine imported, as in a started worker."""
    return os.getpid()


def run_bare(pool, source: SmbEndpoint, destination: SmbEndpoint, prefix: str,
             checksum: str) -> tuple[float, list[str]]:
    """Walk the source share, copy its files batch by batch in the pool, then its folders
    (deepest first, the root last) under ``prefix``; (seconds, failure messages)."""
    settings = get_settings()
    started = start_timing()
    tree = open_tree(source)
    try:
        walker = ShareWalker(tree, "")
        entries = list(walker)
        if walker.errors:
            raise RuntimeError(f"walking {source.share!r} failed: {walker.errors[:3]}")
    finally:
        tree.close()
    files = [e for e in entries if not e.is_dir]
    jobs = [(source, destination, chunk, prefix, checksum)
            for chunk in plan_batches(files, settings.batch_max_files, settings.batch_max_bytes)]
    failures: list[str] = []
    for _copied, _bytes, failed in pool.imap_unordered(_copy_chunk, jobs):
        failures += failed
    folders = [engine.FileEntry(e.path, True) for e in entries if e.is_dir] + [engine.FileEntry("", True)]
    results = engine.copy_batch(source, destination, folders, replace(
        TransferOptions(checksum=checksum).copy_options(), destination_prefix=prefix))
    failures += [f"{r.path}: {r.status_name}" for r in results if r.outcome == engine.Outcome.FAILED]
    return stop_timing(started), failures


# --- the orchestrator ---------------------------------------------------------------------
class Lab:
    """The job database's view of the lab: one job, servers added as needed; with ``sshd``
    (a lab ``SshEndpoint``), Samba servers managed over SSH as root, else SMB-only ones."""

    def __init__(self, sshd=None) -> None:
        self.sshd = sshd
        with session_scope() as session:
            job = Job(name="bench")
            session.add(job)
            session.flush()
            self.job_id = job.id

    def server(self, name: str, role: ServerRole, address: str, samba: SambaServer | None = None) -> int:
        """A Samba server row (migration account, encrypted password), managed through the
        lab sshd when there is one and ``samba`` (its smb.conf) is given; its id."""
        managed = self.sshd is not None and samba is not None
        with session_scope() as session:
            row = Server(job_id=self.job_id, name=name, role=role,
                         kind=ServerKind.SAMBA if managed else ServerKind.SMB_ONLY,
                         address=address, port=SMB_PORT, username=MIGRATION_USER,
                         credential=encrypt_secret(MIGRATION_PASSWORD),
                         management=management(self.sshd, samba) if managed else {})
            session.add(row)
            session.flush()
            return row.id

    def pairing(self, source_id: int, destination_id: int, share: str) -> int:
        """Pair the two servers for ``share``; the pairing id."""
        with session_scope() as session:
            return planning.create_pairing(session, session.get(Server, source_id),
                                           session.get(Server, destination_id), [share]).id


def run_orchestrator(pairing_id: int, options: TransferOptions, *, verbose: bool = False) -> tuple[float, int, str]:
    """Create and drive a run of the pairing to its end; (seconds, run id, note). ``verbose``
    prints the run's stages with the seconds since it started."""
    with session_scope() as session:
        run_id = planning.create_run(session, session.get(Pairing, pairing_id), options).id
    started = start_timing()
    stages: list[str] = []
    state = planning.execute_run(
        run_id, progress=lambda line: stages.append(f"{time.perf_counter() - started:7.2f} s  {line}"))
    seconds = stop_timing(started)
    if verbose:
        print("\n".join(f"      {stage}" for stage in stages), flush=True)
    with session_scope() as session:
        report = reconcile(session, run_id)
    note = "" if state == RunState.SUCCEEDED and report.clean else \
        f"; RUN {state.value}, clean={report.clean}: {report.to_json()}"[:400]
    return seconds, run_id, note


def check_copy(endpoint: SmbEndpoint, root: str, expected: tuple[int, int]) -> str:
    """'' when the copy under ``root`` has the expected (files, bytes), else a note."""
    got = tree_totals(endpoint, root)
    return "" if got == expected else f"; MISMATCH {got} != {expected}"


def empty_directory(path: Path) -> None:
    """Remove everything inside ``path`` (a destination share between two rounds)."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def set_batch_files(value: int | None) -> None:
    """Make ``value`` (None: the product's default) the planner's batch_max_files."""
    if value:
        os.environ["SMS_BATCH_MAX_FILES"] = str(value)
    else:
        os.environ.pop("SMS_BATCH_MAX_FILES", None)
    reset_settings_cache()


# --- the run ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see --help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20000, help="small files (1-64 KiB)")
    parser.add_argument("--large", type=int, default=8, help="large files")
    parser.add_argument("--large-mib", type=int, default=256, help="size of each large file")
    parser.add_argument("--processes", default="1,2,4", help="worker process counts")
    parser.add_argument("--parts", default="datasets,rerun,slow", help="datasets,rerun,slow")
    parser.add_argument("--batch-files", type=int, default=0,
                        help="batch_max_files for the datasets (default: the product's)")
    parser.add_argument("--slow-files", type=int, default=2000, help="files of the slow-link dataset")
    parser.add_argument("--slow-batch-files", type=int, default=100, help="batch_max_files over the slow link")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="proxy delay per direction per read")
    parser.add_argument("--tools", default="rclone,bare",
                        help="references to measure too, comma-separated: rclone,bare "
                             "(the orchestrator always runs)")
    parser.add_argument("--checksum", default="none", help="transfer checksum option: none|fast|sha256")
    parser.add_argument("--transfers", type=int, default=16, help="rclone --transfers/--checkers")
    parser.add_argument("--stages", action="store_true", help="print each orchestrator run's stages, timed")
    parser.add_argument("--cpu", action="store_true",
                        help="print the CPU seconds each process name used during each timed run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="copies of each dataset per process count, the orchestrator's and the "
                             "bare engine's in turn (medians compared)")
    parser.add_argument("--rerun-rounds", type=int, default=3,
                        help="re-runs with nothing changed, ours and rclone's in turn (medians compared)")
    parser.add_argument("--managed", action="store_true",
                        help="register the servers as Samba managed over SSH (a lab sshd, as root), so "
                             "that re-runs compare on the hosts' own listings (docs/transfer.md)")
    parser.add_argument("--workdir", type=Path, default=None, help="where servers keep files")
    parser.add_argument("--keep", action="store_true", help="keep the servers' files")
    args = parser.parse_args(argv)
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    counts = [int(n) for n in args.processes.split(",")]
    tools = {tool.strip() for tool in args.tools.split(",") if tool.strip()}
    # Managed servers: the files alone, as rclone does them (no local accounts, no share
    # recreation: each costs host commands per run, reported apart in docs/benchmarks.md).
    options = TransferOptions(checksum=args.checksum, retries=0,
                              **({"migrate_principals": "skip", "recreate_shares": False} if args.managed else {}))

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sms-bench-xfer-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; nice {os.nice(0)}; load {load_average()}",
          flush=True)
    source = SambaServer("bxsrc", workdir / "src")
    destination = SambaServer("bxdst", workdir / "dst")
    datasets: list[str] = []
    if "datasets" in parts or "rerun" in parts:
        datasets += ["small"] if args.files else []
    if "datasets" in parts:
        datasets += ["large"] if args.large else []
    slow = "slow" in parts and args.slow_files > 0
    sync_io = {"aio read size": "0", "aio write size": "0"}  # see bench/README.md (rclone)
    src_root = workdir / "src" / "data"
    source.add_share("data", src_root, **sync_io)
    destination.add_share("data", **sync_io)
    for name in datasets + (["slowset"] if slow else []):
        source.add_share(name, src_root / name, **sync_io)
    for name in datasets:
        for count in counts:
            destination.add_share(f"{name}{count}", **sync_io)
    if slow:
        for count in counts:
            destination.add_share(f"slow{count}", **sync_io)

    figures: list[Figure] = []
    proxy = None
    workers = []
    pools = []
    closers = []
    try:
        source.start()
        destination.start()
        started = time.perf_counter()
        sizes = {}
        if "small" in datasets:
            made = make_dataset(src_root / "small", args.files)
            sizes["small"] = (made.small_files, made.total_bytes)
        if "large" in datasets:
            made = make_dataset(src_root, 0, args.large, large_size=args.large_mib << 20)
            sizes["large"] = (made.large_files, made.total_bytes)
        if slow:
            made = make_dataset(src_root / "slowset", args.slow_files)
            sizes["slowset"] = (made.small_files, made.total_bytes)
        os.sync()
        print(f"datasets {sizes} written in {time.perf_counter() - started:.1f} s; servers "
              f"{source.address} -> {destination.address}{' (managed over SSH)' if args.managed else ''}; "
              f"{os.cpu_count()} cores shared", flush=True)
        env = rclone_environment(source, destination, workdir) if "rclone" in tools else {}

        def endpoint(server_address: str, share: str) -> SmbEndpoint:
            return SmbEndpoint(server_address, share, MIGRATION_USER, MIGRATION_PASSWORD)

        def record(figure: Figure) -> None:
            figures.append(figure)
            print(f"  {figure.tool:13} {figure.dataset:8} p={figure.processes} {figure.seconds:8.2f} s "
                  f"{figure.files_per_second:8.1f} files/s {figure.megabytes_per_second:7.1f} MB/s "
                  f"load {figure.load}{figure.note}", flush=True)
            if args.cpu:
                print(f"      cpu s: {last_run_cpu()}", flush=True)

        def orchestrated(label: str, pairing_id: int, name: str, count: int, files: int, total: int) -> None:
            """One timed orchestrator run of dataset ``name`` into share ``name`` + ``count``, checked."""
            load = settle()
            seconds, _run_id, note = run_orchestrator(
                pairing_id, TransferOptions(**{**options.to_json(), "share_map": {name: f"{name}{count}"}}),
                verbose=args.stages)
            note += check_copy(endpoint(destination.address, f"{name}{count}"), "", (files, total))
            record(Figure(label, name, count, files, total, seconds, load, note))

        with Services(workdir):
            if args.managed:
                sshd = SshServer(workdir / "sshd")
                closers.append(sshd.stop)
                lab = Lab(sshd.start())
            else:
                lab = Lab()
            source_id = lab.server("src", ServerRole.SOURCE, source.address, source)
            last_pairing = {}
            for name in datasets:
                set_batch_files(args.batch_files)
                files, total = sizes[name]
                if "datasets" in parts and "rclone" in tools:
                    load = settle()
                    seconds = run_rclone(env, name, f"data/rclone/{name}", args.transfers)
                    note = check_copy(endpoint(destination.address, "data"), f"rclone\\{name}", (files, total))
                    record(Figure("rclone", name, args.transfers, files, total, seconds, load, note))
                rounds = args.rounds if "datasets" in parts else 1
                for count, round_ in [(count, round_) for count in (counts if "datasets" in parts else counts[-1:])
                                      for round_ in range(rounds)]:
                    # Each round a new destination server and pairing (a first run), into the
                    # emptied share.
                    server_name = f"d-{name}-{count}" + (f"-r{round_}" if round_ else "")
                    empty_directory(destination.shares[f"{name}{count}"].path)
                    destination_id = lab.server(server_name, ServerRole.DESTINATION, destination.address,
                                                destination)
                    pairing_id = lab.pairing(source_id, destination_id, name)
                    worker = start_proxy_worker(server_name, count, workdir / "logs")
                    workers.append(worker)
                    orchestrated("orchestrator", pairing_id, name, count, files, total)
                    last_pairing[name] = (pairing_id, count, server_name, worker)
                    if "datasets" in parts and "bare" in tools:
                        worker.stop()
                        shutil.rmtree(destination.shares["data"].path / f"bare{count}-{name}", ignore_errors=True)
                        pool = multiprocessing.get_context("spawn").Pool(count)
                        pools.append(pool)
                        pool.map(_warm, range(count))
                        load = settle()
                        seconds, failures = run_bare(pool, endpoint(source.address, name),
                                                     endpoint(destination.address, "data"), f"bare{count}-{name}",
                                                     args.checksum)
                        note = (f"; {len(failures)} FAILED, first: {failures[0]}" if failures else "")
                        note += check_copy(endpoint(destination.address, "data"), f"bare{count}-{name}",
                                           (files, total))
                        record(Figure("bare", name, count, files, total, seconds, load, note))
                        pool.terminate()
                        pool.join()
                        pools.remove(pool)
                    if name == "large":  # room on disk; the copies were checked
                        shutil.rmtree(destination.shares[f"{name}{count}"].path / "large", ignore_errors=True)
                if name == "small" and "rerun" in parts:
                    pairing_id, count, server_name, worker = last_pairing[name]
                    if "rclone" in tools and "datasets" not in parts:
                        load = settle()
                        seconds = run_rclone(env, name, f"data/rclone/{name}", args.transfers)
                        record(Figure("rclone", name, args.transfers, files, total, seconds, load, "; first copy"))
                    if worker.process.poll() is not None:
                        worker = start_proxy_worker(server_name, count, workdir / "logs")
                        workers.append(worker)
                    for _round in range(args.rerun_rounds):
                        orchestrated("orchestrator re-run", pairing_id, name, count, files, total)
                        if "rclone" in tools:
                            load = settle()
                            seconds = run_rclone(env, name, f"data/rclone/{name}", args.transfers)
                            record(Figure("rclone re-run", name, args.transfers, files, total, seconds, load, ""))
                    worker.stop()
                for worker in workers:
                    worker.stop()
                if name == "large":
                    shutil.rmtree(destination.shares["data"].path / "rclone" / "large", ignore_errors=True)

            if slow:
                set_batch_files(args.slow_batch_files)
                files, total = sizes["slowset"]
                proxy = DelayProxy([source.address, destination.address], args.delay_ms / 1000)
                via_source, via_destination = proxy.addresses[source.address], proxy.addresses[destination.address]
                print(f"slow link: proxy {via_source} -> {source.address}, {via_destination} -> "
                      f"{destination.address}, +{args.delay_ms} ms per direction per read", flush=True)
                slow_source_id = lab.server("src-slow", ServerRole.SOURCE, via_source)
                for count in counts:
                    destination_id = lab.server(f"s-{count}", ServerRole.DESTINATION, via_destination)
                    pairing_id = lab.pairing(slow_source_id, destination_id, "slowset")
                    worker = start_proxy_worker(f"s-{count}", count, workdir / "logs")
                    workers.append(worker)
                    load = settle()
                    seconds, _run_id, note = run_orchestrator(
                        pairing_id, TransferOptions(**{**options.to_json(), "share_map": {"slowset": f"slow{count}"}}),
                        verbose=args.stages)
                    note += check_copy(endpoint(destination.address, f"slow{count}"), "", (files, total))
                    record(Figure("orchestrator", "slowset", count, files, total, seconds, load, note))
                    worker.stop()
                if "rclone" in tools:
                    slow_env = rclone_environment(SimpleNamespace(address=via_source),
                                                  SimpleNamespace(address=via_destination), workdir)
                    load = settle()
                    seconds = run_rclone(slow_env, "slowset", "data/rclone/slowset", args.transfers)
                    note = check_copy(endpoint(destination.address, "data"), "rclone\\slowset", (files, total))
                    record(Figure("rclone", "slowset", args.transfers, files, total, seconds, load, note))
        print_summary(figures)
        print(f"ended {time.strftime('%H:%M:%S')}; load {load_average()}")
        return 0
    finally:
        for pool in pools:
            pool.terminate()
            pool.join()
        for worker in workers:
            worker.stop()
        if proxy is not None:
            proxy.stop()
        for close in closers:
            close()
        for server in (source, destination):
            server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def print_summary(figures: list[Figure]) -> None:
    """The table, then the ratios the issues set targets for."""
    print(f"\n{'tool':20} {'dataset':8} {'proc':>4} {'files':>6} {'MB':>8} {'seconds':>8} "
          f"{'files/s':>8} {'MB/s':>7}  load (1 5 15)   note")
    for f in figures:
        print(f"{f.tool:20} {f.dataset:8} {f.processes:4d} {f.files:6d} {f.bytes / 1e6:8.1f} "
              f"{f.seconds:8.2f} {f.files_per_second:8.1f} {f.megabytes_per_second:7.1f}  {f.load:15} "
              f"{f.note.lstrip('; ')}")
    runs: dict[tuple[str, str, int], list[float]] = {}
    for f in figures:
        runs.setdefault((f.tool, f.dataset, f.processes), []).append(f.seconds)
    median = {key: statistics.median(seconds) for key, seconds in runs.items()}
    by_tool = {(f.tool, f.dataset): f for f in figures}
    for (tool, dataset, processes), ours in median.items():
        if tool != "orchestrator" or dataset == "slowset":
            continue
        rclone, bare = by_tool.get(("rclone", dataset)), median.get(("bare", dataset, processes))
        parts = [f"{dataset} p={processes}" + (f" (medians of {len(runs[tool, dataset, processes])})"
                                                if len(runs[tool, dataset, processes]) > 1 else "") + ":"]
        if rclone:
            parts.append(f"orchestrator/rclone {rclone.seconds / ours:.2f}x")
        if bare:
            parts.append(f"bare/rclone {rclone.seconds / bare:.2f}x" if rclone else "")
            parts.append(f"orchestration overhead {100 * (ours / bare - 1):+.1f} % (target <= 10 %)")
        print(" ".join(p for p in parts if p))
    ours = [f.seconds for f in figures if (f.tool, f.dataset) == ("orchestrator re-run", "small")]
    theirs = [f.seconds for f in figures if (f.tool, f.dataset) == ("rclone re-run", "small")]
    if ours and theirs:
        ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
        print(f"re-run, nothing changed (medians of {len(ours)}): rclone {theirs_median:.2f} s / ours "
              f"{ours_median:.2f} s = {theirs_median / ours_median:.2f}x (target >= 3x)")
    slow = sorted((f for f in figures if f.tool == "orchestrator" and f.dataset == "slowset"),
                  key=lambda f: f.processes)
    if slow:
        base = slow[0]
        print("slow link scale-out: " + ", ".join(
            f"p={f.processes} {f.files_per_second:.1f} files/s ({f.files_per_second / base.files_per_second:.2f}x)"
            for f in slow) + " (target >= 3x at 4)")
        rclone = by_tool.get(("rclone", "slowset"))
        if rclone:
            print(f"slow link, rclone --transfers {rclone.processes}: {rclone.files_per_second:.1f} files/s; "
                  f"orchestrator p={slow[-1].processes} / rclone {rclone.seconds / slow[-1].seconds:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
