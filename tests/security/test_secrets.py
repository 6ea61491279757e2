"""Secrets have no public defaults: production refuses to start without the webhook secret key
and the page-token secret (one line naming the variable); development generates each once in
the data directory, so restarts still decrypt webhook secrets and accept page tokens."""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from api import pagination
from app.cli import main as conveyor
from app.config import PAGE_TOKEN_SECRET_ENV, WEBHOOK_KEY_ENV, ConfigError, load_settings
from app.main import create_app

URLS = {"database_url": "postgresql://u@127.0.0.1:1/x", "broker_url": "redis://127.0.0.1:1/0"}


@pytest.fixture(autouse=True)
def no_secret_env(monkeypatch):
    monkeypatch.delenv(PAGE_TOKEN_SECRET_ENV, raising=False)
    monkeypatch.delenv(WEBHOOK_KEY_ENV, raising=False)


def test_production_refuses_to_start_without_each_secret(monkeypatch, tmp_path):
    prod = load_settings(env="prod", data_dir=str(tmp_path), **URLS)
    with pytest.raises(ConfigError, match=f"^{WEBHOOK_KEY_ENV}: is not set"):
        prod.require_secrets()
    with pytest.raises(ConfigError, match=WEBHOOK_KEY_ENV):
        create_app(prod)
    with_key = load_settings(
        env="prod", data_dir=str(tmp_path), webhooks={"secret_encryption_key": "k" * 40}, **URLS
    )
    with pytest.raises(ConfigError, match=f"^{PAGE_TOKEN_SECRET_ENV}: is not set"):
        with_key.require_secrets()
    monkeypatch.setenv(PAGE_TOKEN_SECRET_ENV, "conveyor-dev-page-token-secret")
    with pytest.raises(ConfigError, match="public development value"):
        with_key.require_secrets()
    monkeypatch.setenv(PAGE_TOKEN_SECRET_ENV, "p" * 40)
    with_key.require_secrets()
    assert os.listdir(tmp_path) == []  # production never generates one


def test_conveyor_api_in_production_stops_with_one_line_naming_the_variable(tmp_path):
    env = {
        "CONVEYOR_ENV": "prod",
        "CONVEYOR_DATA_DIR": str(tmp_path),
        "CONVEYOR_DATABASE_URL": URLS["database_url"],
        "CONVEYOR_BROKER_URL": URLS["broker_url"],
    }
    result = CliRunner().invoke(conveyor, ["api"], env=env)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and WEBHOOK_KEY_ENV in lines[0], result.stderr


async def test_development_generates_each_secret_once_and_keeps_it(settings, tmp_path, api_key):
    dev = settings.model_copy(
        update={
            "env": "dev",
            "data_dir": str(tmp_path),
            "webhooks": settings.webhooks.model_copy(
                update={"secret_encryption_key": SecretStr("")}
            ),
        }
    )
    key = dev.webhook_secret_key()
    secret = dev.page_token_secret()
    assert len(key) == 64 and len(secret) == 64 and key != secret
    assert sorted(os.listdir(tmp_path)) == ["page-token-secret", "webhook-secret-key"]
    mode = stat.S_IMODE((tmp_path / "webhook-secret-key").stat().st_mode)
    assert mode == 0o600
    # A restart (new settings, same data directory) reads the same values.
    again = dev.model_copy()
    assert again.webhook_secret_key() == key and again.page_token_secret() == secret
    other = dev.model_copy(update={"data_dir": str(tmp_path / "other")})
    assert other.webhook_secret_key() != key

    # A page token from one API start is accepted by the next one.
    import httpx

    async def list_page(token: str | None = None) -> httpx.Response:
        app = create_app(dev)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                params = {"page_size": 1, **({"page_token": token} if token else {})}
                return await http.get(
                    "/v1/schedules", params=params, headers={"authorization": f"Bearer {api_key}"}
                )
        finally:
            await app.state.container.registry.dispose()

    first = await list_page()
    token = first.json()["next_page_token"]
    assert token
    pagination.use_fallback_secret("a different process's random key")
    second = await list_page(token)
    assert second.status_code == 200, second.text
