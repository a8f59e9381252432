"""A whole migration on the embedded defaults, between two Samba servers started here.

What an administrator would type, run for real and shown as a transcript: two lab smbd
instances stand in for the old file server (``fs01``, shares ``finance`` and ``public``
with a hostile tree: streams, odd attributes, 100 ns times, custom ACLs, Unicode names,
long paths) and the new one (``fs02``). The ``sms`` CLI then registers both, inventories
the source, pairs it with the destination, transfers with checksums through local worker
processes on the SQLite broker, and prints the reconciliation. Last, an independent
field-by-field comparison over SMB (tests/lab/compare.py, which shares no code with the
engine) proves the destination equals the source.

The demo's state (database, broker, key, logs) lives in a fresh directory that is printed
at the end; the servers are stopped when it ends. It never touches anything but the
servers it started. Run it through ``deploy/local/demo.sh`` (as root: smbd needs it).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.lab.compare import compare_trees, snapshot_times  # noqa: E402
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, SambaServer  # noqa: E402
from tests.lab.smbio import LabTree  # noqa: E402
from tests.lab.trees import build_hostile_tree  # noqa: E402

SHARES = ("finance", "public")
SMS = str(Path(sys.executable).with_name("sms"))


def sms(*args: str, env: dict[str, str], check: bool = True) -> int:
    """Run one ``sms`` command, echoing it first as an administrator would type it."""
    print(f"\n$ sms {shlex.join(args)}", flush=True)
    status = subprocess.run([SMS, *args], env=env).returncode
    if check and status not in (0, 1):
        raise SystemExit(f"demo: 'sms {args[0]}' failed with exit code {status}")
    return status


def fill_source(server: SambaServer) -> None:
    """Put a realistic, hostile tree on each source share, through SMB."""
    for share in SHARES:
        with LabTree(server.address, share, MIGRATION_USER, MIGRATION_PASSWORD) as lab:
            build_hostile_tree(lab, root="projects", large_size=8 << 20)


def verify(source: SambaServer, destination: SambaServer, snapshots: dict) -> int:
    """Compare every share field by field over SMB; returns the number of differences."""
    total = 0
    for share in SHARES:
        with LabTree(source.address, share, MIGRATION_USER, MIGRATION_PASSWORD) as src, \
                LabTree(destination.address, share, MIGRATION_USER, MIGRATION_PASSWORD) as dst:
            differences = compare_trees(src, "projects", dst, "projects",
                                        source_times=snapshots[share])
        for difference in differences[:20]:
            print(f"  DIFFERENT {share}: {difference}")
        print(f"  {share}: {len(differences)} differences")
        total += len(differences)
    return total


def main() -> int:
    """Run the demo; the exit code is the transfer's (0 clean, 1 with errors, 2 failed)."""
    state = Path(tempfile.mkdtemp(prefix="sms-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMS_")}
    env.update(SMS_STATE_DIR=str(state / "state"), DEMO_SMB_PASSWORD=MIGRATION_PASSWORD)
    source = SambaServer("fs01", state / "fs01")
    destination = SambaServer("fs02", state / "fs02")
    for share in SHARES:
        source.add_share(share, comment=f"{share} data")
        destination.add_share(share, comment=f"{share} data")
    try:
        source.start()
        destination.start()
        print(f"source fs01 at {source.address}, destination fs02 at {destination.address} "
              f"(real smbd, SMB signing required)")
        fill_source(source)

        sms("db", "upgrade", env=env)
        sms("job", "create", "demo", "--description", "fs01 to fs02", env=env)
        for name, server, role in (("fs01", source, "source"), ("fs02", destination, "destination")):
            sms("server", "add", "demo", name, "--role", role, "--kind", "smb-only",
                "--address", server.address, "--user", MIGRATION_USER,
                "--password-env", "DEMO_SMB_PASSWORD", env=env)
        sms("inventory", "run", "demo", "--wait", env=env)
        sms("inventory", "show", "demo", env=env)
        sms("transfer", "pair", "--job", "demo", "--source", "fs01", "--destination", "fs02", env=env)
        # Reading a file moves its last-access time on this filesystem (relatime): keep the
        # times as they are just before the transfer, for the comparison at the end.
        snapshots = {}
        for share in SHARES:
            with LabTree(source.address, share, MIGRATION_USER, MIGRATION_PASSWORD) as lab:
                snapshots[share] = snapshot_times(lab, "projects")
        started = time.monotonic()
        status = sms("transfer", "run", "--job", "demo", "--checksum", "fast", "--wait",
                     env=env, check=False)
        print(f"\ntransfer finished in {time.monotonic() - started:.1f} s, exit code {status}")

        print("\nindependent comparison of source and destination over SMB:")
        differences = verify(source, destination, snapshots)
        print(f"\n{'NOTHING LOST' if differences == 0 else 'DIFFERENCES FOUND'}: "
              f"{differences} differences; state and logs in {state / 'state'}")
        return status if differences == 0 else 2
    finally:
        source.stop()
        destination.stop()


if __name__ == "__main__":
    sys.exit(main())
