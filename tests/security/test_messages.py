"""Messages: JSON only. A pickle message on a real queue is refused by the real worker (its
payload is never unpickled, its task never runs); task arguments carry ids, never secrets."""

from __future__ import annotations

import ast
import asyncio
import pathlib
import pickle
import uuid

from kombu import Connection, Exchange, Producer

from app.adapters.celery_app import celery_config
from app.container import Container
from app.db import EngineRegistry
from tests.support.ops import query

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Exploit:
    """Unpickling this creates a file: proof that a payload was (or was not) deserialized."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_celery_accepts_json_only(settings):
    config = celery_config(settings)
    assert config["accept_content"] == ["json"]
    assert config["result_accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["event_serializer"] == "json"


async def _pending_ping(settings) -> str:
    """A PENDING ping whose outbox row is not published (no fast path, no relay here)."""
    registry = EngineRegistry(settings)
    try:
        op = await Container(settings, registry).pings.create_ping(message="pickled")
        return str(op.id)
    finally:
        await registry.dispose()


async def test_pickle_message_is_refused_by_the_real_worker(
    settings, celery_app, celery_worker, database_url, tmp_path
):
    op_id = await _pending_ping(settings)
    marker = tmp_path / "unpickled"
    body = pickle.dumps(((Exploit(str(marker)), op_id), {}, {}))
    headers = {
        "lang": "py",
        "task": "platform.ping",
        "id": op_id,
        "root_id": op_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "argsrepr": "(...)",
        "kwargsrepr": "{}",
        "origin": "attacker",
    }
    with Connection(str(settings.broker_url)) as conn:
        Producer(conn).publish(
            body,
            exchange=Exchange("conveyor", type="direct"),
            routing_key="platform",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers=headers,
            serializer=None,
        )
    await asyncio.sleep(3)
    assert not marker.exists(), "the worker unpickled a message"
    state = await query(
        database_url, "SELECT state FROM platform.operations WHERE id = CAST(:id AS uuid)", id=op_id
    )
    assert state[0][0] == "PENDING", "a pickle message ran its task"

    # The same task as JSON is executed by the same worker: it was alive and listening.
    celery_app.send_task("platform.ping", args=[op_id], task_id=op_id, queue="platform")
    for _ in range(100):
        state = await query(
            database_url,
            "SELECT state FROM platform.operations WHERE id = CAST(:id AS uuid)",
            id=op_id,
        )
        if state[0][0] == "SUCCEEDED":
            break
        await asyncio.sleep(0.1)
    assert state[0][0] == "SUCCEEDED"
    await query(
        database_url,
        "UPDATE platform.outbox SET sent_time = now() WHERE operation_id = CAST(:id AS uuid)"
        " RETURNING id",
        id=op_id,
    )


SECRET_WORDS = ("secret", "password", "token", "api_key", "apikey", "credential", "private_key")


def test_task_signatures_take_ids_not_secrets():
    problems = []
    tasks = 0
    for path in sorted((ROOT / "tasks").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            decorators = [ast.unparse(d) for d in node.decorator_list]
            if not any("task" in d for d in decorators):
                continue
            tasks += 1
            for arg in node.args.args + node.args.kwonlyargs:
                if any(word in arg.arg.lower() for word in SECRET_WORDS):
                    problems.append(f"{path.name}:{node.name}({arg.arg})")
    assert tasks >= 3
    assert not problems, f"tasks take secrets as arguments: {problems}"


async def test_dispatched_task_arguments_are_ids(client, database_url):
    op = (await client.post("/v1/pings", json={"message": "secret-looking text"})).json()
    op_id = op["name"].rsplit(".", 1)[1]
    rows = await query(
        database_url,
        "SELECT args, kwargs FROM platform.outbox WHERE operation_id = CAST(:id AS uuid)",
        id=op_id,
    )
    assert rows
    for args, kwargs in rows:
        assert kwargs == {}
        for value in args:
            uuid.UUID(str(value))  # every argument is an id; the task loads the rest itself
    # Across every domain's outbox, no argument looks like a key or a secret.
    for schema in ("platform", "imports", "webhooks", "reports"):
        found = await query(
            database_url,
            f'SELECT count(*) FROM "{schema}".outbox'
            " WHERE args::text ~ 'cvk_|whsec_|password' OR kwargs::text ~ 'cvk_|whsec_|password'",
        )
        assert found[0][0] == 0, schema
