"""The documentation site builds with ``mkdocs build --strict`` (broken links, anchors or
references and docstring problems fail), from an OpenAPI document exported from the code."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _export_openapi() -> dict:
    """``conveyor openapi`` with no database or broker configured at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "openapi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_openapi_command_needs_no_database_or_broker() -> None:
    document = _export_openapi()
    assert document["info"]["title"] == "Conveyor API"
    assert "/v1/pings" in document["paths"]
    assert "/v1/operations/{operation_id}:wait" in document["paths"]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_docs_build_strict(tmp_path: pathlib.Path) -> None:
    # The HTTP API page renders docs/openapi.json: export it fresh, as `make docs-build` does.
    target = ROOT / "docs" / "openapi.json"
    partial = target.with_name(f".openapi.json.{os.getpid()}.tmp")
    partial.write_text(json.dumps(_export_openapi(), indent=2))
    os.replace(partial, target)  # atomic: a concurrent build never reads half a file
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    assert (site / "openapi.json").is_file()
    assert "load_settings" in (site / "reference" / "app" / "index.html").read_text()
    assert 'class="mermaid"' in (site / "architecture" / "index.html").read_text()
