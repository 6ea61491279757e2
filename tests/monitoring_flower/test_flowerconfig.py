"""monitoring/flowerconfig.py: the options Flower takes from it."""

from __future__ import annotations

import pathlib
import runpy

import flower.options  # noqa: F401  (defines Flower's options)
import pytest
from tornado.options import options as tornado_options

from app.config import load_settings
from monitoring import flowerconfig

CONFIG = pathlib.Path(flowerconfig.__file__)
BASE = {"database_url": "postgresql://x@127.0.0.1:9/x", "broker_url": "redis://127.0.0.1:9/0"}


def _settings(**kw: object):
    return load_settings(**BASE, **kw)


def test_credentials_become_basic_auth_as_a_list() -> None:
    # A list keeps a comma in the password from splitting it into two credentials.
    opts = flowerconfig.flower_options(
        _settings(flower_user="ops", flower_password="a,b:c"), environ={}
    )
    assert opts["basic_auth"] == ["ops:a,b:c"]
    assert opts["purge_offline_workers"] == 60
    assert {"args", "kwargs", "result"} <= set(opts["tasks_columns"].split(","))
    assert "persistent" not in opts


def test_no_credentials_refuses_unless_insecure_dev() -> None:
    with pytest.raises(SystemExit) as exc:
        flowerconfig.flower_options(_settings(), environ={})
    assert "CONVEYOR_FLOWER_USER" in str(exc.value)
    opts = flowerconfig.flower_options(_settings(), environ={"CONVEYOR_FLOWER_INSECURE_DEV": "1"})
    assert "basic_auth" not in opts


def test_persistent_state_lives_in_the_data_dir(tmp_path: pathlib.Path) -> None:
    settings = _settings(
        flower_user="ops",
        flower_password="pw",
        data_dir=str(tmp_path / "d"),
        flower_persistent=True,
    )
    opts = flowerconfig.flower_options(settings, environ={})
    assert opts["persistent"] is True
    assert opts["db"] == str(tmp_path / "d" / "flower.db")
    assert opts["state_save_interval"] > 0
    assert (tmp_path / "d").is_dir()
    off = flowerconfig.flower_options(
        settings.model_copy(update={"flower_persistent": False}), environ={}
    )
    assert "persistent" not in off


def test_executed_as_flower_does_every_option_name_is_valid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    for key, value in {
        "CONVEYOR_DATABASE_URL": BASE["database_url"],
        "CONVEYOR_BROKER_URL": BASE["broker_url"],
        "CONVEYOR_FLOWER_USER": "ops",
        "CONVEYOR_FLOWER_PASSWORD": "pw",
        "CONVEYOR_FLOWER_PERSISTENT": "1",
        "CONVEYOR_DATA_DIR": str(tmp_path),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    namespace = runpy.run_path(str(CONFIG))
    known = {name.replace("-", "_") for name in tornado_options._options}
    taken = {name for name in namespace if name in known}
    # Every global Flower would take is one we mean it to take (no helper shadows an option).
    assert taken == {
        "basic_auth",
        "purge_offline_workers",
        "tasks_columns",
        "persistent",
        "db",
        "state_save_interval",
    }
    assert namespace["basic_auth"] == ["ops:pw"]
