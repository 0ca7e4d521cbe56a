"""DESIGN.md's layering: stages never import each other; ``cluda_deploy`` imports no stage.

The only exceptions are the ``cluda`` CLI and the ``cluda demo`` flow it runs: they compose the
stages and import each one lazily inside the subcommand (never at module level), so ``cluda --help`` is instant and a server image needs no training code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("training", "export", "server")
COMPOSITION_ROOTS = ("cluda_deploy/cli.py", "cluda_deploy/demo_flow.py")
PACKAGES = ("cluda_deploy", *STAGES)


def _imported_roots(tree: ast.AST, module_level_only: bool) -> set[str]:
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    roots: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_cli = path.relative_to(ROOT).as_posix() in COMPOSITION_ROOTS
        forbidden = set(STAGES) - {package}
        bad = _imported_roots(tree, module_level_only=is_cli) & forbidden
        found += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(bad)]
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_no_other_stage(package: str) -> None:
    assert _violations(package) == []


def test_checker_sees_a_violation(tmp_path: Path) -> None:
    tree = ast.parse("import os\ndef f():\n    from export.graph import x\n")
    assert _imported_roots(tree, module_level_only=False) == {"os", "export"}
    assert _imported_roots(tree, module_level_only=True) == {"os"}
