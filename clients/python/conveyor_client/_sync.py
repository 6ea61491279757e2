"""The blocking client: :class:`Conveyor` and its resources.

``_async.py`` is the same file for asyncio (kept in step by ``tests/clients``' parity test).
"""

from __future__ import annotations

import builtins
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import httpx

from conveyor_client import _calls as calls
from conveyor_client import models
from conveyor_client._core import (
    DEFAULT_BASE_URL,
    Call,
    RetryPolicy,
    SyncCore,
    Upload,
    new_request_id,
)


def _pages(core: SyncCore, factory: Callable[[str | None], Call], key: str) -> Iterator[Any]:
    """Yields every item of every page of a list call (AIP-158)."""
    token: str | None = None
    while True:
        body = core.json(factory(token))
        yield from body.get(key) or []
        token = body.get("next_page_token") or None
        if not token:
            return


class Operation(models.Operation):
    """An operation bound to the client that fetched it: ``op.wait()``, ``op.cancel()``."""

    _client: Any = None

    def wait(self, timeout: float | None = None, *, poll: float = 30.0) -> Operation:
        """Waits until the operation is done, with ``:wait`` long polls.

        Args:
            timeout: Give up after this many seconds and return the latest state
                (``None``: wait as long as it takes).
            poll: Longest single long poll (the API allows up to 60 s).

        Returns:
            The latest state (``done`` is true unless the timeout passed).
        """
        result: Operation = self._client.operations.wait(self.name, timeout=timeout, poll=poll)
        return result

    def cancel(self) -> Operation:
        """Starts cancelling the operation.

        Returns:
            Its state after the call (CANCELLED or CANCELLING).
        """
        result: Operation = self._client.operations.cancel(self.name)
        return result


class _Resource:
    def __init__(self, client: Conveyor) -> None:
        self._client = client
        self._c = client._core

    def _op(self, body: Any) -> Operation:
        op = Operation.model_validate(body)
        op._client = self._client
        return op


