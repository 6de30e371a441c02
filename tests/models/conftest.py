"""Shared fixtures: the default manifest and one CAM-ready build of it per test session."""

from pathlib import Path

import pytest

from models.inference import Classifier
from models.manifest import ModelManifest, load_manifest
from models.registry import default_manifest_path


@pytest.fixture(scope="session")
def default_manifest() -> ModelManifest:
    return load_manifest(default_manifest_path())


@pytest.fixture(scope="session")
def cam_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("camready-cache")


@pytest.fixture(scope="session")
def default_classifier(default_manifest: ModelManifest, cam_cache_dir: Path) -> Classifier:
    return Classifier(default_manifest, cache_dir=cam_cache_dir, intra_op_threads=2)
