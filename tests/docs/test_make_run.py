"""`make run` is the README's first command: it must pass ports and options through to `up`."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_run_passes_its_args_to_up() -> None:
    # A dry run prints the recipe make would run, with ARGS expanded.
    done = subprocess.run(
        ["make", "-n", "run", "ARGS=--port 8123 --no-flower"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.endswith("conveyor up --port 8123 --no-flower"), done.stdout
