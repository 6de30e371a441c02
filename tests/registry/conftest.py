"""Registry fixtures: a second version of the default model (another temperature, so its
scores differ) installed beside it, and one real classifier per version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import make_settings
from registry_fixtures import DEFAULT, SHADOW, write_shadow_manifest

from models.inference import Classifier
from models.registry import get_manifest, get_manifest_version
from service.active_model import ModelKey
from service.settings import Settings


@pytest.fixture(scope="session")
def shadow_manifest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("manifests")
    write_shadow_manifest(folder)
    return folder


@pytest.fixture()
def reg_settings(settings: Settings, shadow_manifest_dir: Path) -> Settings:
    """The SQLite test database, with the shadow manifest installed beside the default (pinned)."""
    folder = Path(settings.storage_dir).parent
    return make_settings(folder, model_manifest_dir=shadow_manifest_dir, model_version=DEFAULT.version)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("SIGHTLINE_TEST_MODEL_CACHE")
    return Path(configured) if configured else tmp_path_factory.getbasetemp() / "model-cache"


@pytest.fixture(scope="session")
def classifiers(model_cache: Path, shadow_manifest_dir: Path) -> dict[ModelKey, Classifier]:
    shadow = get_manifest_version(SHADOW.name, SHADOW.version, [shadow_manifest_dir])
    return {
        DEFAULT: Classifier(get_manifest(DEFAULT.name), cache_dir=model_cache),
        SHADOW: Classifier(shadow, cache_dir=model_cache),
    }
