"""ruff and mypy as part of the test suite, so the README's test command (what CI runs) enforces them.

mypy runs strictly over src/phiquant with the per-module relaxations pyproject.toml lists and justifies.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


def test_ruff_lint() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _run("ruff", "format", "--check", "src", "tests", "README.md")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict() -> None:
    result = _run("mypy")  # files and strictness come from [tool.mypy] in pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


# -- the layer contract ---------------------------------------------------------------------------------
# Floors, lowest first (README, "Architecture"): a module imports only from its own floor or below, and the
# shared modules from nothing but each other.  Every import counts, wherever it is written: at the top, in
# a function body or under TYPE_CHECKING.
SHARED = (
    "phiquant.errors",
    "phiquant.progress",
    "phiquant.cache",
    "phiquant.version",
    "phiquant.temporary_files",
)
FLOORS: tuple[tuple[str, ...], ...] = (
    ("phiquant.ggml",),
    ("phiquant.checkpoint", "phiquant.vocab", "phiquant.archs", "phiquant.model_source", "phiquant.hub")
    + ("phiquant.bundled",),
    ("phiquant.quant",),
    ("phiquant.gguf_io", "phiquant.pipeline", "phiquant.gguf_source", "phiquant.inspection"),
    ("phiquant.runtime",),
    ("phiquant.evaluate", "phiquant.imatrix", "phiquant.server", "phiquant.integrations"),
    ("phiquant.workflows",),
    ("phiquant.api",),
    ("phiquant.cli", "phiquant.commands", "phiquant.docs", "phiquant.__main__", "phiquant"),
)
PACKAGE = ROOT / "src" / "phiquant"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (PACKAGE.parent / relative).with_suffix(".py").is_file() or (
        PACKAGE.parent / relative / "__init__.py"
    ).is_file()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """The ids of the nodes inside `if TYPE_CHECKING:` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(child) for statement in node.body for child in ast.walk(statement)}
    return inside


def _imports(path: Path, *, annotations: bool = True) -> set[str]:
    """The phiquant modules a source file imports (`from package import module` counts as the module);
    `annotations=False` leaves out imports made for type checkers only."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set() if annotations else _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
    return {name for name in found if name == "phiquant" or name.startswith("phiquant.")} - {module}


def _import_graph(*, annotations: bool = True) -> dict[str, set[str]]:
    return {
        _module_name(path): _imports(path, annotations=annotations) for path in sorted(PACKAGE.rglob("*.py"))
    }


def _floor(module: str) -> int:
    if module.startswith(SHARED):
        return -1
    best = max(
        ((len(prefix), level) for level, prefixes in enumerate(FLOORS) for prefix in prefixes
         if module == prefix or module.startswith(prefix + ".")),
        default=None,
    )  # fmt: skip
    assert best is not None, f"{module} is on no floor: add it to FLOORS in {Path(__file__).name}"
    return best[1]


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    upward = [
        f"{module} (floor {_floor(module)}) imports {target} (floor {_floor(target)})"
        for module, targets in _import_graph().items()
        for target in sorted(targets)
        if _floor(target) > _floor(module) or (_floor(module) == -1 and _floor(target) != -1)
    ]
    assert upward == [], "\n".join(upward)


def test_the_import_graph_has_no_cycles() -> None:
    # Annotation-only imports (under TYPE_CHECKING) never run, so two modules of one floor may name each
    # other's types; every import that runs, deferred into a function body or not, counts.
    graph = _import_graph(annotations=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == [], "\n".join(" <-> ".join(cycle) for cycle in cycles)
