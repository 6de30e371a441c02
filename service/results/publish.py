"""Publishing a settled study's results as DICOM objects (IHE AI Results).

When a study settles as ``analysed`` (``worker.series.settle_study``) it is marked due
(``studies.results_due_at``). ``publish_due`` then builds, per due study and in one
transaction under the study lock: a TID 1500 SR, a Secondary Capture of the key slice
overlay, a presentation state over the original key slice and a Parametric Map of its
Grad-CAM (made from the stored raw map exactly as the worker made the overlay's heatmap;
results from before per-frame maps were stored get no map). They form a new
*generation* (a late instance that re-opens a series leads to another); each object gets a
delivery record per configured destination, and deliveries of older generations that were
still pending are superseded. Studies whose key image is not DICOM (PNG/JPEG uploads)
have nothing for a PACS to reference and get no objects.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom import Dataset
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.analysis import cam_at_image
from models.errors import InvalidManifest, UnknownModel
from models.registry import get_manifest_version
from models.render import map_levels01
from service.active_model import active_model
from service.db.series_state import lock_study
from service.db.session import store_blob, unit_of_work
from service.db.tables import (
    AnalysisResult,
    Delivery,
    DeliveryStatus,
    Instance,
    ResultKind,
    ResultObject,
    SliceScore,
    Study,
    StudyStatus,
    utcnow,
)
from service.results.findings import StudyFindings
from service.results.pm import build_parametric_map
from service.results.pr import build_presentation_state
from service.results.sc import build_secondary_capture
from service.results.sr import build_sr
from service.results.turnaround import record_if_delivered
from service.results.uids import new_uid
from service.settings import Settings
from service.storage import BlobStore

logger = logging.getLogger(__name__)

PUBLISH_BATCH = 50
# Series numbers of the result series, far from what scanners use.
SERIES_NUMBERS = {ResultKind.sr: 9901, ResultKind.sc: 9902, ResultKind.pr: 9903, ResultKind.pm: 9904}


@dataclass(frozen=True)
class KeyImage:
    """What the objects are made from: the key instance's original and its result.

    ``cam`` is the key frame's map at the original geometry, 0..1 as in the overlay; None
    when it cannot be remade (no stored raw map, or its model is no longer registered).
    """

    instance: Instance
    result: AnalysisResult
    source: Dataset
    overlay_rgb: np.ndarray
    cam: np.ndarray | None = None


def mark_due(study: Study, now: datetime) -> None:
    """Called under the study lock when a settle leaves the study analysed."""
    if study.status == StudyStatus.analysed:
        study.results_due_at = now


def publish_due(settings: Settings) -> int:
    """Publish every due study, one transaction each; returns how many got objects."""
    with unit_of_work(settings) as db:
        study_ids = list(
            db.scalars(
                select(Study.id)
                .where(Study.results_due_at.is_not(None))
                .order_by(Study.results_due_at)
                .limit(PUBLISH_BATCH)
            )
        )
    published = 0
    for study_id in study_ids:
        try:
            with unit_of_work(settings) as db:
                published += bool(publish_study(db, settings, study_id))
        except (ValueError, AttributeError, KeyError, OSError, RuntimeError) as exc:  # a source's odd header
            _give_up(settings, study_id, exc)
    return published


def _give_up(settings: Settings, study_id: uuid.UUID, exc: Exception) -> None:
    """A study whose objects cannot be built must not block the others: log it and stop trying."""
    logger.warning("result objects could not be built", extra={"study_id": str(study_id), "error": type(exc).__name__})
    with unit_of_work(settings) as db:
        lock_study(db, study_id).results_due_at = None


def publish_study(db: Session, settings: Settings, study_id: uuid.UUID) -> list[ResultObject]:
    """Build and store a new generation of result objects for one due study (see the module)."""
    study = lock_study(db, study_id)
    if study.results_due_at is None:
        return []  # another worker published it first
    study.results_due_at = None
    key = _key_image(db, settings, study) if study.status == StudyStatus.analysed else None
    if key is None:
        logger.info("no DICOM key image: no result objects", extra={"study_id": str(study_id)})
        return []
    generation = study.results_generation + 1
    objects = _store_objects(db, settings, study, key, generation)
    _supersede_pending(db, study.id, generation)
    study.results_generation = generation
    study.results_delivered_at = None
    study.turnaround_seconds = None
    db.flush()
    record_if_delivered(db, study, utcnow())
    logger.info(
        "result objects stored",
        extra={"study_id": str(study_id), "generation": generation, "objects": len(objects)},
    )
    return objects


def _key_image(db: Session, settings: Settings, study: Study) -> KeyImage | None:
    instance = db.get(Instance, study.key_instance_id) if study.key_instance_id else None
    if instance is None or instance.source_kind != "dicom":
        return None
    model = active_model(db, settings)  # result objects carry the active model's findings only
    result = db.scalars(
        select(AnalysisResult)
        .where(
            AnalysisResult.instance_id == instance.id,
            AnalysisResult.model_name == model.name,
            AnalysisResult.model_version == model.version,
        )
        .order_by(AnalysisResult.created_at.desc(), AnalysisResult.id)
        .limit(1)
    ).first()
    if result is None:
        return None
    store = BlobStore(settings.storage_dir)
    source = pydicom.dcmread(BytesIO(store.get(instance.blob_key)))
    overlay = cv2.imdecode(np.frombuffer(store.get(result.overlay_key), np.uint8), cv2.IMREAD_COLOR)
    if overlay is None:
        raise ValueError("the stored overlay is not a readable PNG")
    cam = _key_cam(db, settings, result, (int(source.Rows), int(source.Columns)))
    return KeyImage(instance, result, source, cv2.cvtColor(overlay, cv2.COLOR_BGR2RGB), cam)


def _key_cam(db: Session, settings: Settings, result: AnalysisResult, shape: tuple[int, int]) -> np.ndarray | None:
    """The key frame's stored raw map, resized and normalised as ``worker.pipeline.render_images`` does."""
    row = db.scalars(
        select(SliceScore)
        .where(
            SliceScore.result_id == result.id,
            SliceScore.instance_id == result.instance_id,
            SliceScore.frame_index == result.key_frame,
        )
        .limit(1)
    ).first()
    if row is None:
        return None  # analysed before raw maps were stored per frame
    try:
        extra = [settings.model_manifest_dir] if settings.model_manifest_dir else []
        manifest = get_manifest_version(result.model_name, result.model_version, extra)
    except (UnknownModel, InvalidManifest):
        return None  # the model's centre crop (where its map lies) is no longer known
    raw = np.frombuffer(row.cam, dtype=np.float32).reshape(row.cam_rows, row.cam_columns)
    cam = cam_at_image(raw, shape, manifest.center_crop)
    return map_levels01(cam)


