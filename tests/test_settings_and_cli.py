"""Settings come from SMS_* variables with working defaults; the CLI shows them without
secrets; the README documents every setting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_embedded_sqlite_in_state_dir(tmp_path):
    settings = Settings(state_dir=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path / 'sms.sqlite'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    assert settings.broker_is_embedded
    assert settings.key_file == tmp_path / "secret.key"
    assert settings.destination_queue("fs02") == "sms.dest.fs02"


def test_environment_overrides_every_default(monkeypatch, tmp_path):
    monkeypatch.setenv("SMS_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("SMS_DATABASE_URL", "postgresql://sms@db.example/sms")
    monkeypatch.setenv("SMS_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("SMS_WORKER_CONCURRENCY", "7")
    monkeypatch.setenv("SMS_SMB_REQUIRE_SIGNING", "false")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg2://sms@db.example/sms"
    assert settings.broker_url == "redis://127.0.0.1:6379/3"
    assert not settings.broker_is_embedded
    assert settings.worker_concurrency == 7
    assert settings.smb_require_signing is False


def test_cli_config_masks_secrets_and_url_passwords(tmp_path):
    env = dict(os.environ, SMS_STATE_DIR=str(tmp_path), SMS_SECRET_KEY="do-not-print-me",
               SMS_BROKER_URL="redis://:hunter2pw@127.0.0.1:6379/0")
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "config", "--json"],
                         env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "do-not-print-me" not in out and "hunter2pw" not in out
    rows = {row["variable"]: row["value"] for row in json.loads(out)}
    assert rows["SMS_SECRET_KEY"] == "(set)"
    assert rows["SMS_BROKER_URL"] == "redis://:***@127.0.0.1:6379/0"


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(SMS_[A-Z_]+)`", readme))
    expected = {f"SMS_{name.upper()}" for name in Settings.model_fields}
    assert expected <= documented, f"README misses {sorted(expected - documented)}"


# Machinery a command imports when it runs; none of it may load just to build ``sms``'s
# command tree, which every ``sms`` call (and every ``--help``) does.
HEAVY_MODULES = ("impacket", "fastapi", "uvicorn", "celery", "alembic",
                 "orchestrator.transfer.planning", "orchestrator.cutover.stages",
                 "orchestrator.inventory.service", "orchestrator.api.app", "orchestrator.worker")


def test_cli_command_tree_loads_without_heavy_machinery():
    """``import orchestrator.cli`` and building its whole Typer command tree (what
    ``sms --help`` does) import none of the heavy modules, in a fresh interpreter."""
    probe = ("import json, sys\n"
             "import orchestrator.cli\n"
             "from typer.main import get_command\n"
             "commands = get_command(orchestrator.cli.app).commands\n"
             f"loaded = [name for name in {HEAVY_MODULES!r} if name in sys.modules]\n"
             "print(json.dumps({'commands': sorted(commands), 'loaded': loaded}))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=120).stdout
    result = json.loads(out)
    assert {"transfer", "cutover", "job", "server", "inventory", "serve", "flower"} <= set(result["commands"])
    assert result["loaded"] == []
