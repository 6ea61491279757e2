"""The quick start works as a newcomer would follow it: ``conveyor up`` on a machine with nothing
configured (embedded PostgreSQL and Redis from pip packages), then every ```bash block of
docs/quickstart.md marked ``<!-- test: run -->``, in order and in one shell, in the same directory
and with no ``CONVEYOR_*`` variable set: ``conveyor keys create`` and ``conveyor ops`` must find
the running stack by themselves (``.conveyor/up.json``).

Then the life cycle a terminal gives ``up``: killed outright (SIGKILL) it leaves nothing running,
embedded servers included; started again on the same directory it works; a second one at the same
time says it is already running; Ctrl-C stops it all; and a command run with no stack left says so
in one line.

``make run`` itself (marked ``<!-- test: skip ... -->``) is replaced by ``conveyor up`` with the
workers the quick start needs. The API listens on a free port: the blocks' ``127.0.0.1:8000`` /
``localhost:8000`` are rewritten to it (``conveyor ops`` learns it from ``up.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from app.runtime.embedded import find_free_port
from tests.e2e.test_up import _alive, _descendants

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


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    with (
        contextlib.suppress(OSError),
        socket.create_connection((parts.hostname, parts.port), timeout=1),
    ):
        return True
    return False


class Up:
    """``conveyor up`` in ``cwd`` with a clean environment, its output in a log file."""

    def __init__(self, cwd: pathlib.Path, env: dict[str, str], port: int, name: str) -> None:
        self.log_path = cwd / f"{name}.log"
        self.api = f"http://127.0.0.1:{port}"
        args = ["up", "--port", str(port), "--no-flower", "--no-metrics"]
        args += ["--queues", "platform,imports", "--concurrency", "1"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", *args],
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the summary block is out (``up`` prints it once /readyz answers 200)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"up exited {self.proc.returncode}:\n{self.log()}"
            if "Conveyor is up" in self.log_path.read_text(errors="replace"):
                assert httpx.get(f"{self.api}/readyz", timeout=5).status_code == 200
                return
            time.sleep(0.3)
        raise AssertionError(f"not ready within {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


def _gone(pids: set[int], pgid: int, timeout: float) -> list[object]:
    deadline = time.monotonic() + timeout
    while (left := _alive(pids, pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture
def project_dir() -> Iterator[pathlib.Path]:
    """The directory ``up`` and the blocks run in, outside pytest's tmp tree: the embedded
    PostgreSQL runs as an unprivileged user (we are root) that must traverse every parent, and
    concurrent pytest sessions reset ``/tmp/pytest-of-root`` to mode 0700."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="conveyor-quickstart-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_quickstart_on_embedded_servers_then_kill_restart_and_stop(project_dir) -> None:
    tmp_path = project_dir
    script = "\n".join(body for mark, body in bash_blocks(QUICKSTART.read_text()) if mark == "run")
    port = find_free_port()
    script = re.sub(r"(?:127\.0\.0\.1|localhost):8000", f"127.0.0.1:{port}", script)
    bin_dir = os.path.dirname(sys.executable)
    # A newcomer's shell: nothing configured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    assert shutil.which("conveyor", path=env["PATH"]), f"no conveyor in {bin_dir}"

    first = Up(tmp_path, env, port, "up1")
    ups = [first]
    try:
        first.wait_ready()
        text = first.log()
        assert "starting embedded PostgreSQL and Redis" in text, text
        key = (tmp_path / ".conveyor" / "dev-api-key").read_text().strip()
        assert f"export CONVEYOR_API_KEY={key}" in text, text  # in the summary block
        assert "Ctrl-C" in text.split("Conveyor is up", 1)[1], text

        started = time.monotonic()
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
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
        assert not list(tmp_path.glob("*.csv")), "the quick start left a file behind"
        assert time.monotonic() - started < 90

        # Killed outright: its children, the guard and the embedded servers all go.
        state = json.loads((tmp_path / ".conveyor" / "up.json").read_text())
        assert state["pid"] == first.proc.pid
        servers = [state["database_url"], state["broker_url"]]
        assert all(_answers(url) for url in servers), state
        children = {p.pid for p in _descendants(first.proc.pid)}
        assert len(children) >= 5, children  # api, 2 workers, relay, beat, guard
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        # The guard stops Redis (up to 10 s) and then PostgreSQL (pg_ctl, up to 60 s) before it
        # exits: on a loaded machine that took longer than 30 s once (a CI run of 2026-12-07).
        left = _gone(children, -1, 80)
        assert not left, f"still running after SIGKILL of up: {left}\n{first.log()}"
        deadline = time.monotonic() + 20
        while any(_answers(url) for url in servers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_answers(url) for url in servers), "embedded servers outlived up"

        # Up again on the same directory: works; a second one at the same time refuses.
        again = Up(tmp_path, env, port, "up2")
        ups.append(again)
        again.wait_ready()
        third = subprocess.run(
            [sys.executable, "-m", "app.cli", "up", "--port", str(find_free_port())],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert third.returncode == 2, third.stdout + third.stderr
        assert f"already running (pid {again.proc.pid})" in third.stderr, third.stderr

        # The other commands find the running stack too, with nothing configured.
        for argv, expected in (
            (["conveyor", "status"], "platform"),
            (["conveyor", "migrate"], "migrated schemas"),
        ):
            done = subprocess.run(
                argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert expected in done.stdout + done.stderr, done.stdout + done.stderr
        metrics_port = find_free_port()
        exporter = subprocess.Popen(
            ["conveyor", "metrics", "--port", str(metrics_port)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            scraped = ""
            deadline = time.monotonic() + 60
            while "conveyor_queue_depth" not in scraped and time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
                time.sleep(0.3)
            assert 'conveyor_queue_depth{queue="platform"}' in scraped, scraped[:2000]
        finally:
            exporter.terminate()
            exporter.wait(20)

        children = {p.pid for p in _descendants(again.proc.pid)}
        again.proc.send_signal(signal.SIGINT)
        assert again.proc.wait(60) == 0, again.log()
        assert not _gone(children, again.proc.pid, 10), again.log()
        assert not (tmp_path / ".conveyor" / "up.json").exists()
    finally:
        for up in ups:
            up.kill()
    # Nothing running any more: a command says so in one line.
    status = subprocess.run(
        ["conveyor", "status"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 2
    assert status.stderr.count("\n") == 1, status.stderr
    assert "no `conveyor up` running here" in status.stderr, status.stderr
