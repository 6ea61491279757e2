"""`conveyor ops ...` and `conveyor status` against a real API subprocess and a real worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner, Result

from app.cli.ops import api_errors, make_client, ops, status
from app.runtime.embedded import find_free_port
from tests.observability.support import start_api
from tests.support.procs import API_LISTENING

pytestmark = pytest.mark.e2e


def invoke(command: click.Command, args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(command, args, env=env, catch_exceptions=False)


async def cli(command: click.Command, *args: str, env: dict[str, str] | None = None) -> Result:
    # In a thread: `status` runs its own event loop, and the test's loop stays free.
    return await asyncio.to_thread(invoke, command, list(args), env)


def section_rows(text: str) -> dict[str, dict[str, list[str]]]:
    """`status` output -> {section heading: {first cell: other cells}} (header rows dropped)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):  # a heading
            current = sections.setdefault(line.split(" on ")[0].split(" (")[0].split(":")[0], {})
            continue
        cells = line.split()
        if not cells[0].isupper():
            current[cells[0]] = cells[1:]
    return sections


async def create_ping(http: httpx.AsyncClient, **body: Any) -> str:
    response = await http.post("/v1/pings", json=body)
    assert response.status_code == 200, response.text
    return response.json()["name"]


async def test_ops_and_status_commands_against_a_running_api_and_worker(
    clean_db, stack, monkeypatch
):
    monkeypatch.setenv("CONVEYOR_API_KEY", stack.api_key)  # `conveyor ops` sends it
    api, url = start_api(stack)
    worker = stack.worker(queues="platform", concurrency=2)
    api.wait_for_log(API_LISTENING, timeout=30)
    async with httpx.AsyncClient(base_url=url, timeout=10, headers=stack.headers) as http:
        ok = await create_ping(http, message="watched", sleep_seconds=1, steps=4)
        failing = await create_ping(http, message="doomed", fail_attempts=10)
        slow = await create_ping(http, message="slow", sleep_seconds=20, steps=20)

    # Without a key the API refuses, and ops says so in one line.
    result = await cli(ops, "--api-url", url, "list", env={"CONVEYOR_API_KEY": None})
    assert result.exit_code == 2
    assert result.stderr.startswith("conveyor: 401 UNAUTHENTICATED: "), result.stderr
    assert "CONVEYOR_API_KEY" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    # watch: a progress bar until done; exit 0 on SUCCEEDED with the response.
    result = await cli(ops, "--api-url", url, "watch", ok)
    assert result.exit_code == 0, result.output
    assert f"{ok}: SUCCEEDED" in result.stdout
    assert "pong: watched" in result.stdout
    assert "4/4" in result.stdout

    # watch: FAILED (retries exhausted, task_max_retries=3) exits 1 and prints the error.
    result = await cli(ops, "--api-url", url, "watch", failing)
    assert result.exit_code == 1, result.output
    assert f"{failing}: FAILED: UNAVAILABLE: gave up after 4 attempts" in result.stderr

    # list: a table naming the operations and their state.
    result = await cli(ops, "--api-url", url, "list", "--page-size", "10")
    assert result.exit_code == 0, result.output
    line = next(row for row in result.stdout.splitlines() if ok in row)
    assert "SUCCEEDED" in line and "platform.ping" in line and "4/4" in line
    assert failing in result.stdout
    result = await cli(ops, "--api-url", url, "list", "--filter", 'metadata.state = "FAILED"')
    assert failing in result.stdout and ok not in result.stdout
    # Newest first by default (the three were created in the order ok, failing, slow);
    # --order-by create_time turns it around.
    newest = await cli(ops, "--api-url", url, "list", "--page-size", "10")
    lines = [ln for ln in newest.stdout.splitlines() if any(n in ln for n in (ok, failing, slow))]
    assert [n for ln in lines for n in (ok, failing, slow) if n in ln] == [slow, failing, ok]
    oldest = await cli(ops, "--api-url", url, "list", "--order-by", "create_time")
    lines = [ln for ln in oldest.stdout.splitlines() if any(n in ln for n in (ok, failing, slow))]
    assert [n for ln in lines for n in (ok, failing, slow) if n in ln] == [ok, failing, slow]
    bad = await cli(ops, "--api-url", url, "list", "--order-by", "state")
    assert bad.exit_code == 2 and "400 INVALID_ARGUMENT" in bad.stderr, bad.output

    # get: the operation as JSON, by its full name or by platform.<id>.
    result = await cli(ops, "--api-url", url, "get", ok.removeprefix("operations/"))
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["name"] == ok and body["done"] is True
    assert body["response"]["reply"] == "pong: watched"

    # cancel, then watch the cancelled one: exit 1.
    result = await cli(ops, "--api-url", url, "cancel", slow)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{slow}: CANCEL"), result.output
    result = await cli(ops, "--api-url", url, "watch", slow)
    assert result.exit_code == 1, result.output
    assert f"{slow}: CANCELLED" in result.stderr

    # An unknown or malformed name: the API's AIP-193 error as one line, exit 2.
    missing = f"platform.{uuid.uuid4()}"
    result = await cli(ops, "--api-url", url, "get", missing)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"conveyor: 404 NOT_FOUND: operations/{missing} does not exist"
    ), result.stderr
    result = await cli(ops, "--api-url", url, "watch", "nonsense")
    assert result.exit_code == 2
    assert result.stderr.startswith("conveyor: 400 INVALID_ARGUMENT: operation name"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    # status: queues with depth, the worker alive with its queue, outbox backlog, beat leader.
    stack.redis.rpush("imports", b"{}")  # a message waiting with no worker on its queue
    result = await cli(status, "--timeout", "1", env=stack.env)
    assert result.exit_code == 0, result.output
    sections = section_rows(result.stdout)
    assert sections["Queues"]["imports"] == ["1", "0"], result.stdout  # 1 waiting, no worker
    assert sections["Queues"]["platform"] == ["0", "1"], result.stdout
    [(name, queues)] = sections["Workers alive"].items()
    assert name.startswith("platform-") and queues == ["platform"], result.stdout
    assert sections["Outbox backlog"]["platform"] == ["0", "-"], result.stdout
    assert "Beat leader: none (no beat holds the lease" in result.stdout
    assert "Traceback" not in worker.log()


def test_unreachable_api_is_one_line_naming_the_url_exit_2():
    url = f"http://127.0.0.1:{find_free_port()}"
    result = invoke(ops, ["--api-url", url, "list"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"conveyor: cannot reach the API at {url} (connection refused); is `conveyor api`"
        " running there? Set --api-url or CONVEYOR_API_URL"
    ]
    result = invoke(ops, ["get", "platform.x"], env={"CONVEYOR_API_URL": url})
    assert result.exit_code == 2 and url in result.stderr


def test_api_key_from_env_is_sent_as_bearer_token_and_non_json_errors_stay_one_line():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("boom"):
            return httpx.Response(502, text="<html>\nbad gateway\n</html>")
        return httpx.Response(200, json={"operations": []})

    client = make_client("http://api.test/", "s3cret", transport=httpx.MockTransport(handler))
    with api_errors(client):
        assert client.operations.page().items == []
    assert seen[0].headers["authorization"] == "Bearer s3cret"
    assert str(seen[0].url) == "http://api.test/v1/operations"
    with pytest.raises(click.ClickException) as info, api_errors(client):
        client.operations.get("boom")
    assert info.value.exit_code == 2
    assert info.value.format_message() == "502 Bad Gateway: <html> bad gateway </html>"
    anonymous = make_client("http://api.test", None, transport=httpx.MockTransport(handler))
    with api_errors(anonymous):
        anonymous.operations.page()
    assert "authorization" not in seen[-1].headers
