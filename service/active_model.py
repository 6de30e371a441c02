"""The manifest of the model this deployment runs (``SIGHTLINE_MODEL_NAME``), read once.

The gateway needs the manifest, not the ONNX file: its ``scope`` decides at ingest which
instances get an analysis job. Loaded once per process (manifests are small JSON files
and change only with a deployment).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from models.manifest import ModelManifest
from models.registry import get_manifest
from service.settings import Settings


def active_manifest(settings: Settings) -> ModelManifest:
    return _manifest(settings.model_name, settings.model_manifest_dir)


@lru_cache(maxsize=4)
def _manifest(name: str, manifest_dir: Path | None) -> ModelManifest:
    return get_manifest(name, [manifest_dir] if manifest_dir else [])
