"""`conveyor up` end to end: the real process tree, a ping through it, Flower, and Ctrl-C.

`up` gets a database and a Redis database index of its own, so its relay, sweeper and workers
see nothing of the rest of the test session (and the session's in-process worker nothing of it).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.config import DOMAINS
from app.runtime.embedded import find_free_port
from tests.conftest import claim_redis_db
from tests.support import services

pytestmark = pytest.mark.e2e

FLOWER_USER = "e2e"


# ------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    zombie: bool
    cmd: str


def _processes() -> list[ProcInfo]:
    """Every process on the machine (psutil when installed, else ``ps``)."""
    try:
        import psutil
    except ImportError:
        out = subprocess.run(
            ["ps", "-eo", "pid=,ppid=,pgid=,stat=,args="],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = []
        for line in out.splitlines():
            pid, ppid, pgid, stat, *cmd = line.split(None, 4)
            result.append(
                ProcInfo(int(pid), int(ppid), int(pgid), stat.startswith("Z"), " ".join(cmd))
            )
        return result
    result = []
    for proc in psutil.process_iter(["pid", "ppid", "status", "cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            result.append(
                ProcInfo(
                    proc.info["pid"],
                    proc.info["ppid"] or 0,
                    os.getpgid(proc.info["pid"]),
                    proc.info["status"] == psutil.STATUS_ZOMBIE,
                    " ".join(proc.info["cmdline"] or []),
                )
            )
    return result


def _descendants(pid: int) -> list[ProcInfo]:
    procs = _processes()
    children: dict[int, list[ProcInfo]] = {}
    for info in procs:
        children.setdefault(info.ppid, []).append(info)
    found: list[ProcInfo] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child.pid)
    return found


def _alive(pids: set[int], pgid: int) -> list[ProcInfo]:
    """Processes among ``pids`` or in process group ``pgid`` that still run (zombies are dead:
    an orphan is reparented to PID 1, which in some containers never reaps it)."""
    return [p for p in _processes() if (p.pid in pids or p.pgid == pgid) and not p.zombie]


def _poll(what: str, check: Callable[[], Any], timeout: float, log: Callable[[], str]) -> Any:
    """Calls ``check`` until it returns something truthy; fails with the log after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (httpx.TransportError, ValueError, KeyError) as exc:
            result, last = None, exc
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})\n--- up log ---\n{log()}")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ------------------------------------------------------------------------------ fixture


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    api: str
    flower: str
    password: str
    log_path: pathlib.Path
    env: dict[str, str]
    metrics: str = ""
    close_terminal: Callable[[], None] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"up exited with {self.proc.returncode}:\n{self.log()}")


@contextlib.contextmanager
def _running_up(
    service_env: dict[str, str],
    admin_url: str,
    tmp_path: pathlib.Path,
    args: list[str],
    *,
    terminal: bool = False,
) -> Iterator[Up]:
    """Starts ``python -m app.cli up`` in a session of its own; kills what is left at the end.

    With ``terminal``, ``up`` runs on a pseudo-terminal under ``sh`` (the session leader, which
    like ``make`` only waits for it and forwards no SIGHUP); ``Up.close_terminal`` hangs it up.
    """
    db_name = f"conveyor_up_{secrets.token_hex(4)}"
    database_url = services.create_database(admin_url, db_name)
    broker_url, release_broker = claim_redis_db(service_env["CONVEYOR_BROKER_URL"])
    proc: subprocess.Popen[bytes] | None = None
    children: set[int] = set()
    try:
        port, flower_port = find_free_port(), find_free_port()
        password = secrets.token_urlsafe(16)
        env = {
            **service_env,
            "CONVEYOR_DATABASE_URL": database_url,  # empty: `up` runs the migrations itself
            "CONVEYOR_BROKER_URL": broker_url,
            "CONVEYOR_FLOWER_USER": FLOWER_USER,
            "CONVEYOR_FLOWER_PASSWORD": password,
            "CONVEYOR_DATA_DIR": str(tmp_path / "data"),
        }
        log_path = tmp_path / "up.log"
        args = ["up", "--port", str(port), "--flower-port", str(flower_port), *args]
        close_terminal = None
        if terminal:
            proc, close_terminal = _start_on_terminal(
                [sys.executable, "-m", "app.cli", *args], env, tmp_path, log_path
            )
        else:
            proc = _start_plain([sys.executable, "-m", "app.cli", *args], env, tmp_path, log_path)
        up = Up(
            proc,
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{flower_port}",
            password,
            log_path,
            env,
            close_terminal=close_terminal,
        )
        yield up
    finally:
        if proc is not None:
            # `up` runs each child in a session of its own: kill them one by one.
            children = {p.pid for p in _descendants(proc.pid)}
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        release_broker()
        services.drop_database(admin_url, db_name)


