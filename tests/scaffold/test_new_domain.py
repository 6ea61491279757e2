"""``conveyor new-domain``: the generated domain passes lint, types, contracts and its own tests.

Everything is generated into a copy of the project (never into the working tree); the copy's
own conftest provides the real PostgreSQL and Redis for its tests.

Other engineers edit the tree while this runs, and their half-done work (a wiring module naming
a task module not written yet, say) would break the copy's imports. So the copy is the last
commit (``git archive HEAD``) with the working-tree version of the generator's own files on top
(:data:`OWN`): it tests this generator against a consistent project. Set
``CONVEYOR_SCAFFOLD_TEST_TREE=worktree`` to copy the whole working tree instead (every file git
knows, as it is now). Either way the lint and type checks look only at the generated files and
the files the generator edits.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
from click.testing import CliRunner

from app.cli import main, scaffold

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
CACHES = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".import_linter_cache"}
WIRING = ["app/wiring/__init__.py"]
"""The one file the generator edits: it adds the domain to ``MODULES``."""
UNTOUCHED = [
    "app/main.py",
    "app/adapters/celery_app.py",
    "api/deps.py",
    "app/config/__init__.py",
    "app/container.py",
]
"""Files that derive the domains from ``app.wiring.MODULES``: the generator leaves them alone."""


MIGRATION_TESTS = "tests/integration/test_migrations.py"
OWN = ["app/cli/scaffold.py", "app/cli/scaffold_templates", "tests/scaffold"]
"""The generator, its templates and this test: always copied from the working tree."""


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True).stdout


def worktree_files(under: list[str] | None = None) -> list[str]:
    """Files of the working tree git knows: tracked (as they are now) and new, not ignored."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", *(under or []))
    return sorted(
        {
            rel
            for rel in listed.decode().split("\0")
            if rel and not CACHES.intersection(pathlib.PurePosixPath(rel).parts)
        }
    )


def copy_files(files: list[str], dest: pathlib.Path) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(ROOT / rel, target)
        except (FileNotFoundError, IsADirectoryError):
            continue  # deleted (or turned into a directory) by someone since git listed it


