"""`conveyor_beat_leader{node}` from the leader lease (1 on the leader, 0 on the other beats,
absent when no beat runs) and the beat leader on `conveyor status`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from click.testing import CliRunner

from app.cli.metrics import Exporter
from app.cli.ops import status
from tests.monitoring.scrape import samples, scrape, value


@pytest.fixture
async def exporter_url(stack, tmp_path) -> AsyncIterator[str]:
    exporter = Exporter(stack.settings, tmp_path / "metrics", timeout=3.0)
    port = exporter.serve("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}/metrics"
    await asyncio.to_thread(exporter.close)


def run_status(env: dict[str, str]) -> str:
    result = CliRunner().invoke(status, ["--timeout", "0.5"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


async def test_beat_leader_gauge_and_status_follow_the_lease(stack, clean_db, exporter_url):
    text = await scrape(exporter_url)
    assert samples(text, "conveyor_beat_leader") == []  # no beat: absent() alerts
    assert value(text, "conveyor_exporter_source_up", source="beat") == 1
    assert "Beat leader: none" in await asyncio.to_thread(run_status, stack.env)

    service = stack.app.state.container.schedules
    assert await service.acquire_leadership("h1", "beat-one@test", 30)
    assert not await service.acquire_leadership("h2", "beat-two@test", 30)
    text = await scrape(exporter_url)
    assert value(text, "conveyor_beat_leader", node="beat-one@test") == 1
    assert value(text, "conveyor_beat_leader", node="beat-two@test") == 0
    out = await asyncio.to_thread(run_status, stack.env)
    assert "Beat leader: beat-one@test (lease expires in" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if "@test" in line[:20]}
    assert rows == {"beat-one@test": "yes", "beat-two@test": "no"}

    # The leader stops cleanly: its lease and heartbeat go, the other beat takes over.
    await service.release_leadership("h1")
    assert await service.acquire_leadership("h2", "beat-two@test", 30)
    text = await scrape(exporter_url)
    assert value(text, "conveyor_beat_leader", node="beat-two@test") == 1
    assert 'node="beat-one@test"' not in text