def _start_plain(
    argv: list[str], env: dict[str, str], cwd: pathlib.Path, log_path: pathlib.Path
) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,  # no stray .env from the repository
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A shell running pytest in the background starts it with SIGINT ignored, which
            # would carry over and make `up` deaf to Ctrl-C: give it the default disposition.
            preexec_fn=_default_sigint,
        )


def _start_on_terminal(
    argv: list[str], env: dict[str, str], cwd: pathlib.Path, log_path: pathlib.Path
) -> tuple[subprocess.Popen[bytes], Callable[[], None]]:
    import fcntl
    import pty
    import termios
    import threading

    master, slave = pty.openpty()
    log_path.touch()

    def controlling_terminal() -> None:
        _default_sigint()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # after setsid: the pty becomes the session's

    # As make does: sh stays the session leader (`; :` keeps it from exec'ing), survives the
    # hang-up's SIGHUP (a handler, which `up` does not inherit) and only waits for `up`.
    proc = subprocess.Popen(
        ["sh", "-c", 'trap : HUP; "$@"; :', "sh", *argv],
        env=env,
        cwd=cwd,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=controlling_terminal,
    )
    os.close(slave)

    stop = threading.Event()

    def pump() -> None:
        import select

        with open(log_path, "ab") as log_file:
            while not stop.is_set():
                if not select.select([master], [], [], 0.2)[0]:
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:
                    return
                if not data:
                    return
                log_file.write(data)
                log_file.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def close() -> None:
        # Closing while the reader sits in read() would not release the pty (no hang-up).
        stop.set()
        reader.join(5)
        os.close(master)

    return proc, close


@pytest.fixture
def up(service_env: dict[str, str], admin_url: str, tmp_path: pathlib.Path) -> Iterator[Up]:
    """The whole stack: API, a worker per domain, relay, beat, Flower and the metrics exporter."""
    metrics_port = find_free_port()
    with _running_up(
        service_env, admin_url, tmp_path, ["--metrics-port", str(metrics_port)]
    ) as running:
        running.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        yield running


def _wait_summary(up: Up, timeout: float = 90) -> None:
    _poll(
        "the summary block",
        lambda: (up.check_running(), "Conveyor is up" in up.log())[1],
        timeout,
        up.log,
    )


# ------------------------------------------------------------------------------ the test


def test_up_serves_a_ping_shows_it_in_flower_and_stops_on_ctrl_c(up: Up) -> None:
    auth = (FLOWER_USER, up.password)
    with httpx.Client(timeout=10) as http:

        def ready() -> bool:
            up.check_running()
            return http.get(f"{up.api}/readyz").status_code == 200

        _poll("API /readyz 200", ready, 90, up.log)

        # Flower must be receiving events before the task runs, or it never learns of it:
        # wait until it has heard a heartbeat from every domain worker.
        def flower_sees_workers() -> bool:
            up.check_running()
            response = http.get(f"{up.flower}/api/workers", params={"status": "true"}, auth=auth)
            if response.status_code != 200:
                return False
            alive = {name.split("@", 1)[0] for name, ok in response.json().items() if ok}
            return set(DOMAINS) <= alive

        _poll("Flower sees a worker per domain", flower_sees_workers, 60, up.log)

        # /v1 needs a key: `up` migrated the database, `conveyor keys create` makes one there.
        assert http.post(f"{up.api}/v1/pings", json={}).status_code == 401
        created = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--scopes", "operations:write"],
            env=up.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        http.headers["authorization"] = f"Bearer {created.stdout.strip()}"
        response = http.post(f"{up.api}/v1/pings", json={"message": "e2e"})
        assert response.status_code == 200, response.text
        name = response.json()["name"]
        assert name.startswith("operations/platform."), name
        operation_id = name.removeprefix("operations/")
        task_id = operation_id.removeprefix("platform.")

        def succeeded() -> dict[str, Any] | None:
            up.check_running()
            result = http.post(
                f"{up.api}/v1/operations/{operation_id}:wait", json={"timeout": 10}, timeout=20
            )
            assert result.status_code == 200, result.text
            body = result.json()
            if not body["done"]:
                return None
            assert body["metadata"]["state"] == "SUCCEEDED", body
            return body

        operation = _poll("operation SUCCEEDED", succeeded, 45, up.log)
        assert operation["response"]["reply"] == "pong: e2e", operation
        # Quiet output: no Celery banners nor root warnings, and the :wait long polls above
        # leave no access line (the submit's line shows access lines do reach this output).
        log = up.log()
        assert ".> transport:" not in log and "superuser privileges" not in log, log
        assert "Inspect method" not in log and "inspection failed" not in log, log
        assert '"POST /v1/pings HTTP/1.1" 200' in log, log
        assert ":wait" not in log, log

        def flower_task() -> dict[str, Any] | None:
            result = http.get(f"{up.flower}/api/tasks", auth=auth)
            assert result.status_code == 200, result.text
            task = result.json().get(task_id)
            return task if task and task.get("state") == "SUCCESS" else None

        task = _poll("task SUCCESS in Flower", flower_task, 30, up.log)
        assert task["name"] == "platform.ping", task

        # The platform's series, where the summary says: `up` started the exporter.
        exported = http.get(up.metrics).text
        assert 'conveyor_queue_depth{queue="platform"}' in exported, exported[:2000]
        assert re.search(r'conveyor_tasks_total\{[^}]*task="platform.ping"', exported), exported
        assert 'conveyor_operations{domain="platform",state="SUCCEEDED"}' in exported
        assert f"Metrics   {up.metrics}" in up.log(), up.log()

        assert http.get(f"{up.flower}/api/tasks").status_code == 401
        assert http.get(f"{up.flower}/api/tasks", auth=(FLOWER_USER, "wrong")).status_code == 401

    # Ctrl-C: only `up` gets the signal here, so stopping the rest is up to it.
    children = {p.pid for p in _descendants(up.proc.pid)}
    assert len(children) >= 3 + len(DOMAINS), children  # api, relay, beat, flower, workers
    up.proc.send_signal(signal.SIGINT)
    try:
        code = up.proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"up did not exit within 30 s of SIGINT\n{up.log()}")
    assert code in (0, 130), f"exit code {code}\n{up.log()}"

    deadline = time.monotonic() + 5  # let the last exits settle
    while (left := _alive(children, up.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"still running after up exited: {left}\n{up.log()}"
    assert "did not stop in time" not in up.log(), up.log()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "terminal closed"])
