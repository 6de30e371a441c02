"""Which model readers see, and which model this process runs.

``ModelKey`` is a model's identity (name, version). The active model is the deployment
whose role is ``active`` (``service.registry``); with no deployment rows it is the
configured model (``configured_model``), so installations that never used the registry
behave as before. The first ``sightline models install`` records the configured model as
the active row, so manifests added later never change what readers see. Manifests are small JSON files that change
only with a deployment: each is read once per process.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.manifest import ModelManifest
from models.registry import get_manifest, get_manifest_version
from service.db.tables import AnalysisResult, DeploymentRole, ModelDeployment
from service.settings import Settings


@dataclass(frozen=True, order=True)
class ModelKey:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> ModelKey:
        """``name@version`` (``SIGHTLINE_WORKER_MODEL``, CLI arguments)."""
        name, sep, version = text.partition("@")
        if not (name and sep and version):
            raise ValueError(f"expected NAME@VERSION, got {text!r}")
        return cls(name, version)


def configured_model(settings: Settings) -> ModelKey:
    """``SIGHTLINE_MODEL_NAME`` at ``SIGHTLINE_MODEL_VERSION``, else at its highest installed
    version: the default model (active while no deployment row is, and queue ``analysis``)."""
    manifest = _manifest(settings.model_name, settings.model_version, settings.model_manifest_dir)
    return ModelKey(settings.model_name, manifest.version)


def worker_model(settings: Settings) -> ModelKey:
    """The model this worker runs: ``SIGHTLINE_WORKER_MODEL``, else the configured model."""
    return ModelKey.parse(settings.worker_model) if settings.worker_model else configured_model(settings)


def manifest_of(key: ModelKey, settings: Settings) -> ModelManifest:
    return _manifest(key.name, key.version, settings.model_manifest_dir)


def active_model(db: Session, settings: Settings) -> ModelKey:
    """The model whose results readers see (one indexed read of a tiny table)."""
    row = db.execute(
        select(ModelDeployment.model_name, ModelDeployment.model_version).where(
            ModelDeployment.role == DeploymentRole.active
        )
    ).first()
    return ModelKey(row.model_name, row.model_version) if row else configured_model(settings)


def latest_result(db: Session, instance_id: uuid.UUID, model: ModelKey) -> AnalysisResult | None:
    """The instance's newest result of ``model`` (readers see only the active model's)."""
    return db.scalar(
        select(AnalysisResult)
        .where(
            AnalysisResult.instance_id == instance_id,
            AnalysisResult.model_name == model.name,
            AnalysisResult.model_version == model.version,
        )
        .order_by(AnalysisResult.created_at.desc(), AnalysisResult.id.desc())
        .limit(1)
    )


def active_manifest(settings: Settings, db: Session | None = None) -> ModelManifest:
    """The active model's manifest (its scope decides applicability at ingest); without a
    session, the configured model's."""
    key = active_model(db, settings) if db is not None else configured_model(settings)
    return manifest_of(key, settings)


@lru_cache(maxsize=16)
def _manifest(name: str, version: str | None, manifest_dir: Path | None) -> ModelManifest:
    extra = [manifest_dir] if manifest_dir else []
    return get_manifest(name, extra) if version is None else get_manifest_version(name, version, extra)
