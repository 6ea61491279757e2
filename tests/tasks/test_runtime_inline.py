"""The worker runtime's inline mode (prefork pool children): jobs run on the calling thread,
Celery's soft time limit cancels the job instead of landing inside it, and the fast path's
background publish finishes before ``run`` returns."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from billiard.pool import soft_timeout_sighandler
from celery.exceptions import SoftTimeLimitExceeded

from app.config import Settings
from tasks.runtime import Runtime


@pytest.fixture
def inline(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime()
    runtime.inline = True
    runtime.configure(settings)
    runtime.start()
    previous = signal.getsignal(signal.SIGUSR1)
    # As billiard does in a pool child: SIGUSR1 raises SoftTimeLimitExceeded where it lands.
    signal.signal(signal.SIGUSR1, soft_timeout_sighandler)
    try:
        yield runtime
    finally:
        signal.signal(signal.SIGUSR1, previous)
        runtime.stop()


def test_jobs_run_on_the_calling_thread_and_no_loop_thread_is_started(
    inline: Runtime, settings: Settings
) -> None:
    async def where() -> int:
        return threading.get_ident()

    assert inline.run(where()) == threading.get_ident()
    assert inline.run(where()) == threading.get_ident()  # the same loop, job after job
    assert inline._thread is None  # no loop thread of its own (the suite's runtime may have one)

    # Control: the threaded mode runs the same coroutine on its own loop thread.
    threaded = Runtime()
    threaded.configure(settings)
    try:
        assert threaded.run(where()) != threading.get_ident()
    finally:
        threaded.stop()


def test_soft_time_limit_cancels_the_job_instead_of_landing_in_its_except_exception(
    inline: Runtime,
) -> None:
    swallowed: list[BaseException] = []
    steps: list[int] = []

    async def stubborn() -> str:
        # Service code that catches any Exception while it works: a SoftTimeLimitExceeded raised
        # inside it would be swallowed and the job would go on to the end.
        for step in range(40):
            steps.append(step)
            try:
                busy_until = time.monotonic() + 0.05
                while time.monotonic() < busy_until:  # on the CPU: the signal lands in here
                    pass
            except Exception as exc:
                swallowed.append(exc)
            await asyncio.sleep(0)
        return "ran to the end"

    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    start = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded):
        inline.run(stubborn())
    timer.join()
    assert swallowed == []
    assert 0 < len(steps) < 40  # it ran, and it stopped early (40 steps take 2 s)
    assert time.monotonic() - start < 1.5

    # Between jobs the signal still reaches billiard's handler, as it would without us.
    with pytest.raises(SoftTimeLimitExceeded):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(1)  # the handler runs in this thread as soon as the signal is taken

    # And the runtime goes on running jobs after a soft limit.
    async def ok() -> str:
        return "ok"

    assert inline.run(ok()) == "ok"


def test_the_fast_path_publish_a_job_started_finishes_before_run_returns(inline: Runtime) -> None:
    published: list[str] = []
    pending_at_return: list[bool] = []
    publisher: Any = inline._publisher

    async def publish_later() -> None:
        await asyncio.sleep(0.1)
        published.append("sent")

    async def job() -> str:
        # What OutboxPublisher.publish_now does after a commit: a background drainer task.
        publisher._drainer = asyncio.get_running_loop().create_task(publish_later())
        pending_at_return.append(publisher.busy)
        return "done"

    assert inline.run(job()) == "done"
    assert pending_at_return == [True]  # control: the publish was still under way
    assert published == ["sent"]
    assert not publisher.busy


def test_timeout_and_wrong_thread_give_clear_errors(inline: Runtime) -> None:
    with pytest.raises(TimeoutError, match=r"no result within 0\.1 s"):
        inline.run(asyncio.sleep(5), timeout=0.1)

    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            inline.run(asyncio.sleep(0))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "main thread only" in str(errors[0])
