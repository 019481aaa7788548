"""The package's layout holds: each stage's subpackage imports only from the packages below it, at
the top of its modules, and no module imports itself round in a circle."""
from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "src" / "zh_policy_ner"
# bottom up; a package may import from a package of a lower rank (and from itself)
RANK = {"common": 0, "reading": 1, "labelling": 2, "model": 2, "data": 3, "rules": 4, "decoding": 5,
        "training": 6, "prediction": 6, "evaluation": 7}
INSIDE_FUNCTIONS = {"prediction.bench"}  # the benchmark's worker imports the project only when it runs ours


def _project_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module as ``package.module``, whether at the top of the file) for each project import."""
    here = path.relative_to(PACKAGE).with_suffix("").parts
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[: len(here) - node.level])
            target = base + (node.module.split(".") if node.module else [])
            found.append((".".join(target), id(node) in top))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zh_policy_ner."):
            found.append((node.module.removeprefix("zh_policy_ner."), id(node) in top))
    return found


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
            for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def test_every_module_sits_in_a_ranked_stage_package():
    assert {name.split(".")[0] for name in _modules()} == set(RANK)
    assert not [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]  # nothing left flat


def test_packages_import_only_downward_and_at_the_top():
    wrong = []
    for name, path in _modules().items():
        pkg = name.split(".")[0]
        for target, at_top in _project_imports(path):
            tpkg = target.split(".")[0]
            if tpkg != pkg and RANK[tpkg] >= RANK[pkg]:
                wrong.append(f"{name} imports {target} (rank {RANK[tpkg]} >= {RANK[pkg]})")
            if not at_top and name not in INSIDE_FUNCTIONS:
                wrong.append(f"{name} imports {target} inside a function")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = {name: {t for t, _ in _project_imports(path) if t in _modules()} for name, path in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
