"""Training tests share one CPU thread (the machine is shared) and one small synthetic folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.synthetic_folder import write_folder


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    """Session-scoped so it comes before the module-scoped training fixtures."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 12 synthetic 64x64 PNGs (read-only: tests that need another folder make their own)."""
    return write_folder(tmp_path_factory.mktemp("labelled") / "data")
