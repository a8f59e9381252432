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
``test-artifacts/`` (git-ignored) for a human to look at. A cutover is planned through
the page's form and its stages followed as they move.

Without a browser: the UI's static files carry their security headers and nothing else is
served under /ui, and the error list the page shows comes from the API as JSON.
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
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from common.db import session_scope
from common.models import (CutoverRun, FileRecord, FileState, Job, Pairing, RunState, Server, Share, TransferRun,
                           run_records)
from common.settings import get_settings
from orchestrator.api import create_app
from orchestrator.database import upgrade_to_head
from orchestrator.worker import start_local_worker
from tests.lab.fixtures import unavailable
from tests.lab.samba import MIGRATION_PASSWORD, MIGRATION_USER, _alive  # alive and not a zombie
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
    while _alive(pid) and time.monotonic() < deadline:
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
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is missing: pip install -e '.[test]'")
    with sync_playwright() as playwright:
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
    records = run_records(run_id).c
    with session_scope() as session:
        rows = session.execute(
            select(Share.name, records.state, records.is_dir, func.count())
            .join(Share, Share.id == records.share_id)
            .group_by(Share.name, records.state, records.is_dir)).all()
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
    page.select_option("#start-transfer select[name=migrate_principals]", "skip")
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
        assert run.options["checksum"] == "sha256" and run.options["retries"] == 0
        assert run.options["migrate_principals"] == "skip"
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

    # Cutover: plan one through the form (planning touches no host), then follow its stages.
    # Nothing here starts it: the stage rows are moved on in the database, as a driver
    # would, to see the page's live progress and the buttons each state offers.
    page.click("nav.tabs >> text=Cutover")
    page.wait_for_selector("text=No cutover yet")
    page.click("text=Plan a cutover")
    form = "#plan-cutover"
    page.fill(f"{form} input[name=address]", "198.18.200.21")
    page.fill(f"{form} input[name=source_interface]", "eth0")
    page.fill(f"{form} input[name=destination_interface]", "eth1")
    page.fill(f"{form} input[name=new_address]", "198.18.200.31")
    page.fill(f"{form} input[name=new_name]", "SRC-OLD")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector("#notice.ok >> text=planned")
    cutover_id = int(page.get_attribute("article.cutover", "data-cutover"))
    assert page.get_attribute("article.cutover", "data-state") == "pending"
    assert page.is_visible("article.cutover >> text=Start cutover")
    with session_scope() as session:
        cutover = session.get(CutoverRun, cutover_id)
        assert cutover.options["plan"]["source_new_name"] == "SRC-OLD"
        stages = sorted(cutover.stages, key=lambda stage: stage.position)
        assert len(stages) >= 4 and page.locator("article.cutover tbody tr").count() == len(stages)
        cutover.state = RunState.RUNNING
        stages[0].state, stages[0].progress, stages[0].message = RunState.SUCCEEDED, 1.0, "both hosts answer"
        stages[1].state, stages[1].progress, stages[1].message = RunState.RUNNING, 0.4, "copying the final delta"
    page.click("nav.tabs >> text=Cutover")
    page.wait_for_selector('article.cutover[data-state="running"]')
    second = page.locator("article.cutover tbody tr").nth(1)
    assert "copying the final delta" in second.inner_text()
    assert second.locator(".progress").get_attribute("aria-valuenow") == "40"
    page.screenshot(path=str(ARTIFACTS / "ui-cutover.png"), full_page=True)
    with session_scope() as session:
        cutover = session.get(CutoverRun, cutover_id)
        cutover.state, cutover.error = RunState.FAILED, "stage final_delta_transfer failed: test"
        stage = next(stage for stage in cutover.stages if stage.position == stages[1].position)
        stage.state, stage.message = RunState.FAILED, "test"
    page.wait_for_selector('article.cutover[data-state="failed"]')  # by polling, no reload
    assert page.is_visible("text=Resume at the failed stage") and page.is_visible("text=Roll back")
    assert not page.is_visible("text=Start cutover")
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


