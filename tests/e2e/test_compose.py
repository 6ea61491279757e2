"""docker-compose.yml agrees with the CLI: every container runs a real `conveyor` command.

No docker engine is needed: the file is parsed and checked against the click group.
"""

from __future__ import annotations

import pathlib
import shlex
from typing import Any

import click
import pytest
import yaml

from app.cli import main
from app.config import DOMAINS, load_settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"

REQUIRED = {
    "postgres",
    "redis",
    "migrate",
    "api",
    "relay",
    "beat",
    "flower",
    *(f"worker-{domain}" for domain in DOMAINS),
}


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data["services"]


def _argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _conveyor_services(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Services whose command runs ``conveyor``: name -> argv after ``conveyor``."""
    return {
        name: argv[1:]
        for name, svc in services.items()
        if (argv := _argv(svc)) and argv[0] == "conveyor"
    }


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _option_value(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _healthcheck(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    assert test, "no healthcheck test"
    return test if isinstance(test, str) else " ".join(str(part) for part in test)


def test_required_services_exist(services: dict[str, dict[str, Any]]) -> None:
    missing = REQUIRED - services.keys()
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"


def test_every_conveyor_command_is_a_real_subcommand_with_known_options(
    services: dict[str, dict[str, Any]],
) -> None:
    commands = _conveyor_services(services)
    assert REQUIRED - {"postgres", "redis"} <= commands.keys()
    for name, args in commands.items():
        assert args, f"{name}: `conveyor` without a subcommand"
        sub = args[0]
        assert sub in main.commands, f"{name}: `conveyor {sub}` is not a subcommand of app.cli"
        command = main.commands[sub]
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        for arg in args[1:]:
            if arg.startswith("-"):
                option = arg.split("=", 1)[0]
                assert option in known, (
                    f"{name}: `conveyor {sub}` has no option {option} (known: {sorted(known)})"
                )
        # Let click parse the arguments (types, choices, arity) without running anything.
        try:
            command.make_context(f"conveyor {sub}", list(args[1:]))
        except click.ClickException as exc:
            pytest.fail(f"{name}: `conveyor {' '.join(args)}` is rejected: {exc.format_message()}")


def test_app_services_share_a_valid_configuration(services: dict[str, dict[str, Any]]) -> None:
    for name in _conveyor_services(services):
        svc = services[name]
        assert "build" in svc, f"{name}: must build from the Dockerfile"
        env = _env(svc)
        for key in ("CONVEYOR_DATABASE_URL", "CONVEYOR_BROKER_URL"):
            assert env.get(key), f"{name}: {key} not set"
        settings = load_settings(
            database_url=env["CONVEYOR_DATABASE_URL"], broker_url=env["CONVEYOR_BROKER_URL"]
        )
        assert "@postgres:" in settings.database_for("platform"), name
        assert "//redis:" in settings.broker(), name


def test_postgres_redis_and_api_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in _healthcheck(services["postgres"])
    assert "redis-cli" in _healthcheck(services["redis"])
    assert "ping" in _healthcheck(services["redis"])
    api_check = _healthcheck(services["api"])
    port = _option_value(_conveyor_services(services)["api"], "--port")
    assert "/healthz" in api_check
    assert f":{port}/healthz" in api_check, "API healthcheck must probe the port the API serves"
    assert "--host" in services["api"]["command"] and "0.0.0.0" in services["api"]["command"]


def test_migrate_runs_once_before_the_app(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert _argv(migrate)[:2] == ["conveyor", "migrate"]
    assert str(migrate.get("restart")) in ("no", "False")
    assert _depends_on(migrate).get("postgres") == "service_healthy"
    for name in _conveyor_services(services):
        if name in ("migrate", "flower"):
            continue
        assert _depends_on(services[name]).get("migrate") == "service_completed_successfully", (
            f"{name} must wait for migrate to complete"
        )


def test_one_worker_per_domain_queue(services: dict[str, dict[str, Any]]) -> None:
    queues: dict[str, str] = {}
    for name, args in _conveyor_services(services).items():
        if args[0] != "worker":
            continue
        value = _option_value(args, "--queues", "-Q")
        assert value, f"{name}: worker without --queues would consume every queue"
        for queue in value.split(","):
            assert queue not in queues, f"queue {queue} consumed by {queues[queue]} and {name}"
            queues[queue] = name
    assert queues == {domain: f"worker-{domain}" for domain in DOMAINS}


def test_flower_requires_basic_auth_credentials(services: dict[str, dict[str, Any]]) -> None:
    args = _conveyor_services(services)["flower"]
    assert args[0] == "flower"
    assert "--insecure-dev" not in args
    env = _env(services["flower"])
    assert env.get("CONVEYOR_FLOWER_USER")
    password = env.get("CONVEYOR_FLOWER_PASSWORD", "")
    assert password, "CONVEYOR_FLOWER_PASSWORD not set"
    # No password baked into the file: it comes from the environment, and compose must refuse
    # to start without it rather than fall back to a default.
    assert password.startswith("${") and ":?" in password, password


def test_dockerfile_builds_a_non_root_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    assert any("python:3.11-slim" in line for line in lines)
    assert any(line.startswith("RUN") and "pip install ." in line for line in lines) or (
        "pip install ." in dockerfile
    )
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "Dockerfile must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env"} <= ignored
