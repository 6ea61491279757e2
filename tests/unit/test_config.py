"""Unit: settings from CONVEYOR_* variables and .env, URL normalisation, one-line errors."""

from __future__ import annotations

import os

import pytest

from app.config import ConfigError, Settings, load_settings, normalize_database_url

MAIN = "postgresql+asyncpg://u@main:5432/conveyor"
MAIN_REPLICA = "postgresql+asyncpg://u@main-replica:5432/conveyor"
IMPORTS = "postgresql+asyncpg://u@imports:5432/imports"
IMPORTS_REPLICA = "postgresql+asyncpg://u@imports-replica:5432/imports"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No CONVEYOR_* variable from the outside, and a cwd without a .env file."""
    for name in list(os.environ):
        if name.startswith("CONVEYOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------ sources


def test_variables_are_read_with_the_conveyor_prefix(monkeypatch):
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "postgresql+asyncpg://u@h:5432/db")
    monkeypatch.setenv("CONVEYOR_BROKER_URL", "redis://r:6379/0")
    monkeypatch.setenv("CONVEYOR_RELAY_BATCH_SIZE", "7")
    monkeypatch.setenv("CONVEYOR_ENV", "prod")
    monkeypatch.setenv("CONVEYOR_FLOWER_PASSWORD", "s3cret")
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://u@h:5432/db"
    assert settings.broker_url == "redis://r:6379/0"
    assert settings.relay_batch_size == 7
    assert settings.env == "prod"
    assert settings.flower_password is not None
    assert settings.flower_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_variables_without_the_prefix_are_ignored(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@elsewhere/db")
    monkeypatch.setenv("BROKER_URL", "redis://elsewhere")
    settings = load_settings()
    assert settings.database_url is None
    assert settings.broker_url is None


def test_nested_domain_url_and_replica_url_variables(monkeypatch):
    monkeypatch.setenv("CONVEYOR_DB__IMPORTS__URL", "postgresql://u@imports:5432/imports")
    monkeypatch.setenv(
        "CONVEYOR_DB__IMPORTS__REPLICA_URL", "postgresql://u@imports-replica:5432/imports"
    )
    monkeypatch.setenv("CONVEYOR_DB__REPORTS__REPLICA_URL", "postgres://u@rr:5432/reports")
    settings = load_settings()
    assert settings.db.imports.url == IMPORTS
    assert settings.db.imports.replica_url == IMPORTS_REPLICA
    assert settings.db.reports.url is None
    assert settings.db.reports.replica_url == "postgresql+asyncpg://u@rr:5432/reports"
    assert settings.db.platform.url is None


def test_dotenv_file_in_the_working_directory_is_read(isolated_env):
    (isolated_env / ".env").write_text(
        "CONVEYOR_DATABASE_URL=postgresql://u@main:5432/conveyor\n"
        "CONVEYOR_BROKER_URL=amqp://guest@rabbit//\n"
        "CONVEYOR_DB__IMPORTS__URL=postgresql://u@imports:5432/imports\n"
        "CONVEYOR_MAX_DISPATCHES=9\n"
    )
    settings = load_settings()
    assert settings.database_url == MAIN
    assert settings.broker_url == "amqp://guest@rabbit//"
    assert settings.db.imports.url == IMPORTS
    assert settings.max_dispatches == 9


def test_environment_wins_over_dotenv(isolated_env, monkeypatch):
    (isolated_env / ".env").write_text("CONVEYOR_RELAY_BATCH_SIZE=11\nCONVEYOR_ENV=dev\n")
    monkeypatch.setenv("CONVEYOR_RELAY_BATCH_SIZE", "22")
    settings = load_settings()
    assert settings.relay_batch_size == 22
    assert settings.env == "dev"


def test_overrides_win_over_environment(monkeypatch):
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "postgresql://u@env/db")
    settings = load_settings(database_url="postgresql://u@override/db")
    assert settings.database_url == "postgresql+asyncpg://u@override/db"


# ------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h:5432/db?sslmode=require",
        "postgres://u:p@h:5432/db?sslmode=require",
        "postgresql+asyncpg://u:p@h:5432/db?sslmode=require",
    ],
)
def test_postgres_urls_are_normalised_to_asyncpg(url, monkeypatch):
    assert normalize_database_url(url) == "postgresql+asyncpg://u:p@h:5432/db?sslmode=require"
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", url)
    monkeypatch.setenv("CONVEYOR_REPLICA_URL", url)
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://u:p@h:5432/db?sslmode=require"
    assert settings.replica_url == settings.database_url


def test_empty_database_url_means_unset(monkeypatch):
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "")
    assert load_settings().database_url is None


# ------------------------------------------------------------------ one-line errors


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("CONVEYOR_BROKER_URL", "http://broker:80", "redis://"),
        ("CONVEYOR_DATABASE_URL", "mysql://u@h/db", "postgresql://"),
        ("CONVEYOR_REPLICA_URL", "sqlite:///x.db", "postgresql://"),
        ("CONVEYOR_DB__IMPORTS__URL", "mysql://u@h/db", "postgresql://"),
        ("CONVEYOR_DB__REPORTS__REPLICA_URL", "mysql://u@h/db", "postgresql://"),
        ("CONVEYOR_RELAY_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("CONVEYOR_RELAY_BATCH_SIZE", "many", "integer"),
        ("CONVEYOR_RESULT_BACKEND", "mongodb://x", "redis://"),
        ("CONVEYOR_ENV", "staging", "dev"),
    ],
)
def test_bad_variable_raises_config_error_with_one_line_naming_it(
    variable, value, hint, monkeypatch
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{variable}: ")
    assert hint in message


def test_bad_value_in_dotenv_names_the_variable(isolated_env):
    (isolated_env / ".env").write_text("CONVEYOR_DB__IMPORTS__URL=mysql://u@h/db\n")
    with pytest.raises(ConfigError, match=r"^CONVEYOR_DB__IMPORTS__URL: "):
        load_settings()


def test_error_message_does_not_echo_the_password(monkeypatch):
    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "mysql://user:hunter2@h/db")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "hunter2" not in str(info.value)


def test_malformed_json_for_db_variable_raises_config_error(monkeypatch):
    monkeypatch.setenv("CONVEYOR_DB", "{not json")
    with pytest.raises(ConfigError, match=r"^CONVEYOR_DB: "):
        load_settings()


def test_a_nested_list_that_is_not_json_names_its_own_variable(monkeypatch):
    monkeypatch.setenv("CONVEYOR_WEBHOOKS__RETRY_JITTER", "0.1")  # a good neighbour
    monkeypatch.setenv("CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST", "10.0.0.5")
    with pytest.raises(ConfigError, match=r"^CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST: is not valid JSON"):
        load_settings()


def test_missing_broker_url_is_a_config_error_only_when_needed():
    settings = load_settings()
    with pytest.raises(ConfigError, match=r"^CONVEYOR_BROKER_URL: not set"):
        settings.broker()


def test_redis_broker_doubles_as_result_backend():
    assert load_settings(broker_url="redis://r/0").backend() == "redis://r/0"
    assert load_settings(broker_url="amqp://r//").backend() is None
    assert (
        load_settings(broker_url="amqp://r//", result_backend="redis://b/1").backend()
        == "redis://b/1"
    )


# ---------------------------------------------------------------- database_for


def test_every_domain_uses_the_main_url_by_default():
    settings = load_settings(database_url=MAIN)
    for domain in ("platform", "imports", "webhooks", "reports"):
        assert settings.database_for(domain) == MAIN
        assert settings.database_for(domain, "primary") == MAIN


def test_replica_falls_back_to_primary():
    settings = load_settings(database_url=MAIN)
    assert settings.database_for("reports", "replica") == MAIN


def test_shared_replica_serves_domains_on_the_main_database():
    settings = load_settings(database_url=MAIN, replica_url=MAIN_REPLICA)
    assert settings.database_for("reports", "replica") == MAIN_REPLICA
    assert settings.database_for("reports", "primary") == MAIN


def test_domain_url_override_wins_for_primary_and_replica_falls_back_to_it():
    settings = load_settings(
        database_url=MAIN, replica_url=MAIN_REPLICA, db={"imports": {"url": IMPORTS}}
    )
    assert settings.database_for("imports") == IMPORTS
    # The shared replica mirrors the main database, not the imports one.
    assert settings.database_for("imports", "replica") == IMPORTS
    assert settings.database_for("platform") == MAIN


def test_domain_replica_override_wins():
    settings = load_settings(
        database_url=MAIN,
        replica_url=MAIN_REPLICA,
        db={
            "imports": {"url": IMPORTS, "replica_url": IMPORTS_REPLICA},
            "reports": {"replica_url": "postgresql://u@rr/reports"},
        },
    )
    assert settings.database_for("imports", "replica") == IMPORTS_REPLICA
    assert settings.database_for("reports", "replica") == "postgresql+asyncpg://u@rr/reports"
    assert settings.database_for("reports", "primary") == MAIN


def test_domain_override_works_without_a_main_url():
    settings = load_settings(db={"imports": {"url": IMPORTS}})
    assert settings.database_for("imports") == IMPORTS
    with pytest.raises(ConfigError, match=r"^CONVEYOR_DATABASE_URL: not set"):
        settings.database_for("platform")


def test_settings_class_reads_the_same_variables_as_load_settings(monkeypatch):
    monkeypatch.setenv("CONVEYOR_DB__WEBHOOKS__URL", "postgres://u@wh/webhooks")
    assert Settings().database_for("webhooks") == "postgresql+asyncpg://u@wh/webhooks"
