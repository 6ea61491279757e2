"""The lock and state file of a running ``conveyor up`` (app/runtime/stack_state.py), and how other
commands use them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.runtime import stack_state


def test_a_second_lock_on_the_same_directory_names_the_running_pid(tmp_path) -> None:
    first = stack_state.StackLock(tmp_path)
    first.acquire()
    try:
        # Another process: flock locks belong to open file descriptions, so try from a child.
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import pathlib, sys; from app.runtime import stack_state\n"
                "try:\n stack_state.StackLock(pathlib.Path(sys.argv[1])).acquire()\n"
                "except stack_state.AlreadyRunning as exc:\n print(exc)",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert f"already running (pid {os.getpid()})" in probe.stdout, probe
        assert stack_state.read_running(tmp_path) == stack_state.RunningStack(os.getpid(), {})
    finally:
        first.release()
    assert stack_state.read_running(tmp_path) is None
    assert not (tmp_path / "up.pid").exists()


def test_a_lock_left_by_a_killed_up_is_not_a_running_stack(tmp_path) -> None:
    # What SIGKILL leaves: the files, no lock holder.
    (tmp_path / "up.pid").write_text("999999\n")
    (tmp_path / "up.json").write_text('{"database_url": "postgresql://gone"}')
    environ: dict[str, str] = {}
    assert stack_state.apply_to_environ(environ, tmp_path) is None
    assert environ == {}
    lock = stack_state.StackLock(tmp_path)
    lock.acquire()  # not "already running"
    try:
        assert not (tmp_path / "up.json").exists()  # the stale state is gone
    finally:
        lock.release()


def test_unset_urls_come_from_the_running_stack_and_set_ones_stay(tmp_path) -> None:
    lock = stack_state.StackLock(tmp_path)
    lock.acquire()
    try:
        lock.publish(
            {
                "database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/postgres",
                "broker_url": "redis://127.0.0.1:2/0",
                "api_url": "http://127.0.0.1:8080",
            }
        )
        environ = {"CONVEYOR_BROKER_URL": "redis://mine:6379/0"}
        running = stack_state.apply_to_environ(environ, tmp_path, ["CONVEYOR_API_URL"])
        assert running is not None and running.pid == os.getpid()
        assert environ == {
            "CONVEYOR_BROKER_URL": "redis://mine:6379/0",
            "CONVEYOR_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/postgres",
        }
    finally:
        lock.release()


@pytest.mark.parametrize("command", [["keys", "list"], ["migrate"], ["status"]])
def test_with_nothing_configured_or_running_a_command_says_so_in_one_line(
    tmp_path, command: list[str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "no `conveyor up` running here" in result.stderr
    assert "make run" in result.stderr
