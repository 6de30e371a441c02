"""Deployments: install, promote and retire model versions; which models score new instances.

Roles. Exactly one model is active: it drives the worklist, series and study triage,
results as DICOM and everything readers see. Shadow versions are scored on the same
instances (their routing rules permitting) and stored, for agreement reports only. A
retired version gets no new jobs; its queued jobs are failed (``model_retired``) and its
stored results stay. With no deployment rows the configured ``SIGHTLINE_MODEL_NAME`` is the
active model and every instance in its scope gets one job for it, as before the registry.

The first install records the configured model as the active row (a shadow install) or
replaces it (a non-shadow install), so adding manifests later never changes what readers
see. Installing a version that is not ``--shadow`` makes it active only when no deployment
row is active yet; otherwise it is refused: install it as shadow and promote it, so that a
switch of what readers see is always the one audited ``promote``. Promoting makes the
previous active version a shadow (the configured model gets its row then) and re-triages,
from the stored slice scores, every completed series the new active version has scored:
old studies switch at once where the new version scored them, and keep the previous
version's triage where it did not (nothing is re-run). These functions only flush.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.active_model import ModelKey, active_model, configured_model, manifest_of
from service.db.audit import record_event
from service.db.series_state import lock_study, of_model, score_series
from service.db.tables import (
    AnalysisJob,
    DeploymentRole,
    JobStatus,
    ModelDeployment,
    Series,
    SliceScore,
    as_utc,
    utcnow,
)
from service.db.triage import recompute_locked
from service.errors import Conflict, NotFound
from service.queue import analysis_queue
from service.registry.routing import RoutingRules, validate_rules
from service.registry.schemas import DeploymentView
from service.results.publish import mark_due
from service.settings import Settings

MODEL_RETIRED = "model_retired"


class DeploymentNotFound(NotFound):
    code = "deployment_not_found"


@dataclass(frozen=True)
class RoutedModel:
    """A model that gets jobs, with its routing rules (empty: everything in scope)."""

    key: ModelKey
    role: DeploymentRole
    rules: RoutingRules
    queue: str


def deployments(db: Session) -> list[ModelDeployment]:
    return list(db.scalars(select(ModelDeployment).order_by(ModelDeployment.model_name, ModelDeployment.installed_at)))


def routed_models(db: Session, settings: Settings) -> list[RoutedModel]:
    """Every model that scores new instances: the active one first, then the shadows."""
    rows = [row for row in deployments(db) if row.role != DeploymentRole.retired]
    routed = [_routed(_key(row), row.role, dict(row.routing_rules), settings) for row in rows]
    if not any(r.role == DeploymentRole.active for r in routed):
        configured = configured_model(settings)
        routed = [r for r in routed if r.key != configured]
        routed.insert(0, _routed(configured, DeploymentRole.active, {}, settings))
    return sorted(routed, key=lambda r: r.role != DeploymentRole.active)


def _routed(key: ModelKey, role: DeploymentRole, rules: RoutingRules, settings: Settings) -> RoutedModel:
    return RoutedModel(key, role, rules, analysis_queue(key, settings))


def install(
    db: Session, settings: Settings, key: ModelKey, *, shadow: bool, rules: RoutingRules, actor: str
) -> ModelDeployment:
    """A new deployment row (the manifest must be installed: its sha256 is recorded)."""
    manifest = manifest_of(key, settings)
    if _find(db, key) is not None:
        raise Conflict(f"model {key} is already installed; promote or retire it")
    has_active = db.scalar(select(ModelDeployment.id).where(ModelDeployment.role == DeploymentRole.active))
    if not shadow and has_active is not None:
        raise Conflict(f"an active model is deployed; install {key} with --shadow, then promote it")
    configured = configured_model(settings)
    if shadow and has_active is None and key != configured:  # pin what readers see now in the database
        install(db, settings, configured, shadow=False, rules={}, actor=actor)
    row = ModelDeployment(
        model_name=key.name,
        model_version=key.version,
        manifest_sha256=manifest.sha256,
        role=DeploymentRole.shadow if shadow else DeploymentRole.active,
        routing_rules=validate_rules(rules),
        installed_by=actor,
    )
    db.add(row)
    _audit(db, actor, "model_install", {"model": str(key), "role": row.role.value, "rules": row.routing_rules})
    db.flush()
    return row


def promote(db: Session, settings: Settings, key: ModelKey, *, actor: str) -> tuple[ModelKey, int]:
    """Make ``key`` active and the previous active a shadow; returns it and how many studies were re-triaged."""
    target = _require(db, key)
    previous = active_model(db, settings)
    if previous == key:
        raise Conflict(f"model {key} is already active")
    previous_row = _find(db, previous)
    if previous_row is None:  # the implicit configured model gets its row, as a shadow
        previous_row = install(db, settings, previous, shadow=True, rules={}, actor=actor)
    previous_row.role = DeploymentRole.shadow
    db.flush()  # one active row at a time
    target.role, target.promoted_at, target.promoted_by = DeploymentRole.active, utcnow(), actor
    _audit(db, actor, "model_promote", {"from": str(previous), "to": str(key)})
    db.flush()
    return previous, retriage(db, key, window=manifest_of(key, settings).aggregation.window)


def retire(db: Session, settings: Settings, key: ModelKey, *, actor: str) -> int:
    """Stop scoring with ``key``; its queued jobs fail as ``model_retired``. Returns how many."""
    row = _require(db, key)
    if row.role == DeploymentRole.active:
        raise Conflict(f"model {key} is active; promote another version first")
    row.role = DeploymentRole.retired
    cancelled = db.execute(
        update(AnalysisJob)
        .where(of_model(AnalysisJob, key), AnalysisJob.status == JobStatus.queued)
        .values(status=JobStatus.failed, error_code=MODEL_RETIRED, error_message="model retired", finished_at=utcnow())
        .returning(AnalysisJob.id)
        .execution_options(synchronize_session=False)
    ).all()
    _audit(db, actor, "model_retire", {"model": str(key), "cancelled_jobs": len(cancelled)})
    db.flush()
    return len(cancelled)


def retriage(db: Session, key: ModelKey, *, window: int) -> int:
    """Re-score, from stored slices, every completed series ``key`` scored; re-triage their studies."""
    scored = select(SliceScore.series_id).where(of_model(SliceScore, key)).distinct()
    study_ids = sorted(
        set(db.scalars(select(Series.study_id).where(Series.id.in_(scored), Series.completed_at.is_not(None))))
    )
    for study_id in study_ids:
        study = lock_study(db, study_id)
        for series in db.scalars(select(Series).where(Series.study_id == study_id, Series.id.in_(scored))):
            if series.completed_at is not None:
                score_series(db, series, window, key)
        mark_due(recompute_locked(db, study, key), utcnow())
    return len(study_ids)


def _find(db: Session, key: ModelKey) -> ModelDeployment | None:
    return db.scalar(
        select(ModelDeployment).where(
            ModelDeployment.model_name == key.name, ModelDeployment.model_version == key.version
        )
    )


def _require(db: Session, key: ModelKey) -> ModelDeployment:
    row = _find(db, key)
    if row is None:
        raise DeploymentNotFound(f"model {key} is not installed (sightline models install)")
    return row


def _key(row: ModelDeployment) -> ModelKey:
    return ModelKey(row.model_name, row.model_version)


def _audit(db: Session, actor: str, action: str, detail: dict[str, Any]) -> None:
    record_event(db, actor=actor, role="admin", action=action, study_uid=None, client=None, detail=detail)


def deployment_views(db: Session, settings: Settings) -> list[DeploymentView]:
    """Every deployment row, plus the configured model while it is active without one."""
    views = [
        DeploymentView(
            model_name=row.model_name,
            model_version=row.model_version,
            manifest_sha256=row.manifest_sha256,
            role=row.role,
            routing_rules=row.routing_rules,
            queue=analysis_queue(_key(row), settings),
            installed_at=as_utc(row.installed_at),
            installed_by=row.installed_by,
            promoted_at=as_utc(row.promoted_at) if row.promoted_at else None,
            promoted_by=row.promoted_by,
        )
        for row in deployments(db)
    ]
    if not any(view.role == DeploymentRole.active for view in views):
        key = configured_model(settings)
        views.insert(0, _implicit_view(key, manifest_of(key, settings).sha256, settings))
    return views


def _implicit_view(key: ModelKey, sha256: str, settings: Settings) -> DeploymentView:
    return DeploymentView(
        model_name=key.name,
        model_version=key.version,
        manifest_sha256=sha256,
        role=DeploymentRole.active,
        routing_rules={},
        queue=analysis_queue(key, settings),
        installed_at=None,
        installed_by=None,
        promoted_at=None,
        promoted_by=None,
        implicit=True,
    )
