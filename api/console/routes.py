"""Console pages (Operations, Datasets, Webhooks, Schedules, System) and sign-in.

Each page calls ``/v1`` in-process with the session's API key through the Python client, so a
key's tenant and scopes apply to everything shown (another tenant's resource is a 404 page, a
missing scope a 403 page). Forms are POSTs carrying the session's CSRF token; they answer with a
redirect (post/redirect/get).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import pathlib
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
from conveyor_client import ApiError, AsyncConveyor
from conveyor_client.models import TERMINAL_STATES
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from api import deps
from api.console import session as sessions
from domains.shared.errors import DomainError

HERE = pathlib.Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
PAGE_SIZE = 20
_MAX_FORM_BYTES = 64 * 1024


class LoginRequired(Exception):
    """No valid session: the page redirects to the sign-in form."""


class CsrfFailed(Exception):
    """A form without the session's CSRF token (or from another origin)."""


class ConsoleRoute(APIRoute):
    """Renders the API's errors as pages: 401 -> sign-in, others -> an error page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wraps the handler.

        Returns:
            The wrapped handler.
        """
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                target = urllib.parse.quote(request.url.path)
                return RedirectResponse(f"/console/login?next={target}", status_code=303)
            except CsrfFailed:
                return _error_page(request, 403, "FORBIDDEN", "The form expired; reload the page.")
            except ApiError as exc:
                if exc.http_status == 401:
                    response = RedirectResponse("/console/login", status_code=303)
                    response.delete_cookie(sessions.COOKIE, path="/console")
                    return response
                return _error_page(request, exc.http_status, exc.status, exc.message)

        return wrapped


router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


def _error_page(request: Request, code: int, status: str, message: str) -> Response:
    return templates.TemplateResponse(
        request,
        "error.html",
        {"code": code, "status": status, "message": message, "me": None, "csrf": ""},
        status_code=code,
    )


def _settings(request: Request) -> Any:
    return request.app.state.settings.security


def _key(request: Request) -> bytes:
    return sessions.signing_key(_settings(request).console_session_secret.get_secret_value())


def _session(request: Request) -> sessions.Session:
    found = sessions.load(request.cookies.get(sessions.COOKIE), _key(request))
    if found is None:
        raise LoginRequired
    return found


async def _me(request: Request, session: sessions.Session) -> Any:
    """The key's tenant and scopes, verified now (a revoked key ends the session)."""
    keys = await deps.api_keys(request)
    try:
        return await keys.authenticate(session.api_key)
    except DomainError as exc:
        if exc.code == "UNAUTHENTICATED":
            raise LoginRequired from None
        raise


@contextlib.asynccontextmanager
async def _api(request: Request, session: sessions.Session) -> AsyncIterator[AsyncConveyor]:
    """The Python client on this app's own /v1 routes, with the session's key."""
    transport = httpx.ASGITransport(app=request.app)
    headers = {"user-agent": "conveyor-console"}
    rid = getattr(request.state, "request_id", None)
    if rid:
        headers["x-request-id"] = rid  # operations created here carry the page's correlation id
    async with AsyncConveyor(
        "http://console.internal",
        session.api_key,
        transport=transport,
        max_retries=0,
        timeout=70,
        headers=headers,
    ) as client:
        yield client


async def _form(request: Request, session: sessions.Session) -> dict[str, str]:
    """The posted form, after the CSRF and same-origin checks."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise CsrfFailed
    fields = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}
    origin = request.headers.get("origin")
    if origin and urllib.parse.urlsplit(origin).netloc != request.url.netloc:
        raise CsrfFailed
    if not sessions.csrf_ok(session, fields.get("csrf")):
        raise CsrfFailed
    return fields


async def _page(request: Request, name: str, **context: Any) -> Response:
    session = _session(request)
    me = await _me(request, session)
    return templates.TemplateResponse(
        request, name, {"me": me, "csrf": session.csrf, "nav": name.split(".")[0], **context}
    )


def _back(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _when(value: dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _percent(op: Any) -> int:
    progress = op.metadata.progress
    if op.state == "SUCCEEDED":
        return 100
    if not progress.total:
        return 0
    return min(100, int(100 * progress.done / progress.total))


templates.env.filters["when"] = _when
templates.env.filters["percent"] = _percent
templates.env.globals["TERMINAL"] = TERMINAL_STATES


# -- sign-in ---------------------------------------------------------------------------------


@router.get("")
async def home() -> Response:
    """The console's front page is Operations."""
    return _back("/console/operations")


