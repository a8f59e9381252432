"""What can be checked of deploy/ without a Docker engine or a running systemd.

docker-compose.yml parses as YAML, has the services the operations guide names, runs
only commands that exist (entry points of pyproject.toml, sub-commands and options of the
real CLI), publishes ports on the loopback only, and reads secrets from env files whose
examples are in the repository. sms.env.example sets every setting, and Settings accepts
it. The systemd units parse, point ExecStart at real entry points and sub-commands, read
an EnvironmentFile, and pass ``systemd-analyze verify`` (where it exists) with the
paths pointed at this checkout's virtual environment.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from common.settings import Settings
from orchestrator.cli import app

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
ENTRY_POINTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
SECRET_SETTINGS = ("SMS_SECRET_KEY", "SMS_API_TOKEN", "SMS_FLOWER_PASSWORD")


def check_command(argv: list[str]) -> None:
    """Fail unless ``argv`` names an entry point and, for ``sms``, an existing sub-command
    with existing options; for ``sms-worker``, options its --help lists."""
    program, *args = argv
    assert program in ENTRY_POINTS, f"{program} is not an entry point of pyproject.toml"
    if program == "sms-worker":
        help_text = subprocess.run([sys.executable, "-m", "proxy_worker.main", "--help"], cwd=ROOT,
                                   capture_output=True, text=True, check=True, timeout=60).stdout
        for arg in args:
            if arg.startswith("--"):
                assert arg.split("=")[0] in help_text, f"sms-worker has no option {arg}"
        return
    # Typer may bring its own copy of click: groups are recognised by their sub-commands.
    command = get_command(app)
    for position, arg in enumerate(args):
        is_group = hasattr(command, "commands")
        if arg.startswith("-"):
            options = {opt for param in command.params for opt in getattr(param, "opts", [])}
            assert arg.split("=")[0] in options, f"`sms {' '.join(args[:position])}` has no option {arg}"
        elif is_group and arg in command.commands:
            command = command.commands[arg]
        elif not is_group and any(p.param_type_name == "argument" for p in command.params):
            continue  # an argument value
        else:
            pytest.fail(f"`sms {' '.join(args[:position + 1])}` is not a command")
    assert not hasattr(command, "commands") or command.invoke_without_command, \
        f"`sms {' '.join(args)}` needs a sub-command"


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of an environment file (comments and blanks skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


# --- docker compose ---------------------------------------------------------------------

def test_compose_file_names_real_services_and_commands():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "orchestrator", "orchestrator-worker", "flower"} <= set(services)
    assert services["redis"]["image"].startswith("redis") and services["postgres"]["image"].startswith("postgres")

    commands = {name: service["command"] for name, service in services.items()
                if service.get("image", "").startswith("sms-migrate")}
    assert commands["orchestrator"] == ["sms", "serve"]
    assert commands["flower"] == ["sms", "flower"]
    assert commands["migrate"] == ["sms", "db", "upgrade"]
    workers = {name: service for name, service in services.items() if commands.get(name, [""])[0] == "sms-worker"}
    assert workers, "no proxy worker service"
    for name, worker in workers.items():
        assert "--destination" in worker["command"] and worker["deploy"]["replicas"] >= 1
        assert "ports" not in worker
    for command in commands.values():
        check_command(command)

    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond the loopback"
        for variable in service.get("environment", {}):
            if variable.startswith("SMS_"):
                assert variable[4:].lower() in Settings.model_fields, f"{name}: unknown setting {variable}"
        files = service.get("env_file", [])
        for file in [files] if isinstance(files, str) else files:
            assert (DEPLOY / f"{file}.example").is_file(), f"{name}: no {file}.example beside the compose file"
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).resolve().is_file()
    orchestrator_after = services["orchestrator"]["depends_on"]
    assert orchestrator_after["migrate"]["condition"] == "service_completed_successfully"


def test_env_example_sets_every_setting_with_placeholders_for_secrets():
    values = env_file(DEPLOY / "sms.env.example")
    expected = {f"SMS_{name.upper()}" for name in Settings.model_fields}
    assert set(values) == expected, (sorted(expected - set(values)), sorted(set(values) - expected))
    for name in SECRET_SETTINGS:
        assert values[name].startswith("CHANGE_ME"), f"{name} must be a placeholder"
    assert "CHANGE_ME" in values["SMS_DATABASE_URL"]
    settings = Settings(**{key[4:].lower(): value for key, value in values.items()})
    assert settings.api_port == 8080 and settings.flower_user == "admin"
    assert not settings.broker_is_embedded and settings.database_url.startswith("postgresql+psycopg2://")
    assert env_file(DEPLOY / "postgres.env.example")["POSTGRES_PASSWORD"].startswith("CHANGE_ME")


# --- systemd --------------------------------------------------------------------------------

UNIT_FILES = ("sms-orchestrator.service", "sms-orchestrator-worker.service", "sms-worker@.service",
              "sms-flower.service")


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize("name", UNIT_FILES)
def test_unit_files_start_real_entry_points(name):
    unit = read_unit(UNITS / name)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["EnvironmentFile"] == "/etc/sms/sms.env"
    assert service["User"] == "sms" and service["NoNewPrivileges"] == "yes"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    for key in ("ExecStartPre", "ExecStart"):
        if key in service:
            argv = shlex.split(service[key])
            assert argv[0].startswith("/opt/sms/.venv/bin/")
            argv[0] = Path(argv[0]).name
            check_command([arg.replace("%i", "FS02") for arg in argv])
    if name == "sms-worker@.service":
        assert shlex.split(service["ExecStart"])[-2:] == ["--destination", "%i"]


def test_systemd_analyze_verify(tmp_path):
    """The units with their paths pointed at this checkout pass ``systemd-analyze verify``."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the unit files are still parsed above)")
    venv = Path(sys.executable).parent.parent
    for name in UNIT_FILES:
        text = (UNITS / name).read_text()
        text = text.replace("/opt/sms/.venv", str(venv)).replace("/etc/sms/sms.env", str(DEPLOY / "sms.env.example"))
        text = text.replace("User=sms", "User=root").replace("Group=sms", "Group=root")
        (tmp_path / name).write_text(text)
    units = [str(tmp_path / name) for name in UNIT_FILES if "@" not in name]
    units.append(str(tmp_path / "sms-worker@FS02.service"))
    result = subprocess.run([analyze, "verify", *units], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Unknown" not in output and "ignoring" not in output, output
