"""`make run` is the README's first command: it must pass ports and options through to `up`."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_run_passes_its_args_to_up() -> None:
    # A dry run prints the recipe make would run, with ARGS expanded. Under `make test` this is
    # a sub-make: drop the parent's flags, which add "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "run", "ARGS=--port 8123 --no-flower"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    recipe = [line for line in done.stdout.splitlines() if "conveyor up" in line]
    assert recipe and recipe[-1].endswith("conveyor up --port 8123 --no-flower"), done.stdout
