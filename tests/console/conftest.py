"""A live API (uvicorn thread) on a PostgreSQL database and a broker database of its own, a
subprocess worker for every domain queue and a relay, and one headless Debian chromium driven by
Playwright.

The database is the console's own because its relay runs for the rest of the session: on the
session's database it would publish every other test's outbox rows to the console's broker."""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from app.adapters.celery_app import create_celery
from app.config import load_settings
from app.db import migrate
from tests.conftest import Proc, claim_redis_db, create_api_key, run_async
from tests.support import services
from tests.support.live import live_api

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS_ENV = "CONVEYOR_CONSOLE_SCREENSHOTS"
"""Set to a directory (e.g. docs/console) to keep the pages' screenshots there."""


class Console:
    """What the browser tests share: the URL, keys, a client and the subprocesses' environment."""

    def __init__(
        self, url: str, settings: Any, key: str, shots: pathlib.Path, env: dict[str, str]
    ) -> None:
        self.url = url
        self.settings = settings
        self.key = key
        self.shots = shots
        self.env = env  # for extra subprocesses (a beat) on the console's database and broker

    def new_key(self, **kw: Any) -> str:
        return str(run_async(create_api_key(self.settings, **kw)))

    def client(self, key: str | None = None) -> Any:
        import conveyor_client

        return conveyor_client.Conveyor(self.url, key or self.key)

    def shot(self, page: Any, name: str) -> None:
        path = self.shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        keep = os.environ.get(SHOTS_ENV)
        if keep:
            pathlib.Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, pathlib.Path(keep) / path.name)


@pytest.fixture(scope="package")  # its processes end with tests/console (the leak check)
def console(
    settings: Any, service_env: dict[str, str], admin_url: str, tmp_path_factory: Any
) -> Iterator[Console]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    logs = tmp_path_factory.mktemp("console")
    db_name = f"conveyor_console_{secrets.token_hex(4)}"
    database_url = services.create_database(admin_url, db_name)
    migrate.upgrade(load_settings(database_url=database_url, broker_url="redis://unused"))
    url, release = claim_redis_db(str(settings.broker_url))
    hooks = settings.webhooks.model_copy(
        update={"retry_schedule_seconds": [], "ssrf_allowlist": ["127.0.0.1"]}
    )
    isolated = settings.model_copy(
        update={"database_url": database_url, "broker_url": url, "webhooks": hooks}
    )
    env = {
        **service_env,
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_BROKER_URL": url,
        # One attempt, then DEAD; the receiver is on 127.0.0.1.
        "CONVEYOR_WEBHOOKS__RETRY_SCHEDULE_SECONDS": "[]",
        "CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST": '["127.0.0.1"]',
    }
    queues = "platform,imports,webhooks"
    worker = Proc(
        ["worker", "--queues", queues, "--concurrency", "2", "--pool", "threads"],
        env,
        logs / "worker.log",
    )
    relay = Proc(["relay"], env, logs / "relay.log")
    try:
        worker.wait_for_log(" ready.", timeout=60)
        celery = create_celery(isolated)
        key = str(run_async(create_api_key(isolated, tenant="acme")))
        with live_api(isolated, celery) as base:
            yield Console(base, isolated, key, logs, env)
    finally:
        # Killed, not stopped: a warm shutdown would wait for whatever the tests left running.
        for proc in (worker, relay):
            proc.popen.kill()
            proc.stop()
        release()
        services.drop_database(admin_url, db_name)


@pytest.fixture(scope="module")  # not session: sync Playwright holds the main thread's loop
def browser(console: Console) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def sign_in(browser: Any, console: Console, key: str | None = None) -> Any:
    """A fresh browser context signed in with ``key``; returns its page."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20000)
    page.goto(console.url + "/console/operations")
    assert "/console/login" in page.url  # no session: the sign-in form
    page.fill("input[name=api_key]", key or console.key)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/operations")
    return page
