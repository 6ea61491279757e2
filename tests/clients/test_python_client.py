"""The Python client (clients/python) against the live API and a real worker."""

from __future__ import annotations

import inspect
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import conveyor_client as cc
import httpx
import pytest
from conveyor_client import _async, _sync

from tests.conftest import create_api_key
from tests.support.live import live_api

pytestmark = pytest.mark.timeout(120)

MISSING = "platform.019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2c"


@pytest.fixture(scope="module")
def base_url(settings: Any, celery_app: Any, celery_worker: Any) -> Iterator[str]:
    with live_api(settings, celery_app) as url:
        yield url


@pytest.fixture
def cv(base_url: str, api_key: str) -> Iterator[cc.Conveyor]:
    with cc.Conveyor(base_url, api_key) as client:
        yield client


class LoseFirstAnswer(httpx.HTTPTransport):
    """Forwards every request; the answer to the first POST is lost after the server handled it
    (a connection dropped mid-response), so the client cannot know whether it was done."""

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST":
            self.posts.append(request.read())
            if len(self.posts) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("connection reset before the answer", request=request)
        return response


def _ping_count(cv: cc.Conveyor) -> int:
    return sum(1 for _ in cv.operations.list('metadata.type = "ping"', page_size=2))


def test_ping_waits_with_long_polls_and_lists_iterate_every_page(cv: cc.Conveyor) -> None:
    before = _ping_count(cv)
    first = cv.pings.create("one")
    op = cv.pings.create("two", steps=2).wait(timeout=60)
    assert isinstance(op, cc.Operation)
    assert op.done and op.state == "SUCCEEDED", op
    assert op.response and op.response["reply"] == "pong: two"
    assert op.metadata.progress.done == 2
    assert first.wait(timeout=60).state == "SUCCEEDED"
    ping = cv.pings.get(op.metadata.target)
    assert ping.reply == "pong: two" and ping.done
    # page_size=2 over >= 2 new operations: more than one page, every item once.
    names = [o.name for o in cv.operations.list('metadata.type = "ping"', page_size=2)]
    assert len(names) == before + 2 == len(set(names))
    assert {first.name, op.name} <= set(names)


def test_retried_create_with_lost_answer_returns_the_same_operation(
    base_url: str, api_key: str
) -> None:
    transport = LoseFirstAnswer()
    with cc.Conveyor(base_url, api_key, transport=transport) as cv:
        before = _ping_count(cv)
        op = cv.pings.create("once")
        after = _ping_count(cv)
    assert len(transport.posts) == 2  # the create really was sent twice...
    ids = {json.loads(body)["request_id"] for body in transport.posts}
    assert len(ids) == 1  # ...with one generated request_id
    assert after == before + 1  # ...and made one operation
    assert op.name.startswith("operations/platform.")


PUBLIC_HOOK = "https://93.184.216.34/hook"


def _create_once(cv: cc.Conveyor, resource: str, marker: str) -> Any:
    """Creates one ``resource`` labelled ``marker`` through the client's own create method."""
    if resource == "datasets":
        fields = [{"name": "id", "type": "string", "required": True}]
        return cv.datasets.create(marker, fields, "id")
    if resource == "endpoints":
        return cv.endpoints.create(PUBLIC_HOOK, ["rid.*"], description=marker, enabled=False)
    if resource == "schedules":
        return cv.schedules.create("platform.ping", interval_seconds=60, display_name=marker)
    return cv.events.publish(f"rid{marker}.Created", {"order": 1})


def _made(cv: cc.Conveyor, resource: str, marker: str, hook: str | None) -> list[str]:
    """Ids of the ``resource`` items labelled ``marker`` (events: of their deliveries)."""
    if resource == "datasets":
        return [d.id for d in cv.datasets.list() if d.display_name == marker]
    if resource == "endpoints":
        return [e.id for e in cv.endpoints.list() if e.description == marker]
    if resource == "schedules":
        return [s.id for s in cv.schedules.list() if s.display_name == marker]
    assert hook is not None
    return [d.event_id for d in cv.deliveries.list(hook)]


