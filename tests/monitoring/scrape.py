"""Reading a Prometheus exposition in tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` (labels must match exactly), or None if absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name``."""
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def scrape_until(url: str, ok: Callable[[str], bool], timeout: float = 15) -> str:
    """Scrapes until ``ok(text)`` holds; returns the last exposition either way."""
    deadline = time.monotonic() + timeout
    text = await scrape(url)
    while not ok(text) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        text = await scrape(url)
    return text
