"""The docs build fails on a public name without a docstring (docs/hooks/docstrings.py)."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _hook():
    spec = importlib.util.spec_from_file_location(
        "docstrings_hook", ROOT / "docs" / "hooks" / "docstrings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_in_the_code_has_a_docstring():
    assert _hook().missing_docstrings(ROOT) == []


def test_an_undocumented_public_function_is_reported(tmp_path):
    pkg = tmp_path / "domains"
    pkg.mkdir()
    (pkg / "thing.py").write_text(
        '"""A module."""\n\n\ndef exposed():\n    return 1\n\n\ndef _hidden():\n    return 2\n'
    )
    assert _hook().missing_docstrings(tmp_path) == ["domains/thing.py:4 exposed"]
