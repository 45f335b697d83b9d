"""The layers of `llm_magic/` (README: "Layout"), checked on the source files: a module
imports only from its own layer or the layers below it, no two modules import each other
round a circle, and nothing inside the package imports its `__init__`. Every import
counts: the lazy ones inside functions and those for type checking too, since a circle
through a lazy import is still a circle.

Run as a script (`python tests/test_layers.py`, as scripts/check.sh does before the
tests), it prints what breaks a rule and exits 1; with `--graph`, each module's imports."""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

# This repository's package, read as files (whatever copy of llm_magic is installed).
PACKAGE = Path(__file__).resolve().parents[1] / "llm_magic"

# Top to bottom. A name is a module or a package (all its modules); the most specific
# name that matches a module places it.
LAYERS: list[tuple[str, ...]] = [
    ("magics",),  # the IPython face: magics, flags, streaming display, completion
    ("api",),  # the plain-Python facade
    # the cached-load path; the turns of a conversation; adapters on loaded models; one cell
    # through several models
    ("loader", "conversations", "adapters", "side_by_side"),
    # one prompt or many, run (or scored) through any engine; its log rows
    ("generation", "scoring", "recorder"),
    ("engines",),  # one module per engine, its load and its generation; the registry
    ("cache",),  # the kernel's loaded models
    ("engines.base",),  # the engine interface and the plain data crossing it
    ("sources",),  # what MODEL names, before any weights are read
    # values every engine shares; the run log
    ("settings", "prompts", "results", "structured", "runlog", "logprobs", "scores"),
    ("display",),  # cards
    ("errors",),  # exceptions, their cards, the rules that explain them
    ("hardware", "quiet", "units", "paths", "redact", "_version", "_compat"),  # leaves
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    """Whether `llm_magic.a.b` names a module or package (not a name defined in one)."""
    path = PACKAGE.joinpath(*dotted.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def llm_magic_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The llm_magic modules that `source` (the module `module`) imports anywhere in it,
    sorted. A name imported from a package's `__init__` (`from .. import demo_model`)
    counts as the package itself."""
    here = module.split(".") if is_package else module.split(".")[:-1]
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
    return sorted(found - {module})


def graph() -> dict[str, list[str]]:
    return {
        module_name(path): llm_magic_imports(
            path.read_text(), module_name(path), path.name == "__init__.py"
        )
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def layer_of(module: str) -> int | None:
    """The index of `module`'s layer (0: top); None for the package `__init__`."""
    inner = module.removeprefix("llm_magic").lstrip(".")
    if not inner:
        return None
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for index, names in enumerate(LAYERS):
        for name in names:
            if inner == name or inner.startswith(name + "."):
                if best is None or len(name) > best[0]:
                    best = (len(name), index)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the README)")
    return best[1]


def against_the_grain(imports: dict[str, list[str]]) -> list[str]:
    """'a -> b' for each import of a module from a layer above its own, or of the package
    `__init__` from inside the package."""
    wrong = []
    for module, names in imports.items():
        mine = layer_of(module)
        for name in names:
            theirs = layer_of(name)
            if theirs is None and mine is not None:
                wrong.append(f"{module} -> {name} (the package __init__)")
            elif mine is not None and theirs is not None and theirs < mine:
                wrong.append(f"{module} -> {name} ({' | '.join(LAYERS[theirs])} is above)")
    return wrong


def circles(imports: dict[str, list[str]]) -> list[str]:
    """One 'a -> b -> a' path per import circle found."""
    found: list[str] = []
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            found.append(" -> ".join((*path[path.index(module) :], module)))
            return
        if module in done:
            return
        for name in imports.get(module, []):
            visit(name, (*path, module))
        done.add(module)

    for module in imports:
        visit(module, ())
    return found


def test_every_module_has_a_layer():
    for module in graph():
        layer_of(module)


def test_no_import_against_the_grain():
    assert against_the_grain(graph()) == []


def test_no_import_circle():
    assert circles(graph()) == []


def test_the_check_catches_a_wrong_way_import_and_a_circle():
    """The check itself: errors importing the api, and a circle, are both reported, and
    the finder sees a lazy import, one for type checking, and a name from the package
    `__init__` (else the tests above would pass on anything)."""
    source = textwrap.dedent("""
        from typing import TYPE_CHECKING
        from ..units import format_bytes
        if TYPE_CHECKING:
            from ..engines import Engine

        def f():
            from .. import demo_model
            from ..api import generate
    """)
    found = llm_magic_imports(source, "llm_magic.errors.card")
    assert found == ["llm_magic", "llm_magic.api", "llm_magic.engines", "llm_magic.units"]
    assert against_the_grain({"llm_magic.errors.card": found}) == [
        "llm_magic.errors.card -> llm_magic (the package __init__)",
        "llm_magic.errors.card -> llm_magic.api (api is above)",
        "llm_magic.errors.card -> llm_magic.engines (engines is above)",
    ]
    assert circles({"llm_magic.a": ["llm_magic.b"], "llm_magic.b": ["llm_magic.a"]}) == [
        "llm_magic.a -> llm_magic.b -> llm_magic.a"
    ]


if __name__ == "__main__":
    imports = graph()
    if "--graph" in sys.argv:
        for module, names in imports.items():
            print(f"{module}:\n    " + ("\n    ".join(names) or "(none)"))
    problems = [f"against the grain: {w}" for w in against_the_grain(imports)]
    problems += [f"import circle: {c}" for c in circles(imports)]
    print("\n".join(problems) or f"layers: {len(imports)} modules, no import against the grain")
    sys.exit(1 if problems else 0)
