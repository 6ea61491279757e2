"""``conveyor new-domain NAME``: generates a domain skeleton and wires it into the app.

The skeleton follows the platform domain's shape with one example resource, items (a record with
a ``title`` owned by the caller's tenant, created through an operation whose task
``NAME.process_item`` marks it processed):

- ``domains/NAME/`` (model, errors, events, tables, repository, unit of work, service),
- ``app/wiring/NAME.py``: what the composition root plugs in (``DOMAIN``, ``TASK_MODULES``,
  ``SUBSCRIPTIONS``, ``uow_class()``, ``build(container)`` giving ``services["NAME"]``,
  ``routers()``, ``workflows()``),
- ``api/v1/NAME.py`` (``POST /v1/NAME/items`` -> Operation, ``GET /v1/NAME/items/{id}``, scopes
  ``NAME:write`` / ``NAME:read``),
- ``tasks/NAME.py``, ``app/migrations/versions/NAME/NAME_0001_baseline.py``,
- ``tests/service/NAME/`` and ``tests/api/NAME/``.

Then it edits the few shared files that list every domain, each edit anchored on the existing
code and printed: ``DOMAINS`` and ``DomainDatabases`` (``app/config.py``), the tables import and
``DOMAIN_TABLES`` (``app/container.py``), ``WIRING_MODULES`` (``app/wiring/__init__.py``) and the
import-linter independence contract (``pyproject.toml``). Services, task modules and routers
need no other edit: the container, the Celery app and the FastAPI app read them from the wiring
modules.

Every check and edit is computed before anything is written: a bad name or a missing anchor
leaves the tree untouched. A second run for the same name is refused ("domain exists").
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import keyword
import pathlib
import re
import shutil
import string
import subprocess
import sys
import tomllib
from collections.abc import Callable

import pydantic

from app.scaffold_templates import TEMPLATES

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
MAX_NAME_LENGTH = 24
"""Alembic's ``version_num`` is ``varchar(32)`` and holds ``NAME_0001``."""
LINE_LENGTH = 100
WIRING_PACKAGE = "app.wiring"
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
``DomainDatabases`` fields, service names of the wiring modules, pydantic model attributes)."""

Echo = Callable[[str], None]


class ScaffoldError(Exception):
    """The domain cannot be generated; nothing was written.

    Attributes:
        exit_code: 2 for a bad name or root (usage error), 1 when the wiring cannot be edited.
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
            " (see the platform domain) or update app/scaffold.py",
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
    """Returns the domains of the project at ``root``: ``DOMAINS`` and ``domains/*`` packages.

    Args:
        root: Project root.

    Returns:
        Domain names (including the ``shared`` and ``operations`` kernel packages).
    """
    found = set(_literal_strings(_read(root, "app/config.py"), "DOMAINS", "app/config.py"))
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
    """String keys of the dict literals each wiring module's ``build()`` returns, by file."""
    found: dict[str, set[str]] = {}
    for path in sorted((root / "app" / "wiring").glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue  # a file being edited by hand: its services show up once it parses
        build = next(
            (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build"), None
        )
        keys = {
            key.value
            for node in (ast.walk(build) if build is not None else ())
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict)
            for key in node.value.keys
            if isinstance(key, ast.Constant) and isinstance(key.value, str)
        }
        found[f"app/wiring/{path.name}"] = keys
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
            f"domain {name!r} exists (in app/config.py DOMAINS or domains/{name}/); choose"
            " another name"
        )
    if name.startswith("model_") or hasattr(pydantic.BaseModel, name):
        raise ScaffoldError(
            f"invalid domain name {name!r}: it would shadow a pydantic attribute of"
            " app/config.py DomainDatabases"
        )
    if name in _class_attributes(_read(root, "app/config.py"), "DomainDatabases"):
        raise ScaffoldError(
            f"invalid domain name {name!r}: app/config.py DomainDatabases already has a field"
            " of that name"
        )
    wiring_module = f"{WIRING_PACKAGE}.{name}"
    if wiring_module in _literal_strings(
        _read(root, "app/wiring/__init__.py"), "WIRING_MODULES", "app/wiring/__init__.py"
    ):
        raise ScaffoldError(
            f"domain {name!r} exists in part: app/wiring/__init__.py WIRING_MODULES lists"
            f" {wiring_module!r}"
        )
    for where, services in _service_names(root).items():
        if name in services:
            raise ScaffoldError(
                f"invalid domain name {name!r}: {where} build() already returns a service of"
                " that name (container.services keys must be unique)"
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


def _insert_lines_after(text: str, lineno: int, new_lines: list[str]) -> str:
    lines = text.splitlines(keepends=True)
    lines[lineno:lineno] = [line + "\n" for line in new_lines]
    return "".join(lines)


def add_class_field(text: str, class_name: str, field_src: str, path: str) -> str:
    """Adds an annotated field after the last annotated field of ``class_name``.

    Args:
        text: Python source.
        class_name: Module-level class.
        field_src: ``name: Type`` (with a default if the others have one).
        path: File name for errors.

    Returns:
        The edited source.

    Raises:
        AnchorError: If the class or its annotated fields are missing.
    """
    cls = _class(ast.parse(text), class_name)
    if cls is None:
        raise AnchorError(path, f"class {class_name}")
    fields = [n for n in cls.body if isinstance(n, ast.AnnAssign)]
    if not fields:
        raise AnchorError(path, f"annotated fields in class {class_name}")
    last = fields[-1]
    indent = " " * last.col_offset
    return _insert_lines_after(text, last.end_lineno or last.lineno, [indent + field_src])


def insert_import(text: str, line: str, path: str) -> str:
    """Inserts a single-line ``from X import Y`` among the imports of the same package, in
    isort order.

    Args:
        text: Python source.
        line: The import line.
        path: File name for errors.

    Returns:
        The edited source.

    Raises:
        AnchorError: If the file has no top-level import from the same package.
    """
    package = line.removeprefix("from ").split(".", 1)[0].split(" ", 1)[0]
    pattern = re.compile(rf"^from {re.escape(package)}(\.\S+)? import ")
    lines = text.splitlines(keepends=True)
    matches = [i for i, current in enumerate(lines) if pattern.match(current)]
    if not matches:
        raise AnchorError(path, f"a top-level `from {package}... import` line")
    key = _import_key(line)
    if len(line) > LINE_LENGTH:
        head, _, names = line.partition(" import ")
        line = f"{head} import (\n    {names},\n)"
    for i in matches:
        if _import_key(lines[i]) > key:
            lines.insert(i, line + "\n")
            return "".join(lines)
    last = matches[-1]
    if lines[last].rstrip().endswith("("):
        while last < len(lines) and not lines[last].startswith(")"):
            last += 1
    lines.insert(last + 1, line + "\n")
    return "".join(lines)


def add_independent_module(text: str, module: str, path: str) -> str:
    """Adds ``module`` to the import-linter independence contract listing the domains.

    Args:
        text: ``pyproject.toml``.
        module: e.g. ``domains.inventory``.
        path: File name for errors.

    Returns:
        The edited text.

    Raises:
        AnchorError: If no independence contract lists ``domains.*`` modules.
    """
    header = "[[tool.importlinter.contracts]]"
    parts = re.split(r"(?m)^(?=\[)", text)
    for index, part in enumerate(parts):
        if not part.startswith(header) or not re.search(r'(?m)^type = "independence"', part):
            continue
        match = re.search(r"(?ms)^modules = \[(.*?)\]", part)
        if match is None or '"domains.' not in match.group(1):
            continue
        if "#" in match.group(1):
            raise AnchorError(path, "a `modules = [...]` list without comments")
        modules = re.findall(r'"([^"]+)"', match.group(1))
        modules.append(module)
        items = [f'"{m}"' for m in modules]
        rendered = _render_bracketed(
            items,
            opening="[",
            closing="]",
            head="modules = ",
            tail="",
            indent="",
            magic_comma="\n" in match.group(1),
            hug=False,
        )
        parts[index] = part[: match.start()] + "modules = " + rendered + part[match.end() :]
        edited = "".join(parts)
        contracts = tomllib.loads(edited)["tool"]["importlinter"]["contracts"]
        if not any(module in c.get("modules", []) for c in contracts):  # pragma: no cover
            raise AnchorError(path, "the edited independence contract")
        return edited
    raise AnchorError(path, 'an import-linter contract with type = "independence" on domains.*')


# --------------------------------------------------------------------------------- wiring


def plan_wiring(root: pathlib.Path, name: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Computes the edits of the shared files that list every domain (nothing is written).

    Everything else about the domain (services, tasks, routers, workflows) is in its generated
    wiring module ``app/wiring/NAME.py``; the shared files only list it.

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

    config = "app/config.py"
    edit(
        config,
        f"DOMAINS += {name!r}",
        lambda t: append_to_literal(t, "DOMAINS", f'"{name}"', config),
    )
    edit(
        config,
        f"DomainDatabases.{name} (CONVEYOR_DB__{name.upper()}__URL)",
        lambda t: add_class_field(
            t, "DomainDatabases", f"{name}: DomainDatabase = DomainDatabase()", config
        ),
    )

    container = "app/container.py"
    tables_import = f"from domains.{name} import tables as {name}_tables"
    edit(
        container,
        f"import: {tables_import}",
        lambda t: insert_import(t, tables_import, container),
    )
    edit(
        container,
        f'DOMAIN_TABLES["{name}"]',
        lambda t: append_to_literal(
            t, "DOMAIN_TABLES", f'"{name}": {name}_tables.tables', container
        ),
    )

    wiring = "app/wiring/__init__.py"
    edit(
        wiring,
        f'WIRING_MODULES += "{WIRING_PACKAGE}.{name}"',
        lambda t: append_to_literal(t, "WIRING_MODULES", f'"{WIRING_PACKAGE}.{name}"', wiring),
    )

    pyproject = "pyproject.toml"
    edit(
        pyproject,
        f'import-linter independence contract += "domains.{name}"',
        lambda t: add_independent_module(t, f"domains.{name}", pyproject),
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
    """Generates domain ``name`` under ``root`` and wires it in.

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
    if not (root / "pyproject.toml").is_file() or not (root / "app" / "config.py").is_file():
        raise ScaffoldError(
            f"{root} is not a Conveyor project root (no pyproject.toml and app/config.py);"
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
        f"  services, task modules, routers, event subscriptions and workflows go in"
        f" app/wiring/{name}.py (API scopes: {name}:read, {name}:write)"
    )
    return ScaffoldResult(name=name, created=list(files), edits=edits)