def test_ui_files_and_the_error_list_the_page_reads(monkeypatch, tmp_path):
    """What the UI needs from the API, without a browser: the static files with their
    security headers and nothing else under /ui, and the run's error list as JSON."""
    use_settings(monkeypatch, SMS_STATE_DIR=str(tmp_path / "state"), SMS_API_TOKEN=TOKEN)
    upgrade_to_head(get_settings().database_url)
    with session_scope() as session:
        job = Job(name="errs")
        session.add(job)
        session.flush()
        source = Server(job_id=job.id, name="src", role="source", kind="smb-only", address="a", username="u")
        destination = Server(job_id=job.id, name="dst", role="destination", kind="smb-only", address="b",
                             username="u")
        session.add_all([source, destination])
        session.flush()
        pairing = Pairing(job_id=job.id, source_server_id=source.id, destination_server_id=destination.id)
        share = Share(server_id=source.id, name="data")
        session.add_all([pairing, share])
        session.flush()
        run = TransferRun(job_id=job.id, pairing_id=pairing.id, state=RunState.COMPLETED_WITH_ERRORS)
        session.add(run)
        session.flush()
        session.add_all([
            FileRecord(share_id=share.id, run_id=run.id, relative_path="a.txt", size=3, state=FileState.VERIFIED),
            FileRecord(share_id=share.id, run_id=run.id, relative_path="b.txt", size=4, state=FileState.FAILED,
                       error_code="STATUS_SHARING_VIOLATION", error_message="file is open elsewhere"),
            FileRecord(share_id=share.id, run_id=run.id, relative_path="c.txt", size=5, state=FileState.MISMATCH,
                       error_code="CHECKSUM_MISMATCH", error_message="hashes differ"),
            FileRecord(share_id=share.id, run_id=run.id, relative_path="d", is_dir=True, state=FileState.SCANNED),
            FileRecord(share_id=share.id, run_id=None, relative_path="b.txt", state=FileState.FAILED,
                       error_code="INVENTORY_ONLY"),  # an inventory record, not the run's
        ])
        run_id = run.id
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(get_settings())) as client:
        errors = client.get(f"/api/jobs/errs/transfers/{run_id}/errors", headers=auth)
        assert errors.status_code == 200, errors.text
        body = errors.json()
        assert body["run_id"] == run_id and body["total"] == 3
        assert [(row["path"], row["type"], row["result"], row["error_code"]) for row in body["errors"]] == [
            ("b.txt", "file", "failed", "STATUS_SHARING_VIOLATION"),
            ("c.txt", "file", "mismatch", "CHECKSUM_MISMATCH"),
            ("d", "directory", "missing", "NOT_REPORTED")]
        assert body["errors"][0]["share"] == "data" and body["errors"][0]["error_message"] == "file is open elsewhere"
        first = client.get(f"/api/jobs/errs/transfers/{run_id}/errors?limit=1", headers=auth).json()
        assert first["total"] == 3 and [row["path"] for row in first["errors"]] == ["b.txt"]
        assert client.get(f"/api/jobs/errs/transfers/{run_id}/errors?limit=0", headers=auth).status_code == 422
        missing = client.get("/api/jobs/errs/transfers/999/errors", headers=auth)
        assert missing.status_code == 404 and missing.json()["detail"] == "transfer run 999 not found in job 'errs'"
        assert client.get(f"/api/jobs/errs/transfers/{run_id}/errors").status_code == 401

        root = client.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
        for path, media_type in (("/ui/", "text/html"), ("/ui/app.js", "text/javascript"),
                                 ("/ui/app.css", "text/css"), ("/ui/icon.svg", "image/svg+xml")):
            answer = client.get(path)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith(media_type), path
            policy = answer.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["cache-control"] == "no-store"
            assert TOKEN not in answer.text
        for path in ("/ui/secret.key", "/ui/../api/jobs", "/ui/%2e%2e/%2e%2e/pyproject.toml", "/ui/__init__.py"):
            assert client.get(path).status_code in (401, 404), path
        script = client.get("/ui/app.js").text
        assert "innerHTML" not in script and "localStorage.setItem" not in script