def findings_of(study: Study, result: AnalysisResult) -> StudyFindings:
    bbox = None
    if result.bbox_x is not None and result.bbox_y is not None and result.bbox_width and result.bbox_height:
        bbox = (result.bbox_x, result.bbox_y, result.bbox_width, result.bbox_height)
    reason = None if bbox else (result.region_reason or "no focal region")
    window = result.display_window
    return StudyFindings(
        label=result.label,
        tumour_score=result.tumour_score,
        series_score=study.triage_score if study.triage_score is not None else result.tumour_score,
        probabilities={label: float(p) for label, p in result.probabilities.items()},
        target_label=result.target_label or result.label,
        cam_method=result.cam_method,
        cam_strength=result.cam_strength or 0.0,
        region_reason=reason,
        bbox=bbox,
        region_area_mm2=result.region_area_mm2,
        key_frame=result.key_frame,
        model_name=result.model_name,
        model_version=result.model_version,
        model_sha256=result.model_sha256,
        display_window=(float(window[0]), float(window[1])) if window else None,
    )


def _build(key: KeyImage, findings: StudyFindings, settings: Settings) -> dict[ResultKind, Dataset]:
    root = settings.uid_root
    built = {}
    for kind, make in _BUILDERS.items():
        uids = {"series_uid": new_uid(root), "instance_uid": new_uid(root), "series_number": SERIES_NUMBERS[kind]}
        dataset = make(key, findings, {**uids, "uid_root": root})
        if dataset is not None:
            built[kind] = dataset
    return built


def _parametric_map(key: KeyImage, findings: StudyFindings, uids: dict[str, Any]) -> Dataset | None:
    """The heatmap's PM, or None: without a stored map, or a key frame geometry highdicom refuses,
    the study still gets its other objects."""
    if key.cam is None:
        logger.info("no stored map of the key frame: no parametric map", extra={"result_id": str(key.result.id)})
        return None
    try:
        return build_parametric_map(key.source, key.cam, findings, **uids)
    except (ValueError, AttributeError, RuntimeError) as exc:  # highdicom on a header it cannot map
        logger.warning("parametric map not built", extra={"result_id": str(key.result.id), "error": type(exc).__name__})
        return None


_BUILDERS: dict[ResultKind, Callable[[KeyImage, StudyFindings, dict[str, Any]], Dataset | None]] = {
    ResultKind.sr: lambda key, findings, uids: build_sr(key.source, findings, **uids),
    ResultKind.sc: lambda key, findings, uids: build_secondary_capture(key.source, key.overlay_rgb, findings, **uids),
    ResultKind.pr: lambda key, findings, uids: build_presentation_state(key.source, findings, **uids),
    ResultKind.pm: _parametric_map,
}


def _store_objects(db: Session, settings: Settings, study: Study, key: KeyImage, generation: int) -> list[ResultObject]:
    store = BlobStore(settings.storage_dir)
    objects = []
    for kind, dataset in _build(key, findings_of(study, key.result), settings).items():
        data = encode(dataset)
        row = ResultObject(
            id=uuid.uuid4(),
            study_id=study.id,
            generation=generation,
            kind=kind,
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            blob_key=store_blob(db, store, data),
            blob_size=len(data),
        )
        db.add(row)
        db.add_all(Delivery(result_object_id=row.id, destination=d.name) for d in settings.result_destinations)
        objects.append(row)
    return objects


def _supersede_pending(db: Session, study_id: uuid.UUID, generation: int) -> None:
    older = select(ResultObject.id).where(ResultObject.study_id == study_id, ResultObject.generation < generation)
    db.execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.pending, Delivery.result_object_id.in_(older))
        .values(status=DeliveryStatus.failed, last_error=f"superseded by result generation {generation}")
    )


def encode(dataset: Dataset) -> bytes:
    """The object as a DICOM file (Part 10, with its file meta information)."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
