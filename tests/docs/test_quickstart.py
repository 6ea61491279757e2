"""The quick start works as written: every ```bash block of docs/quickstart.md marked
``<!-- test: run -->`` runs, in order and in one shell, against a fresh database and a private
Redis database.

``make run`` itself (marked ``<!-- test: skip ... -->``) is replaced by what ``conveyor up`` does
for the quick start's workflows: ``conveyor migrate``, then the API, an ``imports`` and a
``platform`` worker and the relay in the background. The blocks run in a temporary directory
(they write ``orders.csv``). The API listens on a free port: the blocks' ``127.0.0.1:8000`` / ``localhost:8000``
are rewritten to it, and ``CONVEYOR_API_URL`` points ``conveyor ops`` at it.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import sys
import time

import pytest

from app.embedded import find_free_port
from tests.support import services

pytestmark = pytest.mark.e2e

QUICKSTART = pathlib.Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
BLOCK = re.compile(
    r"(?:^<!--\s*test:\s*(?P<mark>\w+)[^>]*-->\s*\n)?^```bash\n(?P<body>.*?)^```", re.M | re.S
)


def bash_blocks(text: str) -> list[tuple[str | None, str]]:
    """Every ```bash block with its mark (``run``, ``skip`` or ``None`` when unmarked)."""
    return [(m.group("mark"), m.group("body")) for m in BLOCK.finditer(text)]


def test_every_quickstart_block_is_marked() -> None:
    blocks = bash_blocks(QUICKSTART.read_text())
    assert blocks, "docs/quickstart.md has no ```bash block"
    unmarked = [body for mark, body in blocks if mark not in ("run", "skip")]
    assert not unmarked, f"mark these blocks <!-- test: run --> or <!-- test: skip -->: {unmarked}"
    assert any(mark == "run" for mark, _ in blocks)
    assert any("make run" in body for mark, body in blocks if mark == "skip")


async def test_quickstart_blocks_run_against_a_fresh_database(
    stack, spawn, admin_url, tmp_path
) -> None:
    started = time.monotonic()
    script = "\n".join(body for mark, body in bash_blocks(QUICKSTART.read_text()) if mark == "run")
    port = find_free_port()
    script = re.sub(r"(?:127\.0\.0\.1|localhost):8000", f"127.0.0.1:{port}", script)

    name = f"conveyor_quickstart_{secrets.token_hex(4)}"
    database_url = services.create_database(admin_url, name)
    try:
        bin_dir = os.path.dirname(sys.executable)
        env = {
            **stack.env,
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_API_URL": f"http://127.0.0.1:{port}",
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }
        assert shutil.which("conveyor", path=env["PATH"]), f"no conveyor in {bin_dir}"

        # What `make run` / `conveyor up` does, for the processes the import and the ping need.
        migrated = await asyncio.to_thread(
            subprocess.run,
            ["conveyor", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert migrated.returncode == 0, migrated.stderr
        api = stack.spawn("api", "--host", "127.0.0.1", "--port", str(port), env=env, name="api")
        stack.worker("imports", env=env)
        stack.worker("platform", env=env)
        stack.relay(env=env)
        api.wait_for_log("Application startup complete", timeout=30)

        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", script],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"quick-start blocks failed:\n{script}\n---\n{output}"
        assert "SUCCEEDED" in result.stdout, output
        # The import: watched to SUCCEEDED with 3 of 4 rows, the filter, the row error.
        imported = re.search(r"(operations/imports\.\S+): SUCCEEDED\n(\{.*\})\n", result.stdout)
        assert imported, output
        response = json.loads(imported.group(2))
        assert (response["rows_total"], response["rows_accepted"]) == (4, 3), response
        assert "SUCCEEDED 3\n" in result.stdout, output  # the :wait block
        assert "['A-1001', 'A-1004']" in result.stdout, output  # the filtered records
        assert "line,field,reason,raw_value" in result.stdout, output
        assert re.search(r"^4,amount,.*,twelve$", result.stdout, re.M), output
        assert "pong: hello" in result.stdout, output
        # The request_id block prints the same operation name twice.
        last_two = result.stdout.strip().splitlines()[-2:]
        assert len(last_two) == 2 and last_two[0] == last_two[1], output
        assert last_two[0].startswith("operations/platform."), output
    finally:
        spawn.stop_all()  # before the database goes
        services.drop_database(admin_url, name)
    assert time.monotonic() - started < 60
