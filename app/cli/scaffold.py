"""``conveyor new-domain NAME``: generates a domain skeleton and lists it in the app.

The skeleton follows the platform domain's shape with one example resource, items (a record with
a ``title`` owned by the caller's tenant, created through an operation whose task
``NAME.process_item`` marks it processed):

- ``domains/NAME/`` (model, errors, events, tables, repository, unit of work, service),
- ``app/wiring/NAME.py``: ``MODULE = DomainModule(...)``, everything the composition root plugs
  in (tables, unit of work, services, routers, task modules, subscriptions, workflows),
- ``api/v1/NAME.py`` (``POST /v1/NAME/items`` -> Operation, ``GET /v1/NAME/items/{id}``, scopes
  ``NAME:write`` / ``NAME:read``),
- ``tasks/NAME.py``, ``app/migrations/versions/NAME/NAME_0001_baseline.py``,
- ``tests/service/NAME/`` and ``tests/api/NAME/``.

Then it adds one line, the new wiring module, to the one list of domains: ``MODULES`` in
``app/wiring/__init__.py``. Everything else that lists domains derives from it (the import-linter
contract "domains never import each other" matches ``domains.*``).

Every check and edit is computed before anything is written: a bad name or a missing anchor
leaves the tree untouched. A second run for the same name is refused ("domain exists").
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import importlib.resources
import keyword
import pathlib
import re
import shutil
import string
import subprocess
import sys
from collections.abc import Callable

import pydantic


def _template(file_name: str) -> str:
    """Reads a template file of ``app/cli/scaffold_templates/``, shipped as package data."""
    return (
        importlib.resources.files(__package__ or "app.cli")
        .joinpath("scaffold_templates", file_name)
        .read_text(encoding="utf-8")
    )


# Each template is rendered with :class:`string.Template`: ``${name}`` is the domain (lower snake
# case), ``${Name}`` its CamelCase form, ``${date}`` today's date. Keys are the paths of the files
# to create, relative to the project root, with the same placeholders.
TEMPLATES: dict[str, str] = {
    "domains/${name}/__init__.py": _template("init.py.tmpl"),
    "domains/${name}/model.py": _template("model.py.tmpl"),
    "domains/${name}/errors.py": _template("errors.py.tmpl"),
    "domains/${name}/events.py": _template("events.py.tmpl"),
    "domains/${name}/tables.py": _template("tables.py.tmpl"),
    "domains/${name}/repository.py": _template("repository.py.tmpl"),
    "domains/${name}/unit_of_work.py": _template("unit_of_work.py.tmpl"),
    "domains/${name}/service.py": _template("service.py.tmpl"),
    "app/wiring/${name}.py": _template("wiring.py.tmpl"),
    "api/v1/${name}.py": _template("router.py.tmpl"),
    "tasks/${name}.py": _template("tasks.py.tmpl"),
    "app/migrations/versions/${name}/${name}_0001_baseline.py": _template("migration.py.tmpl"),
    "tests/service/${name}/__init__.py": "",
    "tests/service/${name}/test_${name}_service.py": _template("service_test.py.tmpl"),
    "tests/api/${name}/__init__.py": "",
    "tests/api/${name}/test_${name}_api.py": _template("api_test.py.tmpl"),
}
"""Path template -> file template (from ``app/cli/scaffold_templates/``), in creation order."""

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
MAX_NAME_LENGTH = 24
"""Alembic's ``version_num`` is ``varchar(32)`` and holds ``NAME_0001``."""
LINE_LENGTH = 100
WIRING_PACKAGE = "app.wiring"
WIRING_INIT = "app/wiring/__init__.py"
"""Holds ``MODULES``, the one list of domains."""
RESERVED_NAMES = frozenset(
    {
        # Packages and modules the generated files would shadow or collide with.
        "api",
        "app",
        "domains",
        "tasks",
        "tests",
        "monitoring",
        "shared",
        "operations",
        "base",
        "runtime",
        "schemas",
        "deps",
        "auth",
        "errors",
        "pagination",
        "middleware",
        "support",
        "wiring",
        "workflows",
        # PostgreSQL schemas.
        "public",
        "information_schema",
    }
)
"""Names refused besides keywords, ``pg_*`` and what the project already has (domains,
container attributes and services, pydantic model attributes)."""