def test_up_restarts_a_dead_child_and_stops_everything_on_sigterm_sighup_and_hangup(
    service_env: dict[str, str], admin_url: str, tmp_path: pathlib.Path, how: str
) -> None:
    """SIGTERM (docker stop, kill), SIGHUP and a closed terminal stop every child; a relay killed
    meanwhile is started again. SIGINT and SIGKILL: the tests above and the quick start.

    "terminal closed": `up` runs on a pseudo-terminal under a shell that forwards no SIGHUP
    (as with `make run`), and the terminal is hung up.
    """
    args = ["--no-flower", "--no-metrics", "--queues", "platform", "--concurrency", "1"]
    terminal = how == "terminal closed"
    with _running_up(service_env, admin_url, tmp_path, args, terminal=terminal) as up:
        _wait_summary(up)
        # Each process's lines carry its name, coloured on a terminal only.
        coloured = re.search(r"\x1b\[[0-9;]*m(api|relay|beat|worker)[\w-]* *\|\x1b\[0m", up.log())
        assert bool(coloured) == terminal, up.log()[-3000:]

        def relay_pid() -> int | None:
            found = [p for p in _descendants(up.proc.pid) if p.cmd.endswith("app.cli relay")]
            return found[0].pid if found and not found[0].zombie else None

        if how == "SIGTERM":
            first = _poll("relay running", relay_pid, 30, up.log)
            os.kill(first, signal.SIGKILL)
            second = _poll(
                "relay restarted", lambda: (pid := relay_pid()) != first and pid, 30, up.log
            )
            assert second != first
            assert "relay    | exited with code -9; restarting in 1 s" in up.log(), up.log()
            up.check_running()

        children = {p.pid for p in _descendants(up.proc.pid)}
        assert len(children) >= 4, children  # api, worker (+ its pool), relay, beat
        state = tmp_path / "data" / "up.json"
        assert state.exists()
        if terminal:
            assert up.close_terminal is not None
            up.close_terminal()
        else:
            up.proc.send_signal(signal.SIGHUP if how == "SIGHUP" else signal.SIGTERM)
        try:
            code = up.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"up did not exit within 30 s of {how}\n{up.log()}")
        deadline = time.monotonic() + 10
        while (left := _alive(children, up.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"still running after {how}: {left}\n{up.log()}"
        # A clean stop (not a kill) removes the state file other commands read.
        assert not state.exists(), up.log()
        if not terminal:  # (after a hang-up its last lines have nowhere to go)
            assert code == 0, f"exit code {code}\n{up.log()}"
            assert f"stopping ({how})" in up.log(), up.log()
            assert "did not stop in time" not in up.log(), up.log()


def test_up_reports_a_busy_port_before_starting_anything(
    service_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**service_env, "CONVEYOR_DATA_DIR": str(tmp_path / "data")}
        env.pop("CONVEYOR_DATABASE_URL", None)  # nothing may start, not even embedded servers
        env.pop("CONVEYOR_BROKER_URL", None)
        result = subprocess.run(
            [sys.executable, "-m", "app.cli", "up", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"port {port} on 127.0.0.1 (API) is already in use" in result.stderr, result.stderr
    assert "--port" in result.stderr
    assert "embedded" not in result.stdout + result.stderr
    assert not (tmp_path / "data" / "embedded").exists()
