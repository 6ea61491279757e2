"""Input hardening, checked over the whole API so later routers are held to it too: every request
model forbids unknown fields and caps its strings; no SQL is built by string formatting."""

from __future__ import annotations

import ast
import pathlib
import re
from typing import Any

import pytest

from app.config import load_settings
from app.main import create_app

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    settings = load_settings(
        database_url="postgresql://docs@localhost/docs", broker_url="redis://localhost:1/0"
    )
    return create_app(settings).openapi()


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any] | None:
    ref = schema.get("$ref")
    if ref:
        return spec.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1])
    return schema


def _walk(spec, schema, where, seen, problems):
    resolved = _resolve(spec, schema)
    if resolved is None:
        return  # reported by test_every_schema_reference_resolves
    schema = resolved
    key = id(schema)
    if key in seen:
        return
    seen.add(key)
    for sub in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        _walk(spec, sub, where, seen, problems)
    if "items" in schema:
        _walk(spec, schema["items"], f"{where}[]", seen, problems)
    if schema.get("type") == "object" or "properties" in schema:
        if "properties" in schema and schema.get("additionalProperties") is not False:
            problems.append(f"{where}: model allows unknown fields (use extra='forbid')")
        for name, prop in schema.get("properties", {}).items():
            _walk(spec, prop, f"{where}.{name}", seen, problems)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            _walk(spec, extra, f"{where}{{}}", seen, problems)
    if schema.get("type") == "string":
        capped = (
            "maxLength" in schema
            or "enum" in schema
            or "const" in schema
            or schema.get("format") in ("date", "date-time", "time", "uuid", "binary")
        )
        if not capped:
            problems.append(f"{where}: string without maxLength")


def request_bodies(spec):
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            content = op.get("requestBody", {}).get("content", {})
            media = content.get("application/json")
            if media and "schema" in media:
                yield f"{method.upper()} {path}", media["schema"]


def test_every_request_model_forbids_unknown_fields_and_caps_strings(spec):
    problems: list[str] = []
    bodies = list(request_bodies(spec))
    assert bodies
    for where, schema in bodies:
        _walk(spec, schema, where, set(), problems)
    assert not problems, "\n".join(problems)


def test_every_schema_reference_resolves(spec):
    """A dangling $ref hides a request model from these checks (and from clients)."""
    known = set(spec.get("components", {}).get("schemas", {}))
    dangling = []

    def visit(node, where):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                if ref.rsplit("/", 1)[-1] not in known:
                    dangling.append(f"{where}: {ref}")
            for key, value in node.items():
                visit(value, where)
        elif isinstance(node, list):
            for value in node:
                visit(value, where)

    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            visit(op, f"{method.upper()} {path}")
    assert not dangling, "register these models in the OpenAPI components:\n" + "\n".join(dangling)


def test_every_path_and_query_string_parameter_is_capped(spec):
    problems = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            for param in op.get("parameters", []):
                schema = param.get("schema", {})
                options = [schema, *schema.get("anyOf", [])]
                strings = [s for s in options if s.get("type") == "string"]
                if param["in"] == "path" or param["name"] in ("filter", "page_token"):
                    # Path segments are bounded by uvicorn's request-line cap and parsed as ids;
                    # filter and page_token are capped by api.filtering and api.pagination with
                    # their own message.
                    continue
                for s in strings:
                    if not ("maxLength" in s or "enum" in s or s.get("format") == "date-time"):
                        problems.append(f"{method.upper()} {path}: {param['name']} uncapped")
    assert not problems, "\n".join(problems)


SQL_SCANNED = ("domains", "app", "api", "tasks", "monitoring")
SQL_ALLOWED: dict[str, str] = {
    # path: why it may interpolate (identifiers only, quoted, never request data)
    "app/db/migrate.py": "CREATE SCHEMA for the fixed domain names in app.config.DOMAINS",
    "monitoring/health.py": "alembic_version of the fixed domain schema names",
    "app/cli/ops.py": "per-domain outbox tables of the fixed domain schema names",
    "app/runtime/outbox.py": "per-domain table names of the fixed domain schema names",
}
_SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|WHERE|FROM|TRUNCATE|CREATE|DROP|ALTER)\b")


def _is_sql_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in (
        "text",
        "exec_driver_sql",
        "execute",
        "executemany",
        "fetch",
        "fetchrow",
        "fetchval",
    )


def _formatted(node: ast.AST) -> bool:
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("format", "join")
    return False


def sql_built_from_strings() -> list[str]:
    found = []
    for top in SQL_SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "/migrations/" in rel or "scaffold_templates" in rel:
                continue
            tree = ast.parse(path.read_text(), filename=rel)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _is_sql_call(node) and node.args:
                    arg = node.args[0]
                    if _formatted(arg) and _SQL_WORDS.search(ast.unparse(arg).upper()):
                        found.append(f"{rel}:{node.lineno}: {ast.unparse(arg)[:100]}")
    return found


def test_no_sql_is_built_by_string_formatting():
    offenders = [f for f in sql_built_from_strings() if f.split(":")[0] not in SQL_ALLOWED]
    assert not offenders, (
        "SQL built from strings (use SQLAlchemy expressions and bound parameters):\n"
        + "\n".join(offenders)
    )


def test_the_sql_scan_catches_an_f_string_query(tmp_path):
    sample = 'import sqlalchemy as sa\nq = sa.text(f"SELECT * FROM t WHERE id = {user}")\n'
    tree = ast.parse(sample)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_sql_call(n)]
    assert calls and _formatted(calls[0].args[0])