@pytest.mark.parametrize("resource", ["datasets", "endpoints", "schedules", "events"])
def test_retried_resource_create_with_lost_answer_makes_one_resource(
    cv: cc.Conveyor, base_url: str, api_key: str, resource: str
) -> None:
    marker = uuid.uuid4().hex[:12]
    hook = None
    if resource == "events":  # a subscriber, so the event's fan-out can be counted
        hook = cv.endpoints.create(PUBLIC_HOOK, [f"rid{marker}.*"], enabled=False).name
    transport = LoseFirstAnswer()
    with cc.Conveyor(base_url, api_key, transport=transport) as lossy:
        created = _create_once(lossy, resource, marker)
    assert len(transport.posts) == 2  # the first answer really was lost, the create resent...
    assert len({json.loads(body)["request_id"] for body in transport.posts}) == 1  # ...as one
    assert _made(cv, resource, marker, hook) == [created.id]  # ...and made exactly one
    if resource == "endpoints":
        assert created.secret and created.secret.startswith("whsec_")


def test_unavailable_and_rate_limited_answers_are_retried_after_retry_after(
    base_url: str, api_key: str
) -> None:
    answers = [
        httpx.Response(
            503,
            headers={"retry-after": "0.3"},
            json={"error": {"code": 503, "status": "UNAVAILABLE", "message": "db down"}},
        ),
        httpx.Response(
            429,
            headers={"retry-after": "0.2"},
            json={"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down"}},
        ),
    ]

    class Flaky(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and answers:
                return answers.pop(0)
            return super().handle_request(request)

    sleeps: list[float] = []
    with cc.Conveyor(base_url, api_key, transport=Flaky()) as cv:
        cv._core.sleep = sleeps.append
        op = cv.pings.create("after outage")
        assert op.metadata.type == "ping"
        assert sleeps == [0.3, 0.2]
        # A POST without a request_id is not resent after a 503 (it may have been done).
        answers.append(
            httpx.Response(
                503, json={"error": {"code": 503, "status": "UNAVAILABLE", "message": "x"}}
            )
        )
        with pytest.raises(cc.Unavailable):
            cv.operations.retry(MISSING)
        assert sleeps == [0.3, 0.2]
        # The resource creates carry one: a 503 then a 429 are retried, and it is one event.
        answers.extend(
            httpx.Response(
                code, headers={"retry-after": "0.1"}, json={"error": {"code": code, "message": "x"}}
            )
            for code in (503, 429)
        )
        event = cv.events.publish("order.paid", {"id": 1})
        assert event.type == "order.paid" and sleeps == [0.3, 0.2, 0.1, 0.1]


def test_connection_refused_is_a_typed_error_after_retries() -> None:
    sleeps: list[float] = []
    with cc.Conveyor("http://127.0.0.1:9", "cvk_x_y", max_retries=2) as cv:
        cv._core.sleep = sleeps.append
        with pytest.raises(cc.ConnectionFailed):
            cv.operations.get(MISSING)
    assert len(sleeps) == 2


def test_each_error_the_api_emits_is_a_typed_exception(
    cv: cc.Conveyor, base_url: str, settings: Any, run_async_key: Any
) -> None:
    with pytest.raises(cc.NotFound) as nf:
        cv.operations.get("platform.019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2c")
    assert nf.value.http_status == 404 and "does not exist" in nf.value.message

    with pytest.raises(cc.InvalidArgument) as bad:
        cv.datasets.create("x", [{"name": "id", "type": "no-such-type"}], key_field="id")
    assert bad.value.field_violations and bad.value.field_violations[0].field.startswith("fields")

    op = cv.pings.create("done").wait(timeout=60)
    with pytest.raises(cc.FailedPrecondition):
        cv.operations.retry(op.name)  # only a FAILED operation can be retried

    cv.pings.create("a", request_id="reused-id-1")
    with pytest.raises(cc.AlreadyExists) as exists:
        cv.pings.create("b", request_id="reused-id-1")
    assert exists.value.reason == "REQUEST_ID_REUSED"

    with pytest.raises(cc.OutOfRange) as big:
        cv.events.publish("big", {"blob": "x" * (settings.security.max_body_bytes + 1)})
    assert big.value.http_status == 413

    from conveyor_client._core import Call

    with pytest.raises(cc.Unimplemented) as unimplemented:  # a method the route does not have
        cv._core.json(Call("PUT", "/v1/pings"))
    assert unimplemented.value.http_status == 405

    with cc.Conveyor(base_url, "cvk_nope_nope") as anon, pytest.raises(cc.Unauthenticated):
        anon.operations.get(MISSING)

    reader = run_async_key(scopes=("operations:read",))
    with cc.Conveyor(base_url, reader) as ro, pytest.raises(cc.PermissionDenied) as denied:
        ro.pings.create("no")
    assert denied.value.reason == "MISSING_SCOPE"


@pytest.fixture
def run_async_key(settings: Any) -> Any:
    from tests.conftest import run_async

    def make(**kw: Any) -> str:
        return str(run_async(create_api_key(settings, **kw)))

    return make


async def test_rate_limit_is_resource_exhausted_then_retried(
    settings: Any, celery_app: Any
) -> None:
    from app.main import create_app

    security = settings.security.model_copy(
        update={"rate_limit_per_second": 1.0, "rate_limit_burst": 1}
    )
    app = create_app(settings.model_copy(update={"security": security}), celery=celery_app)
    key = await create_api_key(settings)
    transport = httpx.ASGITransport(app=app)
    try:
        async with cc.AsyncConveyor("http://t", key, transport=transport, max_retries=0) as cv:
            with pytest.raises(cc.NotFound):
                await cv.operations.get(MISSING)
            with pytest.raises(cc.ResourceExhausted) as limited:
                await cv.operations.get(MISSING)
            assert limited.value.retry_after and limited.value.retry_after >= 1
        waits: list[float] = []
        async with cc.AsyncConveyor("http://t", key, transport=transport) as cv:
            real_sleep = cv._core.sleep

            async def sleep(seconds: float) -> None:
                waits.append(seconds)
                await real_sleep(seconds)

            cv._core.sleep = sleep  # type: ignore[method-assign]
            with pytest.raises(cc.NotFound):  # got through after waiting
                await cv.operations.get(MISSING)
        assert waits and waits[0] >= 1
    finally:
        await app.state.container.registry.dispose()


async def test_database_outage_is_unavailable(settings: Any, celery_app: Any, api_key: str) -> None:
    from app.main import create_app

    down = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    broken = settings.model_copy(update={"database_url": down})
    app = create_app(broken, celery=celery_app)
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with cc.AsyncConveyor("http://t", api_key, transport=transport, max_retries=0) as cv:
            with pytest.raises(cc.Unavailable) as exc:
                await cv.operations.get(MISSING)
        assert exc.value.http_status == 503
    finally:
        await app.state.container.registry.dispose()


async def test_async_import_streams_file_and_error_csv(
    base_url: str, api_key: str, tmp_path: Any
) -> None:
    csv = "id,amount\n" + "".join(f"r{i},{i}\n" for i in range(30)) + "bad,notanumber\n"
    async with cc.AsyncConveyor(base_url, api_key) as cv:
        ds = await cv.datasets.create(
            "client-test",
            [
                {"name": "id", "type": "string", "required": True},
                {"name": "amount", "type": "number"},
            ],
            key_field="id",
        )
        op = await cv.imports.create(ds.name, io.BytesIO(csv.encode()), format="csv")
        assert isinstance(op, cc.AsyncOperation)
        done = await op.wait(timeout=60)
        assert done.state == "SUCCEEDED", done
        imports = [i async for i in cv.imports.list(ds.name)]
        assert len(imports) == 1 and imports[0].rows_accepted == 30
        assert imports[0].rows_rejected == 1
        out = tmp_path / "errors.csv"
        written = await cv.imports.download_errors(imports[0].name, out)
        assert written == out.stat().st_size > 0
        assert "notanumber" in out.read_text()
        big = [r.key async for r in cv.records.list(ds.name, "amount >= 20", page_size=4)]
        assert sorted(big) == sorted(f"r{i}" for i in range(20, 30))
        assert (await cv.records.get(ds.name, "r3")).data["amount"] == 3


def test_sync_upload_from_a_path(cv: cc.Conveyor, tmp_path: Any) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"id": f"k{i}"}) + "\n" for i in range(5)))
    ds = cv.datasets.create(
        "path-upload", [{"name": "id", "type": "string", "required": True}], key_field="id"
    )
    op = cv.imports.create(ds.name, str(path)).wait(timeout=60)
    assert op.state == "SUCCEEDED", op
    assert cv.datasets.get(ds.id).record_count == 5


