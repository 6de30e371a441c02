"""The arrows point one way: service/worker -> models, worker -> service, never back; no torch.

``training/`` (the optional ``train`` extra) may import torch and models/, and nothing in the
product imports it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from stack import REPO_ROOT

FRAMEWORKS = {"torch", "tensorflow", "training"}
FORBIDDEN = {
    "models": {"service", "worker", *FRAMEWORKS},
    "service": {"worker", *FRAMEWORKS},
    "worker": FRAMEWORKS,
    "training": {"service", "worker"},
}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_point_one_way(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(_imported_roots(path) & FORBIDDEN[package])
        for path in (REPO_ROOT / package).rglob("*.py")
    }
    assert {path: bad for path, bad in offenders.items() if bad} == {}


def test_loading_the_worker_loads_no_training_framework() -> None:
    code = "import sys, worker.tasks, worker.app; print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
