"""MkDocs hook: the build fails when a public module, class or function in the documented
packages has no docstring (mkdocstrings alone would just render it empty).
"""

from __future__ import annotations

import ast
import pathlib
from typing import Any

from mkdocs.exceptions import PluginError

PACKAGES = ("domains", "app", "tasks", "api", "monitoring")
SKIP_PARTS = {"migrations", "scaffold_templates", "__pycache__"}


def _public(name: str) -> bool:
    return not name.startswith("_")


def missing_docstrings(root: pathlib.Path) -> list[str]:
    """Lists ``path:line name`` for every public definition without a docstring.

    Args:
        root: The repository root.

    Returns:
        The offenders, sorted.
    """
    missing: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if SKIP_PARTS & set(path.parts):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            rel = path.relative_to(root)
            if path.name != "__init__.py" and ast.get_docstring(tree) is None:
                missing.append(f"{rel}:1 module")
            for node in tree.body:
                nodes = [node]
                if isinstance(node, ast.ClassDef) and _public(node.name):
                    nodes += [
                        n
                        for n in node.body
                        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                    ]
                for item in nodes:
                    if not isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        continue
                    if not _public(item.name) or ast.get_docstring(item) is not None:
                        continue
                    if any(
                        isinstance(d, ast.Name) and d.id == "overload" for d in item.decorator_list
                    ):
                        continue
                    missing.append(f"{rel}:{item.lineno} {item.name}")
    return missing


def on_pre_build(config: Any, **_: Any) -> None:
    """Fails the build on a missing public docstring.

    Args:
        config: The MkDocs config.
        **_: Other hook arguments.

    Raises:
        PluginError: Listing every offender.
    """
    root = pathlib.Path(config["config_file_path"]).parent
    missing = missing_docstrings(root)
    if missing:
        raise PluginError("public names without a docstring:\n  " + "\n  ".join(missing))
