"""Run ``python -m training`` and ``sightline models prepare`` as real subprocesses in a scratch setup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SIGHTLINE = Path(sys.executable).parent / "sightline"


def scratch_env(scratch: Path, **sightline: str) -> dict[str, str]:
    """The environment minus any SIGHTLINE_* of the caller, every writable path under ``scratch``,
    one thread for torch, and ``sightline`` as ``SIGHTLINE_<NAME>`` variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SIGHTLINE_")}
    env |= {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env |= {
        "SIGHTLINE_MODEL_CACHE_DIR": str(scratch / "model-cache"),
        "SIGHTLINE_STORAGE_DIR": str(scratch / "blobs"),
        "SIGHTLINE_DATABASE_URL": f"sqlite:///{scratch / 'sightline.db'}",
        "SIGHTLINE_BROKER_URL": f"sqla+sqlite:///{scratch / 'broker.db'}",
    }
    return env | {f"SIGHTLINE_{key.upper()}": value for key, value in sightline.items()}


def models_prepare(manifest_dir: Path, model_name: str, scratch: Path) -> subprocess.CompletedProcess[str]:
    """``sightline models prepare`` for the model ``model_name`` registered in ``manifest_dir``."""
    env = scratch_env(scratch, model_manifest_dir=str(manifest_dir), model_name=model_name)
    scratch.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(SIGHTLINE), "models", "prepare"], cwd=scratch, env=env, capture_output=True, text=True, timeout=120
    )


def train_cli(args: list[str], scratch: Path) -> subprocess.CompletedProcess[str]:
    """``python -m training train ARGS``."""
    scratch.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "training", "train", *args],
        cwd=scratch,
        env=scratch_env(scratch),
        capture_output=True,
        text=True,
        timeout=120,
    )
