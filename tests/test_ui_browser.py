"""The web UI in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

``sms serve`` runs as a real process on the embedded defaults (SQLite database and
broker), with a real orchestrator worker for the inventory's file scans; the transfer is
driven by the ``sms transfer drive`` process the API starts, with its own ``sms-worker``.
Two lab smbd servers are the source and the destination. In the browser: a wrong token is
refused, the right one is kept in sessionStorage only; a job is created, both servers are
added, the inventory runs and the page shows each share with its file count; a pairing is
made and a transfer started; the page's live counters end on the reconciliation numbers,
which must equal what the job database holds. The password typed into the page is then
nowhere in clear in the state directory (database, broker messages, logs). Screenshots are saved under
``test-artifacts/`` (git-ignored) for a human to look at.
"""

from __future__ import annotations

import common  # noqa: F401  (keeps impacket's bin/smbclient.py off the import path)

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from common.db import session_scope
from common.models import FileRecord, FileState, Share, TransferRun
from orchestrator.worker import start_local_worker
from tests.lab.fixtures import unavailable
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER
from tests.lab.services import free_port
from tests.lab.smbio import LabTree
from tests.transfer_support import use_settings

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "ui-test-token-0123456789abcdef"
WAIT_MS = 240_000


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (the API's transfer drivers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def stop_process_group(pid: int, timeout: float = 30) -> None:
    """Stop a process this test started (and its group: a driver's workers) and wait for it."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture
def api_server(samba_factory, monkeypatch, tmp_path, request):
    """``sms serve`` and an orchestrator worker as real processes; yields the base URL."""
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium (deploy/local/bootstrap.sh)")
    port = free_port()
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_API_TOKEN=TOKEN,
                 SMS_API_PORT=str(port), SMS_BATCH_MAX_FILES="3", SMS_WORKER_CONCURRENCY="1")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--log-level", "warning"],
                                 cwd=ROOT, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)

    def stop_serve() -> None:
        for driver in children_of(serve.pid):
            stop_process_group(driver)
        stop_process_group(serve.pid)
        serve.wait(timeout=10)

    request.addfinalizer(stop_serve)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
    scanner = start_local_worker(1)
    request.addfinalizer(scanner.stop)
    return base


@pytest.fixture
def browser():
    """Debian's Chromium, headless, driven by Playwright (never Playwright's own browser)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def cell(page, scope: str, key: str, field: str) -> str:
    """The text of the cell ``field`` in the row ``key`` of the table inside ``scope``."""
    return page.inner_text(f'{scope} tr[data-key="{key}"] td[data-field="{field}"]').strip()


def as_number(text: str) -> int:
    """A count as the page shows it ('1,234')."""
    return int(text.replace(",", ""))


def database_reconciliation(run_id: int) -> dict[str, dict[str, int]]:
    """Per share, the counts the reconciliation must show, straight from the file records."""
    counts: dict[str, dict[str, int]] = {}
    with session_scope() as session:
        rows = session.execute(
            select(Share.name, FileRecord.state, FileRecord.is_dir, func.count())
            .join(Share, Share.id == FileRecord.share_id).where(FileRecord.run_id == run_id)
            .group_by(Share.name, FileRecord.state, FileRecord.is_dir)).all()
    for share, state, is_dir, count in rows:
        entry = counts.setdefault(share, dict.fromkeys(
            ("files", "directories", "copied", "verified", "unchanged", "missing", "mismatched", "failed"), 0))
        entry["directories" if is_dir else "files"] += count
        entry["copied"] += count if state in (FileState.COPIED, FileState.VERIFIED) else 0
        entry["verified"] += count if state is FileState.VERIFIED else 0
        entry["unchanged"] += count if state is FileState.SKIPPED else 0
        entry["missing"] += count if state is FileState.SCANNED else 0
        entry["mismatched"] += count if state is FileState.MISMATCH else 0
        entry["failed"] += count if state is FileState.FAILED else 0
    return counts


