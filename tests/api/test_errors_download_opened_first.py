"""The row errors CSV picks its database and starts its query before the 200 goes out: a database
that cannot serve it gives an ordinary error response, never a 200 whose body breaks off."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from api import deps
from domains.shared.errors import Unavailable
from tests.support.imports import create_dataset, upload


class _RowErrorsUnreadable:
    """The real imports service, except that opening an import's row errors fails (as when
    neither the replica nor the primary can be reached at that moment)."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.opened = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @contextlib.asynccontextmanager
    async def row_errors(self, *args: Any, **kw: Any) -> AsyncIterator[Any]:
        self.opened += 1
        raise Unavailable("the imports primary database is unreachable", reason="TEST_OUTAGE")
        yield  # pragma: no cover


async def test_errors_csv_that_cannot_be_read_answers_503_not_a_cut_200(api_app, client):
    dataset = await create_dataset(client)
    created = await upload(client, dataset["id"], b"id,amount\nk1,1\n")
    assert created.status_code == 200, created.text
    target = created.json()["metadata"]["target"]
    failing = _RowErrorsUnreadable(api_app.state.container.imports)
    api_app.dependency_overrides[deps.imports] = lambda: failing
    try:
        response = await client.get(f"/v1/{target}/errors")
    finally:
        api_app.dependency_overrides.clear()
    assert failing.opened == 1  # the fault hit
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["status"] == "UNAVAILABLE"
