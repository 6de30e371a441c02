"""The analysis of one job: claim, decode, explain, render, store, each a short step.

Only the claim and the final store touch the database, each in its own short unit of
work; decoding and the model run happen outside any transaction so no row lock is held
for seconds. Errors split in two: permanent ones (the input can never be analysed) end
the job as failed; transient ones (database, disk, broker) release it for a retry.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np
import redis.exceptions
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError as DatabaseError

from models.analysis import InstanceAnalysis, analyse_object
from models.errors import ModelLibraryError
from models.inference import Classifier
from models.manifest import ModelManifest
from models.render import (
    BoundingBox,
    encode_png,
    heatmap_rgb,
    map_levels,
    map_levels01,
    outline,
    outline_layer,
    overlay,
)
from service.active_model import ModelKey
from service.db.session import store_blob, unit_of_work
from service.db.tables import AnalysisResult, JobStatus, SliceScore
from service.logging_setup import error_frames
from service.metrics import JOB_LATENCY
from service.settings import Settings
from service.storage import BlobStore
from worker.jobs import RETRIES_EXHAUSTED, ClaimedJob, claim_job, end_if_owned, fail_job, release_job
from worker.series import settle_study

logger = logging.getLogger(__name__)

# Errors that may pass on their own: a retry later can succeed.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseError,
    OSError,
    BrokerError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

IMAGE_KINDS = ("original", "heatmap", "overlay", "contour", "map", "outline")


class Outcome(enum.StrEnum):
    skipped = "skipped"  # duplicate delivery: the job was finished or is running elsewhere
    succeeded = "succeeded"
    failed = "failed"
    lost = "lost"  # the job was taken from us (re-queued by the reconciler) before we stored


class BlobMissing(Exception):
    """The instance's stored file is gone; no retry can bring it back."""

    code = "blob_missing"


@dataclass(frozen=True)
class Rendering:
    """Everything one job produces before it is stored."""

    analysis: InstanceAnalysis
    pngs: dict[str, bytes]
    bbox: BoundingBox | None
    timings_ms: dict[str, float]
    model: ModelManifest
    cam_ready_sha256: str


def analyse_job(job_id: uuid.UUID, *, settings: Settings, classifier: Classifier, worker_name: str) -> Outcome:
    """Run one job end to end. Transient errors propagate (after the job is released)."""
    claim = claim_job(
        settings, job_id, worker_name, model=ModelKey(classifier.manifest.name, classifier.manifest.version)
    )
    if claim is None:
        logger.info("job not claimable; duplicate delivery ignored", extra={"job_id": str(job_id)})
        return Outcome.skipped
    started = time.perf_counter()
    try:
        outcome = _run_claimed(claim, settings=settings, classifier=classifier)
    except TRANSIENT_ERRORS as exc:
        return _after_transient_error(claim, settings, exc)
    except Exception as exc:  # the one boundary: a job must never stay "running" on an unnamed error
        return _after_unexpected_error(claim, settings, exc)
    JOB_LATENCY.observe(time.perf_counter() - started)
    return outcome


def _after_unexpected_error(claim: ClaimedJob, settings: Settings, exc: Exception) -> Outcome:
    """An error we did not name (a bug, a model the runtime refuses) fails the job at once.

    Retrying would keep the study pending for attempts x deadline with the same outcome;
    failing records the reason where radiologists and operators see it. Only the error's
    type and frames are kept: its message could quote patient data.
    """
    where = error_frames(exc)
    logger.error(
        "unexpected error; job failed", extra={**claim.log_ids(), "exc_type": type(exc).__name__, "where": where}
    )
    fail_job(settings, claim, "internal_error", f"unexpected {type(exc).__name__} in the worker")
    return Outcome.failed


def _run_claimed(claim: ClaimedJob, *, settings: Settings, classifier: Classifier) -> Outcome:
    try:
        rendering = render_analysis(claim, settings=settings, classifier=classifier)
    except (ModelLibraryError, BlobMissing) as exc:
        fail_job(settings, claim, exc.code, f"{type(exc).__name__}: {exc}")
        return Outcome.failed
    if not store_result(settings, claim, rendering):
        logger.warning("job taken over before its result was stored; result dropped", extra=claim.log_ids())
        return Outcome.lost
    logger.info(
        "job succeeded",
        extra={
            **claim.log_ids(),
            "label": rendering.analysis.key.explanation.label,
            "frames": len(rendering.analysis.frames),
            "attempt": claim.attempts,
            "timings_ms": rendering.timings_ms,
        },
    )
    return Outcome.succeeded


def _after_transient_error(claim: ClaimedJob, settings: Settings, exc: BaseException) -> Outcome:
    """Out of attempts: the job fails. Otherwise hand it back and let Celery retry."""
    log_extra = {**claim.log_ids(), "attempt": claim.attempts, "exc_type": type(exc).__name__}
    if claim.attempts >= settings.job_max_attempts:
        fail_job(settings, claim, RETRIES_EXHAUSTED, f"{type(exc).__name__} on attempt {claim.attempts}")
        return Outcome.failed
    try:
        release_job(settings, claim)
    except DatabaseError:
        logger.warning("could not release job; the reconciler will re-queue it", extra=log_extra)
    logger.warning("transient error; job will be retried", extra=log_extra)
    raise exc


