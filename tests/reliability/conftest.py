"""Fixtures of the fault-injection suite."""

from __future__ import annotations

import pytest

from tests.conftest import claim_redis_db
from tests.reliability.harness import System


@pytest.fixture
def make_system(service_env, tmp_path):
    systems: list[System] = []
    releases = []

    def make(*, database_url: str, broker_url: str | None = None, **kw) -> System:
        if broker_url is None:
            broker_url, release = claim_redis_db(service_env["CONVEYOR_BROKER_URL"])
            releases.append(release)
        system = System(
            service_env, tmp_path, database_url=database_url, broker_url=broker_url, **kw
        )
        systems.append(system)
        return system

    yield make
    for system in systems:
        system.stop()
    for release in releases:
        release()