def test_sync_and_async_clients_offer_the_same_calls() -> None:
    def calls(module: Any) -> dict[str, list[str]]:
        out = {}
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and not name.startswith("_"):
                out[name.removeprefix("Async")] = sorted(
                    f"{m}{inspect.signature(f)}".replace("Async", "").replace(
                        "AsyncIterator", "Iterator"
                    )
                    for m, f in inspect.getmembers(cls, inspect.isfunction)
                    if not m.startswith("_")
                )
        return out

    sync, asyn = calls(_sync), calls(_async)
    assert sync.keys() == asyn.keys()
    for name in sync:
        assert sync[name] == asyn[name], name


def test_python_client_guide_examples_run(
    base_url: str, api_key: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Every ```python block of docs/guides/python-client.md marked ``<!-- test: run -->``."""
    import pathlib
    import re

    guide = pathlib.Path(__file__).resolve().parents[2] / "docs" / "guides" / "python-client.md"
    blocks = re.findall(r"<!-- test: run -->\n```python\n(.*?)```", guide.read_text(), re.S)
    assert len(blocks) == 3
    monkeypatch.setenv("CONVEYOR_API_URL", base_url)
    monkeypatch.setenv("CONVEYOR_API_KEY", api_key)
    for block in blocks:
        # Files the examples write go to tmp_path (the API's import storage is relative to cwd).
        block = block.replace('"orders', f'"{tmp_path}/orders')
        exec(compile(block, str(guide), "exec"), {"__name__": "__guide__"})
    out = capsys.readouterr().out
    assert "SUCCEEDED pong: hello" in out
    assert "NOT_FOUND" in out and "2 1" in out and "A-1 {" in out
    assert "['SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED']" in out


def test_report_is_requested_waited_for_and_downloaded_to_a_file(
    cv: cc.Conveyor, tmp_path: Any
) -> None:
    op = cv.reports.create("digest", "today", format="csv").wait(timeout=60)
    assert op.state == "SUCCEEDED", op
    report = cv.reports.get(op.metadata.target)
    assert report.state == "SUCCEEDED" and report.format == "csv"
    assert report.name in {r.name for r in cv.reports.list('type = "digest"')}
    out = tmp_path / "digest.csv"
    written = cv.reports.download(report.name, out)
    assert written == report.size_bytes == out.stat().st_size
    assert out.read_text().splitlines()[0].startswith("day")


async def test_a_server_bug_is_internal_and_never_retried(
    settings: Any, celery_app: Any, api_key: str
) -> None:
    from app.main import create_app

    app = create_app(settings, celery=celery_app)
    calls: list[str] = []

    async def boom() -> None:
        calls.append("boom")
        raise RuntimeError("secret internals")

    app.add_api_route("/v1/boom", boom, methods=["GET"])
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with cc.AsyncConveyor("http://t", api_key, transport=transport) as cv:
            from conveyor_client._core import Call

            with pytest.raises(cc.Internal) as exc:
                await cv._core.json(Call("GET", "/v1/boom"))
        assert exc.value.http_status == 500 and exc.value.status == "INTERNAL"
        assert "secret" not in exc.value.message
        assert calls == ["boom"]  # a bug answers the same way again: not retried
    finally:
        await app.state.container.registry.dispose()