Echo = Callable[[str], None]


class ScaffoldError(Exception):
    """The domain cannot be generated; nothing was written.

    Attributes:
        exit_code: 2 for a bad name or root (usage error), 1 when a listing cannot be edited.
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        """Creates the error.

        Args:
            message: One line saying what is wrong and what to do.
            exit_code: Process exit code for the CLI.
        """
        super().__init__(message)
        self.exit_code = exit_code


class AnchorError(ScaffoldError):
    """A wiring file no longer has the code the generator edits; edit it by hand."""

    def __init__(self, path: str, what: str) -> None:
        """Creates the error.

        Args:
            path: The file, relative to the root.
            what: The anchor that was not found.
        """
        super().__init__(
            f"{path}: cannot find {what}; the file changed shape — add the wiring by hand"
            " (see the platform domain) or update app/cli/scaffold.py",
            exit_code=1,
        )


@dataclasses.dataclass(frozen=True)
class ScaffoldResult:
    """What :func:`new_domain` did.

    Attributes:
        name: The domain.
        created: Files created, relative to the root.
        edits: ``(file, description)`` of each wiring edit.
    """

    name: str
    created: list[str]
    edits: list[tuple[str, str]]


def camel_case(name: str) -> str:
    """Returns the CamelCase form of a snake case name (``stock_levels`` -> ``StockLevels``).

    Args:
        name: Lower snake case name.

    Returns:
        The CamelCase name.
    """
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


# ----------------------------------------------------------------------------- validation


def _read(root: pathlib.Path, rel: str) -> str:
    path = root / rel
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScaffoldError(
            f"{path} not found: --root must be a Conveyor project root", exit_code=2
        ) from None


def existing_domains(root: pathlib.Path) -> set[str]:
    """Returns the domains of the project at ``root``: ``MODULES`` and ``domains/*`` packages.

    Args:
        root: Project root.

    Returns:
        Domain names (including the ``shared`` and ``operations`` kernel packages).
    """
    found = {
        path.rpartition(".")[2]
        for path in _literal_strings(_read(root, WIRING_INIT), "MODULES", WIRING_INIT)
    }
    domains_dir = root / "domains"
    if domains_dir.is_dir():
        found.update(p.name for p in domains_dir.iterdir() if (p / "__init__.py").exists())
    return found


def _class_attributes(text: str, class_name: str) -> set[str]:
    """Names a class defines: annotated fields, ``self.x`` assignments and methods."""
    names: set[str] = set()
    cls = _class(ast.parse(text), class_name)
    for node in ast.walk(cls) if cls is not None else ():
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and isinstance(node.ctx, ast.Store)
        ):
            names.add(node.attr)
    return names


def _service_names(root: pathlib.Path) -> dict[str, set[str]]:
    """Fields of each wiring module's ``*Services`` dataclasses (container attributes)."""
    found: dict[str, set[str]] = {}
    for path in sorted((root / "app" / "wiring").glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue  # a file being edited by hand: its services show up once it parses
        found[f"app/wiring/{path.name}"] = {
            node.target.id
            for cls in tree.body
            if isinstance(cls, ast.ClassDef) and cls.name.endswith("Services")
            for node in cls.body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        }
    return found


def validate_name(name: str, root: pathlib.Path) -> None:
    """Checks that ``name`` can become a new domain of the project at ``root``.

    Args:
        name: Proposed domain name.
        root: Project root.

    Raises:
        ScaffoldError: Saying why not (exit code 2).
    """
    if not NAME_PATTERN.match(name):
        raise ScaffoldError(
            f"invalid domain name {name!r}: use lower snake case (a-z, 0-9 and single"
            " underscores, starting with a letter), e.g. 'inventory' or 'stock_levels'"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ScaffoldError(
            f"invalid domain name {name!r}: at most {MAX_NAME_LENGTH} characters (it names a"
            " schema, a queue, tables and the Alembic revision id)"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ScaffoldError(f"invalid domain name {name!r}: it is a Python keyword")
    if name in RESERVED_NAMES or name.startswith("pg_"):
        raise ScaffoldError(
            f"invalid domain name {name!r}: reserved (it would collide with an existing module,"
            " attribute or PostgreSQL schema)"
        )
    if name in existing_domains(root):
        raise ScaffoldError(
            f"domain {name!r} exists (in {WIRING_INIT} MODULES or domains/{name}/); choose"
            " another name"
        )
    if name.startswith("model_") or hasattr(pydantic.BaseModel, name):
        # settings.db.NAME holds the domain's database overrides (CONVEYOR_DB__NAME__URL).
        raise ScaffoldError(
            f"invalid domain name {name!r}: it would shadow a pydantic attribute of"
            " app/config/__init__.py DomainDatabases"
        )
    for where, services in _service_names(root).items():
        if name in services:
            raise ScaffoldError(
                f"invalid domain name {name!r}: {where} already has a service of that name"
                " (each service is a container attribute: names must be unique)"
            )
    # The domain's service becomes the container attribute NAME.
    if name in _class_attributes(_read(root, "app/container.py"), "Container"):
        raise ScaffoldError(
            f"invalid domain name {name!r}: app/container.py Container already has an attribute"
            " of that name"
        )
    for rel in _render_paths(name):
        if (root / rel).exists():
            raise ScaffoldError(f"domain {name!r} exists in part: {rel} is already there")


def _render_paths(name: str) -> list[str]:
    return [string.Template(p).substitute(name=name) for p in TEMPLATES]


# ------------------------------------------------------------------------------ rendering

_FIRST_PARTY = re.compile(r"^from (api|app|domains|monitoring|tasks|tests)(\.\S+)? import [^(]+$")


def _import_key(line: str) -> tuple[str, str]:
    match = re.match(r"from (\S+) import \(?\s*(.*)$", line.strip())
    if match is None:
        return line.strip().lower(), ""
    return match.group(1).lower(), match.group(2)


def sort_first_party_imports(text: str) -> str:
    """Sorts each run of single-line first-party ``from`` imports (isort order), since a
    template's imports move around with the domain name.

    Args:
        text: Python source.

    Returns:
        The source with sorted runs.
    """
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if _FIRST_PARTY.match(lines[i]):
            j = i
            while j < len(lines) and _FIRST_PARTY.match(lines[j]):
                j += 1
            lines[i:j] = sorted(lines[i:j], key=_import_key)
            i = j
        else:
            i += 1
    return "\n".join(lines)


def render_files(name: str, *, date: dt.date | None = None) -> dict[str, str]:
    """Renders the generated files of domain ``name``.

    Args:
        name: The domain.
        date: Creation date written in the migration (default: today).

    Returns:
        Path relative to the root -> content.
    """
    values = {
        "name": name,
        "Name": camel_case(name),
        "date": (date or dt.date.today()).isoformat(),
    }
    files = {}
    for path, template in TEMPLATES.items():
        content = string.Template(template).substitute(values)
        files[string.Template(path).substitute(values)] = sort_first_party_imports(content)
    return files


# --------------------------------------------------------------------------- source edits


def _offsets(text: str) -> list[int]:
    """Start offset (in characters) of each line, 1-based via index ``lineno - 1``."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _pos(text: str, starts: list[int], lineno: int, col: int) -> int:
    # ast columns are UTF-8 byte offsets.
    line = text[starts[lineno - 1] : starts[lineno]]
    return starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8"))


def _segment(text: str, starts: list[int], node: ast.expr | ast.keyword) -> tuple[int, int]:
    end_lineno = node.end_lineno if node.end_lineno is not None else node.lineno
    end_col = node.end_col_offset if node.end_col_offset is not None else node.col_offset
    return (
        _pos(text, starts, node.lineno, node.col_offset),
        _pos(text, starts, end_lineno, end_col),
    )


def _find_assignment(tree: ast.Module, target: str) -> ast.Assign | ast.AnnAssign | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == target for t in node.targets
        ):
            return node
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == target
        ):
            return node
    return None


def _literal_strings(text: str, target: str, path: str) -> list[str]:
    node = _find_assignment(ast.parse(text), target)
    if node is None or node.value is None:
        raise AnchorError(path, f"the assignment `{target} = ...`")
    try:
        value = ast.literal_eval(node.value)
    except ValueError:
        raise AnchorError(path, f"a literal tuple or list in `{target} = ...`") from None
    return [v for v in value if isinstance(v, str)]


def _render_bracketed(
    items: list[str],
    *,
    opening: str,
    closing: str,
    head: str,
    tail: str,
    indent: str,
    magic_comma: bool,
    hug: bool,
    single_tuple: bool = False,
) -> str:
    """Lays out ``opening items closing`` the way ``ruff format`` does.

    Args:
        items: Source of each element.
        opening: Opening bracket.
        closing: Closing bracket.
        head: Text on the first line before the bracket.
        tail: Text on the last line after the bracket.
        indent: Indentation of the statement.
        magic_comma: The original had a trailing comma (keep one element per line).
        hug: Calls may put all elements on one indented line; literals may not.
        single_tuple: A one-element tuple needs its trailing comma.

    Returns:
        The text replacing the bracketed expression (without ``head``/``tail``).
    """
    flat = ", ".join(items) + ("," if single_tuple else "")
    if not magic_comma and len(head) + len(opening) + len(flat) + len(closing) + len(tail) <= (
        LINE_LENGTH
    ):
        return f"{opening}{flat}{closing}"
    inner = indent + "    "
    if hug and not magic_comma and len(inner) + len(flat) <= LINE_LENGTH:
        return f"{opening}\n{inner}{flat}\n{indent}{closing}"
    body = "".join(f"{inner}{item},\n" for item in items)
    return f"{opening}\n{body}{indent}{closing}"


def append_to_literal(text: str, target: str, element: str, path: str) -> str:
    """Appends ``element`` to the list, tuple or dict assigned to module-level ``target``.

    Args:
        text: Python source.
        target: Variable name.
        element: Source of the new element (``"key": value`` for a dict).
        path: File name for errors.

    Returns:
        The edited source.

    Raises:
        AnchorError: If there is no such literal.
    """
    tree = ast.parse(text)
    node = _find_assignment(tree, target)
    value = node.value if node is not None else None
    if not isinstance(value, ast.List | ast.Tuple | ast.Dict):
        raise AnchorError(path, f"the list, tuple or dict literal `{target} = ...`")
    starts = _offsets(text)
    start, end = _segment(text, starts, value)
    source = text[start:end]
    if isinstance(value, ast.Dict):
        items = []
        for key, val in zip(value.keys, value.values, strict=True):
            if key is None:
                raise AnchorError(path, f"a plain dict literal in `{target} = ...`")
            k0, k1 = _segment(text, starts, key)
            v0, v1 = _segment(text, starts, val)
            items.append(f"{text[k0:k1]}: {text[v0:v1]}")
        opening, closing = "{", "}"
    else:
        items = [text[a:b] for a, b in (_segment(text, starts, e) for e in value.elts)]
        opening, closing = ("(", ")") if isinstance(value, ast.Tuple) else ("[", "]")
    if not (source.startswith(opening) and source.endswith(closing)):
        raise AnchorError(path, f"a bracketed literal in `{target} = ...`")
    if "#" in source:
        raise AnchorError(path, f"a literal without comments in `{target} = ...`")
    items.append(element)
    line_start = starts[value.lineno - 1]
    head = text[line_start:start]
    line_end = text.find("\n", end)
    tail = text[end : len(text) if line_end < 0 else line_end]
    indent = re.match(r"\s*", head).group(0)  # type: ignore[union-attr]
    single = isinstance(value, ast.Tuple) and len(items) == 2  # ("a",): not a magic comma
    magic = "\n" in source or (source[:-1].rstrip().endswith(",") and not single)
    rendered = _render_bracketed(
        items,
        opening=opening,
        closing=closing,
        head=head,
        tail=tail,
        indent=indent,
        magic_comma=magic,
        hug=False,
    )
    return text[:start] + rendered + text[end:]


def _class(tree: ast.Module, name: str) -> ast.ClassDef | None:
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


# --------------------------------------------------------------------------------- wiring


def plan_wiring(root: pathlib.Path, name: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Computes the edits that list the new domain (nothing is written).

    Everything about the domain (tables, unit of work, services, tasks, routers, workflows) is
    in its generated wiring module ``app/wiring/NAME.py``; ``MODULES`` only lists it.

    Args:
        root: Project root.
        name: The new domain.

    Returns:
        ``(new contents by path, [(path, description)])``.

    Raises:
        AnchorError: If a file lacks the code an edit is anchored on.
    """
    contents: dict[str, str] = {}
    edits: list[tuple[str, str]] = []

    def edit(path: str, description: str, change: Callable[[str], str]) -> None:
        before = contents.get(path) or _read(root, path)
        contents[path] = change(before)
        edits.append((path, description))

    module = f"{WIRING_PACKAGE}.{name}"
    edit(
        WIRING_INIT,
        f'MODULES += "{module}"',
        lambda t: append_to_literal(t, "MODULES", f'"{module}"', WIRING_INIT),
    )
    for path, text in contents.items():
        if path.endswith(".py"):
            try:
                ast.parse(text)
            except SyntaxError as exc:  # pragma: no cover - a bug in an edit
                raise AnchorError(path, f"valid Python after the edits ({exc})") from None
    return contents, edits


def _ruff() -> list[str] | None:
    exe = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or shutil.which(
        "ruff"
    )
    return [exe] if exe else None


def new_domain(
    name: str, root: pathlib.Path | str = ".", *, echo: Echo = print, format_code: bool = True
) -> ScaffoldResult:
    """Generates domain ``name`` under ``root`` and lists it in ``MODULES``.

    Args:
        name: Lower snake case domain name.
        root: Project root (holding ``pyproject.toml``).
        echo: Where progress lines go.
        format_code: Run ``ruff format`` on the generated files when ruff is installed.

    Returns:
        What was created and edited.

    Raises:
        ScaffoldError: On a bad name or root, or a domain that exists (nothing written).
        AnchorError: If a wiring file changed shape (nothing written).
    """
    root = pathlib.Path(root).resolve()
    if not (root / "pyproject.toml").is_file() or not (root / WIRING_INIT).is_file():
        raise ScaffoldError(
            f"{root} is not a Conveyor project root (no pyproject.toml and {WIRING_INIT});"
            " run from the project root or pass --root"
        )
    validate_name(name, root)
    files = render_files(name)
    wiring, edits = plan_wiring(root, name)

    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        echo(f"  create  {rel}")
    for rel, content in wiring.items():
        (root / rel).write_text(content, encoding="utf-8")
    for rel, description in edits:
        echo(f"  edit    {rel}: {description}")

    ruff = _ruff() if format_code else None
    if ruff is not None:
        py_files = [rel for rel in files if rel.endswith(".py")]
        for args in (["check", "--select", "I", "--fix", "--quiet"], ["format", "--quiet"]):
            subprocess.run([*ruff, *args, *py_files], cwd=root, check=False, capture_output=True)
        echo("  format  generated files (ruff)")

    echo(
        f"\ndomain {name!r} created. Next:\n"
        f"  conveyor migrate                      # creates schema {name!r}\n"
        f"  conveyor worker --queues {name}        # a worker for queue {name!r}\n"
        f"  pytest tests/service/{name} tests/api/{name}\n"
        f"  add a worker-{name} service to docker-compose.yml, then replace the example"
        " items with the domain's resources\n"
        f"  services, task modules, routers, event subscriptions, workflows and system schedules"
        f" go in app/wiring/{name}.py MODULE (API scopes: {name}:read, {name}:write)"
    )
    return ScaffoldResult(name=name, created=list(files), edits=edits)