def copy_project(dest: pathlib.Path) -> pathlib.Path:
    dest.mkdir(parents=True)
    if os.environ.get("CONVEYOR_SCAFFOLD_TEST_TREE") == "worktree":
        copy_files(worktree_files(), dest)
    else:
        with tarfile.open(fileobj=io.BytesIO(git("archive", "--format=tar", "HEAD"))) as archive:
            archive.extractall(dest, filter="data")
        copy_files(worktree_files(OWN), dest)
    assert (dest / "pyproject.toml").is_file()
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
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, str, dict]:
    copy = copy_project(tmp_path_factory.mktemp("scaffold") / "project")
    untouched = {rel: (copy / rel).read_text() for rel in UNTOUCHED}
    result = run(
        copy, sys.executable, "-m", "app.cli", "new-domain", "inventory", "--root", str(copy)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return copy, result.stdout, untouched


def test_new_domain_creates_the_files_and_prints_each_wiring_edit(generated):
    copy, output, untouched = generated
    for rel, content in scaffold.render_files("inventory").items():
        assert f"create  {rel}" in output
        # Identical to the raw templates: they need no ruff pass to be lint- and format-clean.
        assert (copy / rel).read_text() == content, rel
    for rel in WIRING:
        assert f"edit    {rel}:" in output
    assert "edit    pyproject.toml" not in output  # its contracts match domains.*
    assert 'MODULES += "app.wiring.inventory"' in output
    assert (copy / "domains/inventory/service.py").read_text().count("inventory.process_item")
    assert '"app.wiring.inventory"' in (copy / "app/wiring/__init__.py").read_text()
    # Tables, services, tasks and routers come from app/wiring/inventory.py, not these files.
    for rel, before in untouched.items():
        assert f"edit    {rel}:" not in output
        assert (copy / rel).read_text() == before, rel


def test_generated_wiring_plugs_the_domain_in(generated):
    copy, _, _ = generated
    probe = """
import json
from app import wiring
from app.adapters import celery_app
from app.config import load_settings
from app.main import create_app

module = wiring.modules()[-1]
# Nothing connects: engines and the broker are lazy.
settings = load_settings(
    database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none", broker_url="redis://unused"
)
app = create_app(settings)
print(json.dumps({
    "module": type(app.state.container.services_of(module)).__module__,
    "domain": module.name,
    "domains": list(wiring.DOMAINS),
    "tasks": celery_app.TASK_MODULES,
    "uow": module.unit_of_work.__name__,
    "service": type(app.state.container.inventory).__name__,
    "workflows": list(module.workflows()),
    "paths": sorted(p for p in app.openapi()["paths"] if p.startswith("/v1/inventory")),
}))
"""
    result = run(copy, sys.executable, "-c", probe, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert "tasks.inventory" in found["tasks"]
    assert found == {
        "module": "app.wiring.inventory",
        "domain": "inventory",
        "domains": ["platform", "imports", "webhooks", "reports", "inventory"],
        "tasks": found["tasks"],
        "uow": "InventoryUnitOfWork",
        "service": "InventoryService",
        "workflows": [],
        "paths": ["/v1/inventory/items", "/v1/inventory/items/{item_id}"],
    }


def test_generated_domain_passes_lint_types_contracts_and_its_own_tests(generated):
    copy, _, _ = generated
    created = list(scaffold.render_files("inventory"))
    typed = [
        "domains/inventory",
        "app/wiring/inventory.py",
        "api/v1/inventory.py",
        "tasks/inventory.py",
    ]
    checks = [
        # Scoped to what the generator wrote or edited (work in progress elsewhere is not ours).
        [tool("ruff"), "check", *created, *WIRING],
        [tool("ruff"), "format", "--check", *created, *WIRING],
        [tool("mypy"), "--strict", "--follow-imports=silent", *typed],
        [tool("lint-imports")],
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/service/inventory",
            "tests/api/inventory",
            # The migration tests about the new schema: no drift from tables.py, and its
            # revision goes up, down and up again.
            f"{MIGRATION_TESTS}::test_migrated_schema_matches_the_table_definitions",
            f"{MIGRATION_TESTS}::test_stairway_each_revision_goes_up_down_and_up_again[inventory]",
            # The generated routes are documented like every /v1 route (examples, AIP-193 errors).
            "tests/api/test_openapi.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
    ]
    for command in checks:
        result = run(copy, *command)
        assert result.returncode == 0, f"{command}:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"


def test_running_twice_is_refused_and_changes_nothing(generated):
    copy, _, _ = generated
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
        ("wiring", "reserved"),
        ("pings", "app/wiring/platform.py already has a service of that name"),
        ("registry", "app/container.py Container already has an attribute of that name"),
        ("json", "shadow a pydantic attribute"),
        ("a" * 25, "at most 24 characters"),
    ],
)
def test_bad_names_exit_2_with_a_clear_message(generated, name, message):
    copy, _, _ = generated
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
    wiring_init = root / "app/wiring/__init__.py"
    wiring_init.write_text(re.sub(r"(?m)^MODULES\b", "DOMAIN_MODULES", wiring_init.read_text()))
    before = {p: p.read_text() for p in root.rglob("*") if p.is_file()}

    with pytest.raises(scaffold.AnchorError) as info:
        scaffold.new_domain("inventory", root, echo=lambda _: None)

    assert info.value.exit_code == 1
    assert "app/wiring/__init__.py: cannot find the assignment `MODULES = ...`" in str(info.value)
    assert {p: p.read_text() for p in root.rglob("*") if p.is_file()} == before


def test_wiring_edits_keep_literals_formatted():
    text = 'X = ["a", "b"]\nY: dict[str, int] = {\n    "a": 1,\n}\n'
    text = scaffold.append_to_literal(text, "X", '"c"', "f.py")
    text = scaffold.append_to_literal(text, "Y", '"b": 2', "f.py")
    assert text == 'X = ["a", "b", "c"]\nY: dict[str, int] = {\n    "a": 1,\n    "b": 2,\n}\n'
    with pytest.raises(scaffold.AnchorError):
        scaffold.append_to_literal(text, "Z", '"c"', "f.py")


def test_longest_name_renders_lint_clean(tmp_path):
    # Each ${name} in a docstring or comment (which ruff format does not wrap) costs up to 24
    # characters: the templates must leave room for it.
    name = "abcdefghij_klmnopqrstuvw"
    assert len(name) == scaffold.MAX_NAME_LENGTH
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    files = scaffold.render_files(name)
    for rel, content in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    for command in (
        # As new_domain does (the import sort matters only here: this tree lacks the packages
        # ruff needs to tell first-party imports apart).
        [tool("ruff"), "check", "--no-cache", "--select", "I", "--fix", "--quiet", *files],
        [tool("ruff"), "format", "--no-cache", "--quiet", *files],
        [tool("ruff"), "check", "--no-cache", *files],
    ):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
