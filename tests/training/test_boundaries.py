"""Training is a leaf: the served packages never import it (nor torch through it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.training.sightline_cli import REPO_ROOT


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path``."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", ["models", "service", "worker"])
def test_served_packages_never_import_training(package: str) -> None:
    offenders = sorted(
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / package).rglob("*.py")
        if "training" in imported_roots(path)
    )
    assert offenders == []
