"""Start-up refusals of the CLI: Flower without credentials, and an invalid broker URL.

Both must fail before anything connects anywhere, so the URLs below need no server.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from app.cli import main

pytestmark = pytest.mark.e2e

# Valid-looking URLs of servers that do not exist: a command that tried to connect would hang
# or fail differently instead of exiting 2 with the expected message.
UNREACHABLE = {
    "CONVEYOR_DATABASE_URL": "postgresql://conveyor@127.0.0.1:9/conveyor",
    "CONVEYOR_BROKER_URL": "redis://127.0.0.1:9/0",
}


def _run(
    args: list[str], env: dict[str, str], cwd: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**base, "PYTHONUNBUFFERED": "1", **env},
        cwd=cwd,  # no stray .env file from the repository
        capture_output=True,
        text=True,
        timeout=60,
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "credentials",
    [{}, {"CONVEYOR_FLOWER_USER": "admin"}, {"CONVEYOR_FLOWER_PASSWORD": "secret"}],
    ids=["none", "user-only", "password-only"],
)
def test_flower_without_credentials_refuses_to_start(
    credentials: dict[str, str], tmp_path: pathlib.Path
) -> None:
    result = _run(["flower", "--port", "1"], {**UNREACHABLE, **credentials}, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CONVEYOR_FLOWER_USER" in result.stderr
    assert "--insecure-dev" in result.stderr


# `ops` is an HTTP client of the API and `new-domain` writes source files: neither reads the
# broker or database settings. Hidden commands are `up`'s internals, not run by users.
@pytest.mark.parametrize(
    "command",
    sorted(
        name
        for name, command in main.commands.items()
        if not command.hidden and name not in {"ops", "new-domain"}
    ),
)
def test_invalid_broker_url_fails_every_command_with_one_line(
    command: str, tmp_path: pathlib.Path
) -> None:
    env = {
        **UNREACHABLE,
        "CONVEYOR_BROKER_URL": "foo://x",
        "CONVEYOR_FLOWER_USER": "admin",
        "CONVEYOR_FLOWER_PASSWORD": "secret",
    }
    # A command group is run through its read-only subcommand.
    args = [command, "list"] if command == "keys" else [command]
    result = _run(args, env, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = _lines(result.stdout + result.stderr)
    assert len(lines) == 1, lines
    assert "CONVEYOR_BROKER_URL" in lines[0]
    assert "foo" in lines[0]