def render_analysis(claim: ClaimedJob, *, settings: Settings, classifier: Classifier) -> Rendering:
    """Load the object, score and explain every frame, render the key frame; no database access."""
    started = time.perf_counter()
    data = load_blob(BlobStore(settings.storage_dir), claim.blob_key)
    analysis = analyse_object(
        data, classifier, max_pixels=settings.max_image_pixels, max_bytes=settings.max_decode_bytes
    )
    analysed_at = time.perf_counter()
    pngs, bbox = render_images(analysis, settings)
    finished = time.perf_counter()
    model_ms = [frame.explanation.timings_ms for frame in analysis.frames]
    timings = {
        **{key: round(sum(t[key] for t in model_ms), 3) for key in ("preprocess", "inference", "cam")},
        "frames": float(len(analysis.frames)),
        "analyse": _ms(started, analysed_at),
        "render": _ms(analysed_at, finished),
        "total": _ms(started, finished),
    }
    return Rendering(analysis, pngs, bbox, timings, classifier.manifest, classifier.cam_ready_sha256)


def load_blob(store: BlobStore, key: str) -> bytes:
    try:
        return store.get(key)
    except FileNotFoundError:
        raise BlobMissing(f"stored file {key[:12]}… is missing") from None


def render_images(analysis: InstanceAnalysis, settings: Settings) -> tuple[dict[str, bytes], BoundingBox | None]:
    """The PNGs a radiologist sees of the key frame, all at its original resolution.

    The heatmap is the raw map over its own maximum (its strength is stored beside it);
    the outline is drawn only around a focal region (``models.regions``). ``map`` (the
    levels as 8-bit grey) and ``outline`` (a transparent RGBA layer) let a viewer colour,
    fade and toggle them over the original itself.
    """
    pixels, cam = analysis.display, analysis.cam
    levels = map_levels01(cam)
    outlined, bbox = outline(pixels, analysis.region.mask)
    images = {
        "original": pixels,
        "heatmap": heatmap_rgb(levels),
        "overlay": overlay(pixels, levels, alpha=settings.overlay_alpha),
        "contour": outlined,
        "map": map_levels(levels),
        "outline": outline_layer(cam.shape, analysis.region.mask),
    }
    return {kind: encode_png(image) for kind, image in images.items()}, bbox


def store_result(settings: Settings, claim: ClaimedJob, rendering: Rendering) -> bool:
    """One transaction: end the job (if still ours), write the images and the result, re-triage."""
    store = BlobStore(settings.storage_dir)
    with unit_of_work(settings) as db:
        # Ownership first: the row lock it takes keeps a second claimant out until we commit,
        # and a lost job writes no files at all.
        if not end_if_owned(db, claim, JobStatus.succeeded):
            return False
        keys = {kind: store_blob(db, store, rendering.pngs[kind]) for kind in IMAGE_KINDS}
        result = _result_row(claim, rendering, keys)
        db.add(result)
        db.add_all(_slice_rows(claim, result.id, rendering))
        db.flush()
        settle_study(db, claim.study_id, settings)
    return True


def _result_row(claim: ClaimedJob, rendering: Rendering, keys: dict[str, str]) -> AnalysisResult:
    analysis, bbox, model = rendering.analysis, rendering.bbox, rendering.model
    key, region = analysis.key, analysis.region
    explanation = key.explanation
    return AnalysisResult(
        id=uuid.uuid4(),
        job_id=claim.job_id,
        instance_id=claim.instance_id,
        model_name=model.name,
        model_version=model.version,
        model_sha256=model.sha256,
        cam_ready_sha256=rendering.cam_ready_sha256,
        cam_method=explanation.cam_method,
        input_policy=model.input_policy.intensity,
        resize_filter=model.input_policy.resize,
        input_window=list(key.input_window) if key.input_window else None,
        display_window=list(key.display_window) if key.display_window else None,
        temperature=model.temperature,
        key_frame=key.index,
        label=explanation.label,
        tumour_score=float(explanation.tumour_score),
        probabilities=explanation.probabilities,
        target_label=explanation.target_label,
        cam_strength=explanation.strength,
        region_reason=region.reason,
        region_area_mm2=region.area_mm2,
        box_width_mm=region.box_mm[0] if region.box_mm else None,
        box_height_mm=region.box_mm[1] if region.box_mm else None,
        bbox_x=bbox.x if bbox else None,
        bbox_y=bbox.y if bbox else None,
        bbox_width=bbox.width if bbox else None,
        bbox_height=bbox.height if bbox else None,
        original_key=keys["original"],
        heatmap_key=keys["heatmap"],
        overlay_key=keys["overlay"],
        contour_key=keys["contour"],
        map_key=keys["map"],
        outline_key=keys["outline"],
        timings_ms=rendering.timings_ms,
    )


def _slice_rows(claim: ClaimedJob, result_id: uuid.UUID, rendering: Rendering) -> list[SliceScore]:
    """One row per scored frame: what the series score and the score curve are made of."""
    rows = []
    for frame in rendering.analysis.frames:
        explanation = frame.explanation
        cam = np.ascontiguousarray(explanation.cam, dtype=np.float32)
        rows.append(
            SliceScore(
                result_id=result_id,
                instance_id=claim.instance_id,
                model_name=rendering.model.name,
                model_version=rendering.model.version,
                series_id=claim.series_id,
                frame_index=frame.index,
                position=frame.position,
                tumour_score=float(explanation.tumour_score),
                label=explanation.label,
                probabilities=explanation.probabilities,
                target_label=explanation.target_label,
                cam_strength=explanation.strength,
                cam=cam.tobytes(),
                cam_rows=int(cam.shape[0]),
                cam_columns=int(cam.shape[1]),
            )
        )
    return rows


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000.0, 3)
