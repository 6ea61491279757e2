"""`conveyor api` serves app.main.server_app: create_app, then the startup heap frozen."""

from __future__ import annotations

import gc

import pytest

from app import main


def test_the_served_app_freezes_what_startup_built(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []

    def create_app() -> object:
        built.append([object() for _ in range(1000)])  # lives as long as the app
        return "app"

    monkeypatch.setattr(main, "create_app", create_app)
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        assert main.server_app() == "app"
        # Everything alive after startup (the app's objects included) left the GC's walk.
        assert gc.get_freeze_count() >= 1000
    finally:
        gc.unfreeze()


def test_conveyor_api_runs_the_server_app() -> None:
    import inspect

    from app import cli

    assert '"app.main:server_app"' in inspect.getsource(cli.api.callback)


def test_a_worker_pool_child_freezes_what_it_inherited_and_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks import runtime as task_runtime

    built = []

    def start() -> None:
        built.append([object() for _ in range(1000)])  # the child's container, say

    rt = task_runtime.runtime
    for name in ("_loop", "_thread", "_container", "inline"):
        monkeypatch.setattr(rt, name, getattr(rt, name))
    monkeypatch.setattr(rt, "start", start)
    gc.unfreeze()
    try:
        task_runtime._on_process_init()
        assert built and gc.get_freeze_count() >= 1000
    finally:
        gc.unfreeze()


def test_the_relay_freezes_its_startup_heap() -> None:
    import inspect

    from app import cli

    source = inspect.getsource(cli.relay.callback)
    assert source.index("freeze_heap()") < source.index("await run_relay(")
