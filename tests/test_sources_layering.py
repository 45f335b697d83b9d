"""`llm_magic.sources` (what MODEL names, before any weights are read) sits below the
engines and the api: its modules import each other without a circle, plus only the
leaves and lower layers, and never the package `__init__`. Every import counts, the lazy
ones inside functions and those for type checking too: a circle through a lazy import
is still a circle.

Run as a script, it prints each module's llm_magic imports."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

# This repository's package, read as files (whatever copy of llm_magic is installed).
PACKAGE = Path(__file__).resolve().parents[1] / "llm_magic"
# What sources may import besides itself: leaves and layers below it.
ALLOWED = {
    "units",
    "paths",
    "errors",
    "hardware",
    "display",
    "quiet",
    "_compat",
    "_version",
}


def _is_module(dotted: str) -> bool:
    """Whether `llm_magic.a.b` names a module or package (not a name defined in one)."""
    path = PACKAGE.joinpath(*dotted.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def llm_magic_imports(source: str, package: str = "llm_magic.sources") -> list[str]:
    """The llm_magic modules that `source`, a module of `package`, imports anywhere in it,
    sorted. A name imported from a package's `__init__` (`from .. import demo_model`)
    counts as the package itself."""
    here = package.split(".")
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "llm_magic"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.split(".")[0] != "llm_magic":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub) else target)
    return sorted(found)


def sources_graph() -> dict[str, list[str]]:
    return {
        f"llm_magic.sources.{path.stem}": llm_magic_imports(path.read_text())
        for path in sorted((PACKAGE / "sources").glob("*.py"))
    }


def test_sources_import_only_themselves_and_lower_layers():
    graph = sources_graph()
    assert "llm_magic.sources.resolve" in graph and "llm_magic.sources.hub" in graph
    wrong = {
        module: [
            name
            for name in imports
            if name == "llm_magic" or name.split(".")[1] not in ALLOWED | {"sources"}
        ]
        for module, imports in graph.items()
    }
    assert {m: names for m, names in wrong.items() if names} == {}


def test_sources_modules_import_each_other_without_a_circle():
    everything = sources_graph()
    graph = {
        module: [n for n in imports if n in everything] for module, imports in everything.items()
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import circle: " + " -> ".join((*path, module))
        if module in done:
            return
        for name in graph[module]:
            visit(name, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_the_finder_sees_lazy_and_package_imports():
    """The check itself: an import inside a function, one for type checking only, and a
    name taken from the package `__init__` are all found (else the tests above would
    pass on anything)."""
    wrong = textwrap.dedent("""
        from typing import TYPE_CHECKING
        from . import hub
        from ..units import DTYPE_BYTES
        if TYPE_CHECKING:
            from ..engines import Engine

        def f():
            from .. import demo_model
            from ..loading import ModelInfo
    """)
    assert llm_magic_imports(wrong) == [
        "llm_magic",
        "llm_magic.engines",
        "llm_magic.loading",
        "llm_magic.sources.hub",
        "llm_magic.units",
    ]


if __name__ == "__main__":
    for module, imports in sources_graph().items():
        print(f"{module}:\n    " + ("\n    ".join(imports) or "(none)"))
