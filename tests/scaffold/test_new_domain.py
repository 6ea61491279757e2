"""``conveyor new-domain``: the generated domain passes lint, types, contracts and its own tests.

Everything is generated into a copy of the project tree (never into the working tree); the
copy's own conftest provides the real PostgreSQL and Redis for its tests.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from app import scaffold
from app.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
ROOT_EXCLUDES = {".venv", ".git", "site", ".conveyor", "conveyor.egg-info"}
CACHES = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".import_linter_cache"}
WIRING = [
    "app/config.py",
    "app/container.py",
    "app/celery_app.py",
    "app/main.py",
    "api/deps.py",
]


def copy_project(dest: pathlib.Path) -> pathlib.Path:
    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in CACHES}
        if pathlib.Path(directory).resolve() == ROOT:
            skip |= {n for n in names if n in ROOT_EXCLUDES}
        return skip

    shutil.copytree(ROOT, dest, ignore=ignore)
    assert dest.resolve() != ROOT
    return dest


def run(copy: pathlib.Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run(
        list(args), cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
    )


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, str]:
    copy = copy_project(tmp_path_factory.mktemp("scaffold") / "project")
    result = run(
        copy, sys.executable, "-m", "app.cli", "new-domain", "inventory", "--root", str(copy)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return copy, result.stdout


def test_new_domain_creates_the_files_and_prints_each_wiring_edit(generated):
    copy, output = generated
    for rel, content in scaffold.render_files("inventory").items():
        assert f"create  {rel}" in output
        # Identical to the raw templates: they need no ruff pass to be lint- and format-clean.
        assert (copy / rel).read_text() == content, rel
    for rel in [*WIRING, "pyproject.toml"]:
        assert f"edit    {rel}:" in output
    assert "DOMAINS += 'inventory'" in output
    assert (copy / "domains/inventory/service.py").read_text().count("inventory.process_item")
    assert '"domains.inventory"' in (copy / "pyproject.toml").read_text()


def test_generated_domain_passes_lint_types_contracts_and_its_own_tests(generated):
    copy, _ = generated
    touched = [*scaffold.render_files("inventory"), *WIRING]
    checks = [
        [tool("ruff"), "check", *touched],
        [tool("ruff"), "format", "--check", *touched],
        [tool("mypy"), "--strict", "domains"],
        [tool("lint-imports")],
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/service/inventory",
            "tests/api/inventory",
            "tests/integration/test_migrations.py",
            "-q",
        ],
    ]
    for command in checks:
        result = run(copy, *command)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"


def test_running_twice_is_refused_and_changes_nothing(generated):
    copy, _ = generated
    before = {rel: (copy / rel).read_text() for rel in [*WIRING, "pyproject.toml"]}
    result = CliRunner().invoke(main, ["new-domain", "inventory", "--root", str(copy)])
    assert result.exit_code == 2
    assert "domain 'inventory' exists" in result.output
    assert {rel: (copy / rel).read_text() for rel in before} == before


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("platform", "domain 'platform' exists"),
        ("Bad-Name", "use lower snake case"),
        ("class", "Python keyword"),
        ("shared", "reserved"),
        ("pings", "Container already has an attribute"),
        ("a" * 25, "at most 24 characters"),
    ],
)
def test_bad_names_exit_2_with_a_clear_message(generated, name, message):
    copy, _ = generated
    result = CliRunner().invoke(main, ["new-domain", name, "--root", str(copy)])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_root_that_is_not_a_project_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["new-domain", "inventory", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a Conveyor project root" in result.output


def test_missing_anchor_fails_clearly_and_writes_nothing(tmp_path):
    root = tmp_path / "project"
    for rel in [*WIRING, "pyproject.toml"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, root / rel)
    main_py = root / "app/main.py"
    main_py.write_text(
        "\n".join(line for line in main_py.read_text().splitlines() if "include_router" not in line)
    )
    before = {p: p.read_text() for p in root.rglob("*") if p.is_file()}

    with pytest.raises(scaffold.AnchorError) as info:
        scaffold.new_domain("inventory", root, echo=lambda _: None)

    assert info.value.exit_code == 1
    assert "app/main.py: cannot find an `app.include_router(<module>.router)` line" in str(
        info.value
    )
    assert {p: p.read_text() for p in root.rglob("*") if p.is_file()} == before


def test_wiring_edits_keep_literals_formatted():
    text = 'X = ["a", "b"]\nY: dict[str, int] = {\n    "a": 1,\n}\n'
    text = scaffold.append_to_literal(text, "X", '"c"', "f.py")
    text = scaffold.append_to_literal(text, "Y", '"b": 2', "f.py")
    assert text == 'X = ["a", "b", "c"]\nY: dict[str, int] = {\n    "a": 1,\n    "b": 2,\n}\n'
    with pytest.raises(scaffold.AnchorError):
        scaffold.append_to_literal(text, "Z", '"c"', "f.py")