class Operations(_Resource):
    """Long-running operations (``/v1/operations``)."""

    def get(self, name: str) -> Operation:
        """Gets an operation.

        Args:
            name: ``operations/<domain>.<id>`` or ``<domain>.<id>``.

        Returns:
            The operation.
        """
        return self._op(self._c.json(Call("GET", calls.op_path(name), repeatable=True)))

    def list(
        self,
        filter: str | None = None,
        *,
        page_size: int | None = None,
        order_by: str | None = None,
    ) -> Iterator[Operation]:
        """Iterates over every operation (all pages), in creation order (or as ``order_by`` says).

        Args:
            filter: AIP-160 filter, e.g. ``done = false AND metadata.domain = "imports"``.
            page_size: Items per request.
            order_by: ``create_time`` (default) or ``create_time desc`` (newest first).

        Yields:
            Operations.
        """
        for item in _pages(
            self._c,
            calls.lister("/v1/operations", filter, page_size, order_by=order_by),
            "operations",
        ):
            yield self._op(item)

    def page(
        self,
        filter: str | None = None,
        *,
        page_size: int | None = None,
        page_token: str | None = None,
        order_by: str | None = None,
    ) -> models.Page[Operation]:
        """One page of operations.

        Args:
            filter: AIP-160 filter.
            page_size: Items per page.
            page_token: ``next_page_token`` of the previous page.
            order_by: ``create_time`` (default) or ``create_time desc`` (newest first).

        Returns:
            The page.
        """
        body = self._c.json(
            calls.lister("/v1/operations", filter, page_size, order_by=order_by)(page_token)
        )
        return models.Page[Operation](
            items=[self._op(o) for o in body.get("operations") or []],
            next_page_token=body.get("next_page_token") or "",
        )

    def cancel(self, name: str) -> Operation:
        """Starts cancelling an operation (a running one stops at its next unit of work).

        Args:
            name: Operation name.

        Returns:
            The operation (CANCELLED or CANCELLING).
        """
        return self._op(
            self._c.json(Call("POST", calls.op_path(name) + ":cancel", repeatable=True))
        )

    def retry(self, name: str) -> Operation:
        """Starts a new attempt of a FAILED operation.

        Args:
            name: Operation name.

        Returns:
            The operation.
        """
        return self._op(self._c.json(Call("POST", calls.op_path(name) + ":retry")))

    def delete(self, name: str) -> None:
        """Deletes a done operation.

        Args:
            name: Operation name.
        """
        self._c.json(Call("DELETE", calls.op_path(name)))

    def wait(self, name: str, timeout: float | None = None, *, poll: float = 30.0) -> Operation:
        """Waits until an operation is done, with ``:wait`` long polls (no busy polling).

        Args:
            name: Operation name.
            timeout: Give up after this many seconds and return the latest state
                (``None``: wait as long as it takes).
            poll: Longest single long poll in seconds (at most 60).

        Returns:
            The latest state.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = min(poll, 60.0)
            if deadline is not None:
                step = max(0.0, min(step, deadline - time.monotonic()))
            op = self._op(self._c.json(calls.operations_wait(name, step)))
            if op.done or (deadline is not None and time.monotonic() >= deadline):
                return op


class Pings(_Resource):
    """Diagnostic pings (``/v1/pings``): a round trip through the platform queue."""

    def create(
        self,
        message: str = "ping",
        *,
        sleep_seconds: float | None = None,
        steps: int | None = None,
        fail_attempts: int | None = None,
        request_id: str | None = None,
    ) -> Operation:
        """Sends a ping; retried safely with one request_id (generated when not given).

        Args:
            message: Echoed in the reply.
            sleep_seconds: Seconds the worker spends on it (spread over ``steps``).
            steps: Progress steps.
            fail_attempts: The first N attempts fail (to see retries).
            request_id: AIP-155 idempotency key.

        Returns:
            The ping's operation.
        """
        call = calls.pings_create(message, sleep_seconds, steps, fail_attempts, request_id)
        return self._op(self._c.json(call))

    def get(self, name: str) -> models.Ping:
        """Gets a ping.

        Args:
            name: ``pings/<id>`` or ``<id>``.

        Returns:
            The ping.
        """
        path = "/v1/pings/" + calls.ident(name, "pings")
        return models.Ping.model_validate(self._c.json(Call("GET", path, repeatable=True)))


class Datasets(_Resource):
    """Typed datasets (``/v1/datasets``)."""

    def create(
        self,
        display_name: str,
        fields: list[dict[str, Any]],
        key_field: str,
        *,
        source_uri: str | None = None,
        request_id: str | None = None,
    ) -> models.Dataset:
        """Creates a dataset; retried safely with one request_id (generated when not given).

        Args:
            display_name: Name shown to people.
            fields: Schema: ``[{"name", "type", "required", "values"}]``.
            key_field: Field whose value identifies a record (upsert key).
            source_uri: Default file location for imports.
            request_id: AIP-155 idempotency key.

        Returns:
            The dataset (the first one made with ``request_id``).
        """
        call = calls.datasets_create(display_name, fields, key_field, source_uri, request_id)
        return models.Dataset.model_validate(self._c.json(call))

    def get(self, name: str) -> models.Dataset:
        """Gets a dataset.

        Args:
            name: ``datasets/<id>`` or ``<id>``.

        Returns:
            The dataset.
        """
        path = "/v1/datasets/" + calls.ident(name, "datasets")
        return models.Dataset.model_validate(self._c.json(Call("GET", path, repeatable=True)))

    def list(self, *, page_size: int | None = None) -> Iterator[models.Dataset]:
        """Iterates over every dataset.

        Args:
            page_size: Items per request.

        Yields:
            Datasets.
        """
        factory = calls.lister("/v1/datasets", None, page_size)
        for item in _pages(self._c, factory, "datasets"):
            yield models.Dataset.model_validate(item)

    def update(self, name: str, **changes: Any) -> models.Dataset:
        """Updates a dataset's fields (``display_name``, ``fields``, ``key_field``, ``source_uri``).

        Args:
            name: Dataset name.
            **changes: Fields to change.

        Returns:
            The dataset.
        """
        path = "/v1/datasets/" + calls.ident(name, "datasets")
        return models.Dataset.model_validate(self._c.json(Call("PATCH", path, json=changes)))

    def delete(self, name: str) -> None:
        """Deletes a dataset and its records.

        Args:
            name: Dataset name.
        """
        self._c.json(Call("DELETE", "/v1/datasets/" + calls.ident(name, "datasets")))


class Imports(_Resource):
    """Imports of files into datasets (``/v1/datasets/{id}/imports``)."""

    def create(
        self,
        dataset: str,
        file: Upload | None = None,
        *,
        format: str | None = None,
        source_uri: str | None = None,
        request_id: str | None = None,
        gzip: bool = False,
    ) -> Operation:
        """Starts an import; the file is streamed (never read whole into memory).

        Args:
            dataset: Dataset name.
            file: Path, binary file object or bytes (a file object is re-read from its start
                position when a retry is needed; an unseekable one is not retried once sent).
            format: ``csv``, ``jsonl`` or ``auto``.
            source_uri: Instead of a file: an http(s) URL for the worker to fetch.
            request_id: AIP-155 idempotency key (generated when not given).
            gzip: The file is gzip-compressed.

        Returns:
            The import's operation.
        """
        call = calls.imports_create(
            dataset, file, format=format, source_uri=source_uri, request_id=request_id, gzip=gzip
        )
        return self._op(self._c.json(call))

    def get(self, name: str, *, dataset: str | None = None) -> models.Import:
        """Gets an import.

        Args:
            name: ``datasets/<d>/imports/<i>``, or the import id with ``dataset``.
            dataset: Dataset name when ``name`` is an id.

        Returns:
            The import.
        """
        did, iid = calls.nested(name, dataset, "datasets", "imports")
        call = Call("GET", f"/v1/datasets/{did}/imports/{iid}", repeatable=True)
        return models.Import.model_validate(self._c.json(call))

    def list(self, dataset: str, *, page_size: int | None = None) -> Iterator[models.Import]:
        """Iterates over a dataset's imports.

        Args:
            dataset: Dataset name.
            page_size: Items per request.

        Yields:
            Imports.
        """
        path = f"/v1/datasets/{calls.ident(dataset, 'datasets')}/imports"
        factory = calls.lister(path, None, page_size)
        for item in _pages(self._c, factory, "imports"):
            yield models.Import.model_validate(item)

    def errors(self, name: str, *, dataset: str | None = None) -> builtins.list[models.RowError]:
        """The first row errors of an import (the API's listing cap applies; see
        :meth:`download_errors` for all of them).

        Args:
            name: Import name (or id with ``dataset``).
            dataset: Dataset name when ``name`` is an id.

        Returns:
            Row errors in line order.
        """
        did, iid = calls.nested(name, dataset, "datasets", "imports")
        call = Call("GET", f"/v1/datasets/{did}/imports/{iid}/errors", repeatable=True)
        body = self._c.json(call)
        return [models.RowError.model_validate(e) for e in body.get("errors") or []]

    def download_errors(
        self, name: str, dest: str | os.PathLike[str] | IO[bytes], *, dataset: str | None = None
    ) -> int:
        """Streams every row error of an import, as CSV, to a file.

        Args:
            name: Import name (or id with ``dataset``).
            dest: Path or binary file object to write to.
            dataset: Dataset name when ``name`` is an id.

        Returns:
            Bytes written.
        """
        did, iid = calls.nested(name, dataset, "datasets", "imports")
        call = Call(
            "GET",
            f"/v1/datasets/{did}/imports/{iid}/errors",
            headers={"accept": "text/csv"},
            repeatable=True,
            accept_json=False,
        )
        return self._c.download(call, dest)


class Records(_Resource):
    """Records of a dataset (``/v1/datasets/{id}/records``)."""

    def list(
        self, dataset: str, filter: str | None = None, *, page_size: int | None = None
    ) -> Iterator[models.Record]:
        """Iterates over a dataset's records, filtered (AIP-160) by its typed fields.

        Args:
            dataset: Dataset name.
            filter: E.g. ``amount > 100 AND country = "DE"``.
            page_size: Items per request.

        Yields:
            Records.
        """
        path = f"/v1/datasets/{calls.ident(dataset, 'datasets')}/records"
        factory = calls.lister(path, filter, page_size)
        for item in _pages(self._c, factory, "records"):
            yield models.Record.model_validate(item)

    def page(
        self,
        dataset: str,
        filter: str | None = None,
        *,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> models.Page[models.Record]:
        """One page of a dataset's records.

        Args:
            dataset: Dataset name.
            filter: AIP-160 filter.
            page_size: Items per page.
            page_token: ``next_page_token`` of the previous page.

        Returns:
            The page.
        """
        path = f"/v1/datasets/{calls.ident(dataset, 'datasets')}/records"
        body = self._c.json(calls.lister(path, filter, page_size)(page_token))
        return models.Page[models.Record](
            items=[models.Record.model_validate(r) for r in body.get("records") or []],
            next_page_token=body.get("next_page_token") or "",
        )

    def get(self, dataset: str, key: str) -> models.Record:
        """Gets one record by key.

        Args:
            dataset: Dataset name.
            key: The record's key value.

        Returns:
            The record.
        """
        path = f"/v1/datasets/{calls.ident(dataset, 'datasets')}/records/{calls.seg(key)}"
        return models.Record.model_validate(self._c.json(Call("GET", path, repeatable=True)))


class Endpoints(_Resource):
    """Webhook endpoints (``/v1/endpoints``)."""

    def create(
        self,
        url: str,
        event_types: list[str],
        *,
        description: str | None = None,
        enabled: bool | None = None,
        rate_limit: float | None = None,
        request_id: str | None = None,
    ) -> models.Endpoint:
        """Creates an endpoint; the answer carries its signing ``secret`` (shown on create
        only). Retried safely with one request_id (generated when not given): a retry after a
        lost answer gets the same endpoint and its secret.

        Args:
            url: Where deliveries are POSTed.
            event_types: Event types it receives (``*`` for all).
            description: Free text.
            enabled: Whether deliveries are sent.
            rate_limit: Deliveries per second, at most.
            request_id: AIP-155 idempotency key.

        Returns:
            The endpoint with its secret.
        """
        call = calls.endpoints_create(
            url, event_types, description, enabled, rate_limit, request_id
        )
        return models.Endpoint.model_validate(self._c.json(call))

    def get(self, name: str) -> models.Endpoint:
        """Gets an endpoint (with its breaker state).

        Args:
            name: ``endpoints/<id>`` or ``<id>``.

        Returns:
            The endpoint.
        """
        path = "/v1/endpoints/" + calls.ident(name, "endpoints")
        return models.Endpoint.model_validate(self._c.json(Call("GET", path, repeatable=True)))

    def list(self, *, page_size: int | None = None) -> Iterator[models.Endpoint]:
        """Iterates over every endpoint.

        Args:
            page_size: Items per request.

        Yields:
            Endpoints.
        """
        factory = calls.lister("/v1/endpoints", None, page_size)
        for item in _pages(self._c, factory, "endpoints"):
            yield models.Endpoint.model_validate(item)

    def update(self, name: str, **changes: Any) -> models.Endpoint:
        """Updates an endpoint (``url``, ``description``, ``event_types``, ``enabled``, ``rate_limit``).

        Args:
            name: Endpoint name.
            **changes: Fields to change.

        Returns:
            The endpoint.
        """
        path = "/v1/endpoints/" + calls.ident(name, "endpoints")
        return models.Endpoint.model_validate(self._c.json(Call("PATCH", path, json=changes)))

    def delete(self, name: str) -> None:
        """Deletes an endpoint.

        Args:
            name: Endpoint name.
        """
        self._c.json(Call("DELETE", "/v1/endpoints/" + calls.ident(name, "endpoints")))

    def rotate_secret(self, name: str) -> models.Endpoint:
        """Rotates the signing secret (the previous one stays valid for a grace period).

        Args:
            name: Endpoint name.

        Returns:
            The endpoint with its new ``secret``.
        """
        path = "/v1/endpoints/" + calls.ident(name, "endpoints") + ":rotateSecret"
        return models.Endpoint.model_validate(self._c.json(Call("POST", path)))

    def replay(
        self, name: str, since: dt.datetime | str, *, request_id: str | None = None
    ) -> Operation:
        """Re-sends the endpoint's failed deliveries since a time.

        Args:
            name: Endpoint name.
            since: Start of the window (RFC 3339 or datetime).
            request_id: AIP-155 idempotency key (generated when not given).

        Returns:
            The replay's operation.
        """
        path = "/v1/endpoints/" + calls.ident(name, "endpoints") + ":replay"
        body = {"since": calls.timestamp(since), "request_id": request_id or new_request_id()}
        return self._op(self._c.json(Call("POST", path, json=body, repeatable=True)))


class Events(_Resource):
    """Events published to webhook endpoints (``/v1/events``)."""

    def publish(
        self, type: str, data: dict[str, Any] | None = None, *, request_id: str | None = None
    ) -> models.Event:
        """Publishes an event: one delivery per subscribed endpoint. Retried safely with one
        request_id (generated when not given): a retry is the same event, delivered once.

        Args:
            type: Event type, e.g. ``order.paid``.
            data: Payload.
            request_id: AIP-155 idempotency key.

        Returns:
            The event with its delivery count.
        """
        call = calls.events_publish(type, data, request_id)
        return models.Event.model_validate(self._c.json(call))


class Deliveries(_Resource):
    """Webhook deliveries and their attempts."""

    def list(
        self, endpoint: str, filter: str | None = None, *, page_size: int | None = None
    ) -> Iterator[models.Delivery]:
        """Iterates over an endpoint's deliveries.

        Args:
            endpoint: Endpoint name.
            filter: AIP-160 filter, e.g. ``state = "DEAD"``.
            page_size: Items per request.

        Yields:
            Deliveries.
        """
        path = f"/v1/endpoints/{calls.ident(endpoint, 'endpoints')}/deliveries"
        factory = calls.lister(path, filter, page_size)
        for item in _pages(self._c, factory, "deliveries"):
            yield models.Delivery.model_validate(item)

    def page(
        self,
        endpoint: str,
        filter: str | None = None,
        *,
        page_size: int | None = None,
        page_token: str | None = None,
    ) -> models.Page[models.Delivery]:
        """One page of an endpoint's deliveries.

        Args:
            endpoint: Endpoint name.
            filter: AIP-160 filter, e.g. ``state = "DEAD"``.
            page_size: Items per page.
            page_token: ``next_page_token`` of the previous page.

        Returns:
            The page.
        """
        path = f"/v1/endpoints/{calls.ident(endpoint, 'endpoints')}/deliveries"
        body = self._c.json(calls.lister(path, filter, page_size)(page_token))
        return models.Page[models.Delivery](
            items=[models.Delivery.model_validate(d) for d in body.get("deliveries") or []],
            next_page_token=body.get("next_page_token") or "",
        )

    def get(self, name: str) -> models.Delivery:
        """Gets a delivery.

        Args:
            name: ``endpoints/<e>/deliveries/<d>`` or the delivery id.

        Returns:
            The delivery.
        """
        did = str(name).rstrip("/").rsplit("/", 1)[-1]
        path = "/v1/deliveries/" + calls.ident(did, "deliveries")
        return models.Delivery.model_validate(self._c.json(Call("GET", path, repeatable=True)))

    def retry(self, name: str) -> models.Delivery:
        """Sends a DEAD (or failed) delivery again.

        Args:
            name: Delivery name or id.

        Returns:
            The delivery, pending again.
        """
        did = str(name).rstrip("/").rsplit("/", 1)[-1]
        path = "/v1/deliveries/" + calls.ident(did, "deliveries") + ":retry"
        return models.Delivery.model_validate(self._c.json(Call("POST", path)))

    def attempts(self, name: str) -> builtins.list[models.Attempt]:
        """The HTTP attempts of a delivery.

        Args:
            name: ``endpoints/<e>/deliveries/<d>``.

        Returns:
            Attempts, oldest first.
        """
        eid, did = calls.nested(name, None, "endpoints", "deliveries")
        call = Call("GET", f"/v1/endpoints/{eid}/deliveries/{did}/attempts", repeatable=True)
        return [models.Attempt.model_validate(a) for a in self._c.json(call).get("attempts") or []]


class Schedules(_Resource):
    """Schedules that start workflows (``/v1/schedules``)."""

    def create(
        self,
        workflow: str,
        *,
        cron: str | None = None,
        interval_seconds: float | None = None,
        args: dict[str, Any] | None = None,
        time_zone: str | None = None,
        enabled: bool | None = None,
        catch_up: bool | None = None,
        display_name: str | None = None,
        request_id: str | None = None,
    ) -> models.Schedule:
        """Creates a schedule (give ``cron`` or ``interval_seconds``); retried safely with one
        request_id (generated when not given).

        Args:
            workflow: Workflow to start, e.g. ``platform.ping``.
            cron: Cron expression.
            interval_seconds: Fixed interval.
            args: Workflow arguments.
            time_zone: IANA zone of the cron expression.
            enabled: Whether it fires.
            catch_up: Fire missed runs after downtime.
            display_name: Name shown to people.
            request_id: AIP-155 idempotency key.

        Returns:
            The schedule (the first one made with ``request_id``).
        """
        fields = {
            "workflow": workflow,
            "cron": cron,
            "interval_seconds": interval_seconds,
            "args": args,
            "time_zone": time_zone,
            "enabled": enabled,
            "catch_up": catch_up,
            "display_name": display_name,
        }
        call = calls.schedules_create(fields, request_id)
        return models.Schedule.model_validate(self._c.json(call))

    def get(self, name: str) -> models.Schedule:
        """Gets a schedule.

        Args:
            name: ``schedules/<id>`` or ``<id>``.

        Returns:
            The schedule.
        """
        path = "/v1/schedules/" + calls.ident(name, "schedules")
        return models.Schedule.model_validate(self._c.json(Call("GET", path, repeatable=True)))

    def list(self, *, page_size: int | None = None) -> Iterator[models.Schedule]:
        """Iterates over every schedule.

        Args:
            page_size: Items per request.

        Yields:
            Schedules.
        """
        factory = calls.lister("/v1/schedules", None, page_size)
        for item in _pages(self._c, factory, "schedules"):
            yield models.Schedule.model_validate(item)

    def update(self, name: str, **changes: Any) -> models.Schedule:
        """Updates a schedule (e.g. ``enabled=False`` pauses it).

        Args:
            name: Schedule name.
            **changes: Fields to change.

        Returns:
            The schedule.
        """
        path = "/v1/schedules/" + calls.ident(name, "schedules")
        return models.Schedule.model_validate(self._c.json(Call("PATCH", path, json=changes)))

    def delete(self, name: str) -> None:
        """Deletes a schedule.

        Args:
            name: Schedule name.
        """
        self._c.json(Call("DELETE", "/v1/schedules/" + calls.ident(name, "schedules")))

    def run(self, name: str) -> models.ScheduleRun:
        """Fires a schedule now (a manual run).

        Args:
            name: Schedule name.

        Returns:
            The run.
        """
        path = "/v1/schedules/" + calls.ident(name, "schedules") + ":run"
        return models.ScheduleRun.model_validate(self._c.json(Call("POST", path)))

    def runs(self, name: str, *, page_size: int | None = None) -> builtins.list[models.ScheduleRun]:
        """The schedule's recent runs, newest first.

        Args:
            name: Schedule name.
            page_size: How many.

        Returns:
            Runs.
        """
        path = "/v1/schedules/" + calls.ident(name, "schedules") + "/runs"
        call = Call("GET", path, params={"page_size": page_size}, repeatable=True)
        return [models.ScheduleRun.model_validate(r) for r in self._c.json(call).get("runs") or []]


class Reports(_Resource):
    """Generated reports (``/v1/reports``)."""

    def create(
        self,
        type: str,
        period: str | dict[str, str] | None = None,
        *,
        format: str | None = None,
        request_id: str | None = None,
    ) -> Operation:
        """Requests a report.

        Args:
            type: Report type, e.g. ``endpoint_daily``.
            period: ``yesterday``, ``last_7_days``... or ``{"start_date", "end_date"}``.
            format: ``csv`` or ``json``.
            request_id: AIP-155 idempotency key (generated when not given).

        Returns:
            The report's operation.
        """
        return self._op(self._c.json(calls.reports_create(type, period, format, request_id)))

    def get(self, name: str) -> models.Report:
        """Gets a report.

        Args:
            name: ``reports/<id>`` or ``<id>``.

        Returns:
            The report.
        """
        path = "/v1/reports/" + calls.ident(name, "reports")
        return models.Report.model_validate(self._c.json(Call("GET", path, repeatable=True)))

    def list(
        self, filter: str | None = None, *, page_size: int | None = None
    ) -> Iterator[models.Report]:
        """Iterates over reports.

        Args:
            filter: AIP-160 filter.
            page_size: Items per request.

        Yields:
            Reports.
        """
        factory = calls.lister("/v1/reports", filter, page_size)
        for item in _pages(self._c, factory, "reports"):
            yield models.Report.model_validate(item)

    def download(self, name: str, dest: str | os.PathLike[str] | IO[bytes]) -> int:
        """Streams a generated report's file to ``dest``.

        Args:
            name: Report name.
            dest: Path or binary file object.

        Returns:
            Bytes written.
        """
        path = "/v1/reports/" + calls.ident(name, "reports") + ":download"
        return self._c.download(Call("GET", path, repeatable=True, accept_json=False), dest)


class System(_Resource):
    """Platform status for operators (``/v1/system``; needs an all-scopes key)."""

    def status(self) -> dict[str, Any]:
        """Queue depths, workers alive per queue, outbox backlog and age, beat leader.

        Returns:
            The status document.
        """
        body: dict[str, Any] = self._c.json(Call("GET", "/v1/system/status", repeatable=True))
        return body


class Conveyor:
    """Client of the Conveyor API (blocking). Use as a context manager or call :meth:`close`.

    Example:
        >>> with Conveyor("http://127.0.0.1:8000", api_key) as cv:  # doctest: +SKIP
        ...     op = cv.pings.create("hello").wait()

    Attributes:
        operations: Long-running operations.
        pings: Diagnostic pings.
        datasets: Datasets.
        imports: Imports into datasets.
        records: Dataset records.
        endpoints: Webhook endpoints.
        events: Events.
        deliveries: Webhook deliveries.
        schedules: Schedules.
        reports: Reports.
        system: Platform status (operators).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        max_retries: int = 4,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Creates the client.

        Args:
            base_url: API root (default ``CONVEYOR_API_URL`` or http://127.0.0.1:8000).
            api_key: API key (default ``CONVEYOR_API_KEY``).
            timeout: Seconds per request (long polls add their own wait).
            max_retries: Retries of a failed call where retrying is safe.
            retry: Full retry policy (overrides ``max_retries``).
            transport: httpx transport (tests, proxies).
            headers: Extra headers on every request.
        """
        self._core = SyncCore(
            base_url or os.environ.get("CONVEYOR_API_URL") or DEFAULT_BASE_URL,
            api_key if api_key is not None else os.environ.get("CONVEYOR_API_KEY"),
            timeout=timeout,
            retry=retry or RetryPolicy(max_retries=max_retries),
            transport=transport,
            headers=headers,
        )
        self.operations = Operations(self)
        self.pings = Pings(self)
        self.datasets = Datasets(self)
        self.imports = Imports(self)
        self.records = Records(self)
        self.endpoints = Endpoints(self)
        self.events = Events(self)
        self.deliveries = Deliveries(self)
        self.schedules = Schedules(self)
        self.reports = Reports(self)
        self.system = System(self)

    @property
    def base_url(self) -> str:
        """The API root."""
        return self._core.base_url

    def close(self) -> None:
        """Closes the connections."""
        self._core.close()

    def __enter__(self) -> Conveyor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