def test_migration_through_the_web_ui(samba_factory, api_server, browser):
    src = samba_factory("src", shares=("data", "docs"))
    dst = samba_factory("dst", shares=("data", "docs"))
    with LabTree(src.address, "data") as lab:
        lab.mkdir("reports")
        for number in range(6):
            lab.write_file(f"reports\\r{number}.txt", f"report {number}\n".encode() * (number + 1))
        lab.write_file("top.txt", b"top\n")
    with LabTree(src.address, "docs") as lab:
        for number in range(3):
            lab.write_file(f"doc{number}.txt", b"doc\n" * (number + 1))
    base = api_server

    page_answer = httpx.get(f"{base}/ui/", timeout=5)
    assert page_answer.status_code == 200 and "script-src 'self'" in page_answer.headers["content-security-policy"]
    assert TOKEN not in page_answer.text

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    page.set_default_timeout(30_000)
    page.goto(f"{base}/")
    assert page.url == f"{base}/ui/"

    # A wrong token is refused; the right one is kept in this tab's sessionStorage only.
    page.fill("#token", "not-the-token-0123456789")
    page.click("form.login button")
    page.wait_for_selector("#notice.error >> text=refused the token")
    page.fill("#token", TOKEN)
    page.click("form.login button")
    page.wait_for_selector("text=No job yet")
    assert page.evaluate("sessionStorage.getItem('sms.apiToken')") == TOKEN
    assert page.evaluate("localStorage.length") == 0 and TOKEN not in page.url
    console_errors.clear()  # the refused token's 401 was expected; nothing else may fail from here

    # A job and its two servers.
    page.fill("#create-job input[name=name]", "ui-move")
    page.fill("#create-job input[name=description]", "src to dst through the browser")
    page.click("#create-job button")
    page.wait_for_selector("h1 >> text=ui-move")
    for name, samba, role in (("src", src, "source"), ("dst", dst, "destination")):
        form = "#add-server"
        page.fill(f"{form} input[name=name]", name)
        page.select_option(f"{form} select[name=role]", role)
        page.select_option(f"{form} select[name=kind]", "smb-only")
        page.fill(f"{form} input[name=address]", samba.address)
        page.fill(f"{form} input[name=username]", MIGRATION_USER)
        page.fill(f"{form} input[name=password]", MIGRATION_PASSWORD)
        page.click(f"{form} button[type=submit]")
        page.wait_for_selector(f'#servers tr[data-key="{name}"]')
    assert "stored (encrypted)" in page.inner_text('#servers tr[data-key="src"]')
    assert MIGRATION_PASSWORD not in page.content()

    # Inventory: shares with their file counts once the scans (orchestrator worker) finish.
    page.click("#run-inventory button")
    page.wait_for_selector("#notice.ok >> text=share scan(s) queued")
    for share in ("data", "docs"):
        page.wait_for_selector(f'#inventory tr[data-key="{share}"] td[data-field="scan"] >> text=complete',
                               timeout=WAIT_MS)
    with session_scope() as session:
        scanned = {share.name: share for share in session.scalars(select(Share).where(Share.name.in_(("data", "docs"))))}
        assert scanned["data"].file_count == 7 and scanned["docs"].file_count == 3
        for name, share in scanned.items():
            assert as_number(cell(page, "#inventory", name, "files")) == share.file_count
            assert as_number(cell(page, "#inventory", name, "directories")) == share.directory_count
            assert as_number(cell(page, "#inventory", name, "errors")) == 0
    assert as_number(page.inner_text('#inventory-counts [data-count="files"] .value')) == 10
    assert as_number(page.inner_text('#inventory-counts [data-count="shares"] .value')) == 2
    page.screenshot(path=str(ARTIFACTS / "ui-inventory.png"), full_page=True)

    # Transfer: pair with both shares, start with SHA-256 validation, follow the live counters.
    page.click("nav.tabs >> text=Transfer")
    page.wait_for_selector("#pair-shares input[value=docs]")
    page.click("#pair button[type=submit]")
    page.wait_for_selector("#pairings >> text=data, docs")
    page.select_option("#start-transfer select[name=checksum]", "sha256")
    page.fill("#start-transfer input[name=retries]", "0")
    page.click("#start-transfer button")
    page.wait_for_selector("#run-detail")
    run_id = int(page.get_attribute("#run-detail", "data-run"))
    page.wait_for_selector('#run-detail[data-state="succeeded"]', timeout=WAIT_MS)

    expected = database_reconciliation(run_id)
    assert set(expected) == {"data", "docs"}
    assert expected["data"]["files"] == 7 and expected["docs"]["files"] == 3
    for share, counts in expected.items():
        assert counts["verified"] == counts["files"] and counts["missing"] == counts["failed"] == 0
        for field_name, value in counts.items():
            assert as_number(cell(page, "#reconciliation", share, field_name)) == value, (share, field_name)
        assert cell(page, "#reconciliation", share, "clean") == "yes"
    with session_scope() as session:
        run = session.get(TransferRun, run_id)
        assert as_number(page.inner_text('[data-counter="files_copied"] .value')) == run.files_copied == 10
        assert as_number(page.inner_text('[data-counter="files_failed"] .value')) == run.files_failed == 0
    assert "clean" in page.inner_text("#verdict")
    assert page.inner_text("#errors").strip() == "No error."
    assert "Errors (0)" in page.inner_text("#run-detail")

    # The CSV log downloads through fetch with the token in a header.
    with page.expect_download() as download_info:
        page.click("text=Download transfer log (CSV)")
    download = download_info.value
    assert download.suggested_filename == f"transfer-run-{run_id}.csv"
    csv_text = Path(download.path()).read_text()
    assert "top.txt" in csv_text and "verified" in csv_text

    page.screenshot(path=str(ARTIFACTS / "ui-transfer.png"), full_page=True)
    page.click("nav.tabs >> text=Cutover")
    page.wait_for_selector("text=No cutover yet")
    assert console_errors == []
    with LabTree(dst.address, "docs") as lab:
        assert b"".join(lab.read_chunks("doc2.txt")) == b"doc\n" * 3

    # The password went through the browser once; it must be nowhere at rest in clear: not in
    # the job database, not in the broker's messages (which did carry the batches), not in
    # any process log.
    state = Path(os.environ["SMS_STATE_DIR"])
    broker = sqlite3.connect(state / "broker.sqlite")
    try:
        assert broker.execute("SELECT count(*) FROM kombu_message").fetchone()[0] >= 6
    finally:
        broker.close()
    stored = [path for path in state.rglob("*") if path.is_file()]
    assert {"sms.sqlite", "broker.sqlite"} <= {path.name for path in stored}
    for path in stored:
        content = path.read_bytes()
        assert MIGRATION_PASSWORD.encode() not in content, path
        assert MIGRATION_PASSWORD.encode("utf-16-le") not in content, path