@router.get("/login")
async def login_form(request: Request, next: str = "/console/operations") -> Response:
    """The sign-in form."""
    return templates.TemplateResponse(
        request, "login.html", {"me": None, "csrf": "", "next": next, "message": ""}
    )


def _safe_next(value: str | None) -> str:
    # Only console paths: never an open redirect to another site.
    if value and value.startswith("/console/") and "//" not in value and "\\" not in value:
        return value
    return "/console/operations"


@router.post("/login")
async def login(request: Request) -> Response:
    """Verifies the API key and starts a session."""
    origin = request.headers.get("origin")
    if origin and urllib.parse.urlsplit(origin).netloc != request.url.netloc:
        return _error_page(request, 403, "FORBIDDEN", "sign in from this site's own form")
    body = (await request.body())[:_MAX_FORM_BYTES]
    fields = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}
    token = fields.get("api_key", "").strip()
    keys = await deps.api_keys(request)
    try:
        await keys.authenticate(token)
    except DomainError as exc:
        if exc.code != "UNAUTHENTICATED":
            raise
        return templates.TemplateResponse(
            request,
            "login.html",
            {"me": None, "csrf": "", "next": fields.get("next", ""), "message": exc.message},
            status_code=401,
        )
    security = _settings(request)
    session = sessions.new_session(token, security.console_session_max_age_seconds)
    response = _back(_safe_next(fields.get("next")))
    response.set_cookie(
        sessions.COOKIE,
        sessions.dump(session, _key(request)),
        max_age=security.console_session_max_age_seconds,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Ends the session."""
    await _form(request, _session(request))
    response = _back("/console/login")
    response.delete_cookie(sessions.COOKIE, path="/console")
    return response


# -- operations ------------------------------------------------------------------------------


def _op_filter(domain: str, type_: str, state: str) -> str | None:
    parts = []
    for field, value in (("metadata.domain", domain), ("metadata.type", type_)):
        if value:
            parts.append(f'{field} = "{value.replace(chr(34), "")}"')
    if state:
        parts.append(f"metadata.state = {state.replace(chr(34), '')}")
    return " AND ".join(parts) or None


@router.get("/operations")
async def operations(
    request: Request, domain: str = "", type: str = "", state: str = "", page_token: str = ""
) -> Response:
    """Operations, newest first, filtered by domain, type and state."""
    session = _session(request)
    async with _api(request, session) as api:
        page = await api.operations.page(
            _op_filter(domain, type, state),
            page_size=PAGE_SIZE,
            page_token=page_token or None,
            order_by="create_time desc",
        )
    query = {"domain": domain, "type": type, "state": state}
    return await _page(
        request,
        "operations.html",
        page=page,
        query=query,
        next_url=_with(request, page_token=page.next_page_token) if page.next_page_token else "",
        states=["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED"],
    )


def _with(request: Request, **changes: str) -> str:
    params = dict(request.query_params)
    params.update(changes)
    return request.url.path + "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v})


@router.get("/operations/{op_id}")
async def operation(request: Request, op_id: str) -> Response:
    """One operation: metadata, progress, error, response, attempts, dispatches, correlation id."""
    session = _session(request)
    async with _api(request, session) as api:
        op = await api.operations.get(op_id)
    return await _page(request, "operation.html", op=op)


@router.get("/operations/{op_id}/progress")
async def operation_progress(request: Request, op_id: str) -> Response:
    """The progress the page's script polls (JSON)."""
    session = _session(request)
    async with _api(request, session) as api:
        op = await api.operations.get(op_id)
    progress = op.metadata.progress
    return JSONResponse(
        {
            "state": op.state,
            "done": op.done,
            "percent": _percent(op),
            "text": f"{progress.done}/{progress.total}" if progress.total else str(progress.done),
            "message": progress.message,
        }
    )


@router.post("/operations/{op_id}/cancel")
async def cancel_operation(request: Request, op_id: str) -> Response:
    """Cancel button."""
    session = _session(request)
    await _form(request, session)
    async with _api(request, session) as api:
        op = await api.operations.cancel(op_id)
    return _back(f"/console/operations/{op.id}")


@router.post("/operations/{op_id}/retry")
async def retry_operation(request: Request, op_id: str) -> Response:
    """Retry button (FAILED operations)."""
    session = _session(request)
    await _form(request, session)
    async with _api(request, session) as api:
        op = await api.operations.retry(op_id)
    return _back(f"/console/operations/{op.id}")


@router.post("/pings")
async def start_ping(request: Request) -> Response:
    """Starts a diagnostic ping (to see the platform work end to end)."""
    session = _session(request)
    fields = await _form(request, session)
    try:
        sleep = float(fields.get("sleep_seconds") or 0)
        steps = int(fields.get("steps") or 1)
    except ValueError:
        return _error_page(request, 400, "INVALID_ARGUMENT", "seconds and steps must be numbers")
    async with _api(request, session) as api:
        op = await api.pings.create(
            fields.get("message") or "console", sleep_seconds=sleep, steps=steps
        )
    return _back(f"/console/operations/{op.id}")


# -- datasets --------------------------------------------------------------------------------

_LIST_CAP = 200
"""Most items a console list shows without paging (datasets, endpoints, schedules, imports)."""


async def _first(items: AsyncIterator[Any], cap: int = _LIST_CAP) -> list[Any]:
    out = []
    async for item in items:
        out.append(item)
        if len(out) >= cap:
            break
    return out


@router.get("/datasets")
async def datasets(request: Request) -> Response:
    """Datasets with their record counts."""
    session = _session(request)
    async with _api(request, session) as api:
        items = await _first(api.datasets.list(page_size=100))
    return await _page(request, "datasets.html", datasets=items)


@router.get("/datasets/{dataset_id}")
async def dataset(
    request: Request, dataset_id: str, filter: str = "", page_token: str = ""
) -> Response:
    """A dataset: schema, imports with counts and error downloads, and a record browser."""
    session = _session(request)
    problem = ""
    async with _api(request, session) as api:
        ds = await api.datasets.get(dataset_id)
        imports = await _first(api.imports.list(ds.name, page_size=50), cap=50)
        try:
            records = await api.records.page(
                ds.name, filter or None, page_size=PAGE_SIZE, page_token=page_token or None
            )
        except ApiError as exc:
            if exc.http_status != 400:
                raise
            problem = exc.message  # a bad filter is shown next to the filter box
            records = None
    return await _page(
        request,
        "dataset.html",
        ds=ds,
        imports=imports,
        records=records,
        filter=filter,
        problem=problem,
        next_url=_with(request, page_token=records.next_page_token)
        if records and records.next_page_token
        else "",
    )


@router.get("/datasets/{dataset_id}/imports/{import_id}/errors.csv")
async def import_errors(request: Request, dataset_id: str, import_id: str) -> Response:
    """Every rejected row of an import, as the API's CSV download."""
    import tempfile

    session = _session(request)
    spool = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)
    async with _api(request, session) as api:
        await api.imports.download_errors(
            f"datasets/{dataset_id}/imports/{import_id}",
            spool,
        )
    spool.seek(0)

    def chunks() -> Any:
        with spool:
            while block := spool.read(64 * 1024):
                yield block

    return StreamingResponse(
        chunks(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="import-{import_id}-errors.csv"'},
    )


# -- webhooks --------------------------------------------------------------------------------

DELIVERY_STATES = ["PENDING", "SENDING", "SUCCEEDED", "FAILED", "DEAD", "PAUSED"]


@router.get("/endpoints")
async def endpoints(request: Request) -> Response:
    """Webhook endpoints with their breaker state."""
    session = _session(request)
    async with _api(request, session) as api:
        items = await _first(api.endpoints.list(page_size=100))
    return await _page(request, "endpoints.html", endpoints=items)


async def _endpoint_page(
    request: Request, endpoint_id: str, state: str, page_token: str, secret: str | None = None
) -> Response:
    session = _session(request)
    async with _api(request, session) as api:
        ep = await api.endpoints.get(endpoint_id)
        filter_ = f"state = {state}" if state in DELIVERY_STATES else None
        deliveries = await api.deliveries.page(
            ep.name, filter_, page_size=PAGE_SIZE, page_token=page_token or None
        )
    return await _page(
        request,
        "endpoint.html",
        ep=ep,
        deliveries=deliveries,
        state=state,
        states=DELIVERY_STATES,
        secret=secret,
        next_url=_with(request, page_token=deliveries.next_page_token)
        if deliveries.next_page_token
        else "",
    )


@router.get("/endpoints/{endpoint_id}")
async def endpoint(
    request: Request, endpoint_id: str, state: str = "", page_token: str = ""
) -> Response:
    """An endpoint: breaker, deliveries filtered by state, Replay and Rotate secret."""
    return await _endpoint_page(request, endpoint_id, state, page_token)


@router.post("/endpoints/{endpoint_id}/rotate")
async def rotate_secret(request: Request, endpoint_id: str) -> Response:
    """Rotate secret button: the new secret is shown once, on this answer only."""
    session = _session(request)
    await _form(request, session)
    async with _api(request, session) as api:
        ep = await api.endpoints.rotate_secret(endpoint_id)
    response = await _endpoint_page(request, endpoint_id, "", "", secret=ep.secret)
    response.headers["cache-control"] = "no-store"
    return response


@router.post("/endpoints/{endpoint_id}/replay")
async def replay(request: Request, endpoint_id: str) -> Response:
    """Replay button: re-sends the failed and dead deliveries since a time."""
    session = _session(request)
    fields = await _form(request, session)
    since = fields.get("since") or ""
    if since and len(since) == 16:  # datetime-local without seconds or zone: UTC
        since += ":00Z"
    async with _api(request, session) as api:
        op = await api.endpoints.replay(endpoint_id, since)
    return _back(f"/console/operations/{op.id}")


@router.get("/endpoints/{endpoint_id}/deliveries/{delivery_id}")
async def delivery(request: Request, endpoint_id: str, delivery_id: str) -> Response:
    """A delivery and each attempt with its status and response snippet."""
    session = _session(request)
    async with _api(request, session) as api:
        item = await api.deliveries.get(delivery_id)
        attempts = await api.deliveries.attempts(
            f"endpoints/{endpoint_id}/deliveries/{delivery_id}"
        )
    return await _page(
        request, "delivery.html", delivery=item, attempts=attempts, endpoint_id=endpoint_id
    )


@router.post("/endpoints/{endpoint_id}/deliveries/{delivery_id}/retry")
async def retry_delivery(request: Request, endpoint_id: str, delivery_id: str) -> Response:
    """Retry button of a FAILED or DEAD delivery."""
    session = _session(request)
    await _form(request, session)
    async with _api(request, session) as api:
        await api.deliveries.retry(delivery_id)
    return _back(f"/console/endpoints/{endpoint_id}/deliveries/{delivery_id}")


# -- schedules -------------------------------------------------------------------------------


@router.get("/schedules")
async def schedules(request: Request) -> Response:
    """Schedules with their next run."""
    session = _session(request)
    async with _api(request, session) as api:
        items = await _first(api.schedules.list(page_size=100))
    return await _page(request, "schedules.html", schedules=items)


@router.get("/schedules/{schedule_id}")
async def schedule(request: Request, schedule_id: str) -> Response:
    """A schedule: recent runs with how each operation ended; pause/resume, Run now."""
    session = _session(request)
    outcomes: dict[str, Any] = {}
    async with _api(request, session) as api:
        item = await api.schedules.get(schedule_id)
        runs = await api.schedules.runs(item.name, page_size=20)
        for run in runs:
            if run.operation and run.operation not in outcomes:
                try:
                    outcomes[run.operation] = await api.operations.get(run.operation)
                except ApiError as exc:  # deleted or expired operation: say so, keep the page
                    outcomes[run.operation] = exc.status
    return await _page(request, "schedule.html", schedule=item, runs=runs, outcomes=outcomes)


async def _set_enabled(request: Request, schedule_id: str, enabled: bool) -> Response:
    session = _session(request)
    await _form(request, session)
    async with _api(request, session) as api:
        await api.schedules.update(schedule_id, enabled=enabled)
    return _back(f"/console/schedules/{schedule_id}")


@router.post("/schedules/{schedule_id}/pause")
async def pause_schedule(request: Request, schedule_id: str) -> Response:
    """Pause button."""
    return await _set_enabled(request, schedule_id, False)


@router.post("/schedules/{schedule_id}/resume")
async def resume_schedule(request: Request, schedule_id: str) -> Response:
    """Resume button."""
    return await _set_enabled(request, schedule_id, True)


@router.post("/schedules/{schedule_id}/run")
async def run_schedule(request: Request, schedule_id: str) -> Response:
    """Run now button."""
    session = _session(request)
    await _form(request, session)
    async with _api(request, session) as api:
        await api.schedules.run(schedule_id)
    return _back(f"/console/schedules/{schedule_id}")


# -- system ----------------------------------------------------------------------------------


@router.get("/system")
async def system(request: Request) -> Response:
    """Queue depths, workers alive per queue, outbox backlog and age, beat leader."""
    session = _session(request)
    async with _api(request, session) as api:
        status = await api.system.status()
    return await _page(request, "system.html", status=status)
