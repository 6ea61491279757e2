"""Fault injection for the reliability suite, installed into a subprocess from test code.

Python imports ``sitecustomize`` at start-up from ``sys.path``: a test puts this directory on a
subprocess's ``PYTHONPATH`` (:func:`tests.support.faults.fault_env`), so no fault code lives in
the production modules. Each fault is armed by an environment variable:

- ``CONVEYOR_FAULT_KILL_AFTER_COMMITS=N``: the process SIGKILLs itself after the N-th commit
  that wrote outbox rows (the start of ``OutboxPublisher.publish_now``, the after-commit
  callback), before anything is published or answered - the window the relay must cover.
- ``CONVEYOR_FAULT_CHILD_EXIT_ON_INIT=1``: every pool child of a worker exits (code 3) while it
  initialises (Celery's ``worker_process_init``, after the runtime's own handler): the worker
  must then exit non-zero rather than run without a pool.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

KILL_AFTER_COMMITS = "CONVEYOR_FAULT_KILL_AFTER_COMMITS"
"""Environment variable arming the kill-after-commit fault."""

PUBLISHER_MODULE = "app.runtime.outbox"
"""Module of the outbox publisher whose after-commit callback the fault wraps (if the publisher
moves, this must follow: the fault test then fails with "the fault hook did not fire")."""

CHILD_EXIT_ON_INIT = "CONVEYOR_FAULT_CHILD_EXIT_ON_INIT"
"""Environment variable arming the pool-child-dies-at-start fault."""

RUNTIME_MODULE = "tasks.runtime"
"""Module whose ``worker_process_init`` handler starts a pool child's runtime."""

log = logging.getLogger("conveyor.faults")


def _wrap_publish_now(module: ModuleType, limit: int) -> None:
    # Runs the fault before the real callback, exactly where a commit hands its rows over.
    publisher = module.OutboxPublisher
    publish_now = publisher.publish_now
    commits_seen = 0

    @functools.wraps(publish_now)
    async def publish_now_or_die(
        self: Any, domain: str, messages: list[Any], /, **options: Any
    ) -> None:
        nonlocal commits_seen
        commits_seen += 1
        if commits_seen >= limit:
            log.warning("fault injection: SIGKILL after commit %d", commits_seen)
            os.kill(os.getpid(), signal.SIGKILL)
        await publish_now(self, domain, messages, **options)

    publisher.publish_now = publish_now_or_die


def _exit_pool_children_on_init(module: ModuleType) -> None:
    # Connected after the runtime's own handler (it is connected when its module executes),
    # so the child dies in the middle of its start-up, as a broken start-up would.
    from celery import signals

    def die(**_: Any) -> None:
        log.warning("fault injection: pool child exits during its start-up")
        os._exit(3)

    signals.worker_process_init.connect(die, weak=False)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds ``module`` as usual and runs ``patch`` on it right after it executes."""

    def __init__(self, module: str, patch: Any) -> None:
        self._module = module
        self._patch = patch

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self._module:
            return None
        sys.meta_path.remove(self)  # once
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        patch = self._patch

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Arms the faults the environment asks for (none when no variable is set)."""
    limit = os.environ.get(KILL_AFTER_COMMITS)
    if limit:
        sys.meta_path.insert(
            0,
            _PatchOnImport(
                PUBLISHER_MODULE, functools.partial(_wrap_publish_now, limit=int(limit))
            ),
        )
    if os.environ.get(CHILD_EXIT_ON_INIT):
        sys.meta_path.insert(0, _PatchOnImport(RUNTIME_MODULE, _exit_pool_children_on_init))


install()
