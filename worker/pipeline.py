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
import numpy.typing as npt
import redis.exceptions
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError as DatabaseError

from models.errors import ModelLibraryError
from models.inference import Classifier, Explanation
from models.pixels import decode_image
from models.render import BoundingBox, contour, encode_png, heatmap_rgb, overlay
from service.db.session import store_blob, unit_of_work
from service.db.tables import AnalysisResult, JobStatus
from service.db.triage import recompute_study
from service.logging_setup import error_frames
from service.metrics import JOB_LATENCY
from service.settings import Settings
from service.storage import BlobStore
from worker.jobs import RETRIES_EXHAUSTED, ClaimedJob, claim_job, end_if_owned, fail_job, release_job

logger = logging.getLogger(__name__)

# Errors that may pass on their own: a retry later can succeed.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    DatabaseError,
    OSError,
    BrokerError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

IMAGE_KINDS = ("original", "heatmap", "overlay", "contour")


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

    explanation: Explanation
    pngs: dict[str, bytes]
    bbox: BoundingBox | None
    timings_ms: dict[str, float]
    model_name: str
    model_version: str
    model_sha256: str
    cam_method: str


def analyse_job(job_id: uuid.UUID, *, settings: Settings, classifier: Classifier, worker_name: str) -> Outcome:
    """Run one job end to end. Transient errors propagate (after the job is released)."""
    claim = claim_job(settings, job_id, worker_name)
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
            "label": rendering.explanation.label,
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
    """Load, decode, explain and render one instance; no database access."""
    started = time.perf_counter()
    data = load_blob(BlobStore(settings.storage_dir), claim.blob_key)
    decoded = decode_image(data, max_pixels=settings.max_image_pixels)
    decoded_at = time.perf_counter()
    explanation = classifier.explain(decoded.pixels, method=settings.cam_method)
    explained_at = time.perf_counter()
    pngs, bbox = render_images(decoded.pixels, explanation.cam, settings)
    finished = time.perf_counter()
    timings = {
        **{key: float(value) for key, value in explanation.timings_ms.items()},
        "decode": _ms(started, decoded_at),
        "render": _ms(explained_at, finished),
        "total": _ms(started, finished),
    }
    manifest = classifier.manifest
    return Rendering(
        explanation,
        pngs,
        bbox,
        timings,
        model_name=manifest.name,
        model_version=manifest.version,
        model_sha256=classifier.model_sha256,
        cam_method=settings.cam_method,
    )


def load_blob(store: BlobStore, key: str) -> bytes:
    try:
        return store.get(key)
    except FileNotFoundError:
        raise BlobMissing(f"stored file {key[:12]}… is missing") from None


def render_images(
    pixels: npt.NDArray[np.uint8], cam: npt.NDArray[np.float32], settings: Settings
) -> tuple[dict[str, bytes], BoundingBox | None]:
    """The four PNGs a radiologist sees, all at the source image's resolution."""
    height, width = pixels.shape[:2]
    outlined, bbox = contour(pixels, cam, threshold=settings.contour_threshold)
    images = {
        "original": pixels,
        "heatmap": heatmap_rgb(cam, size=(height, width)),
        "overlay": overlay(pixels, cam, alpha=settings.overlay_alpha),
        "contour": outlined,
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
        db.add(_result_row(claim, rendering, keys))
        db.flush()
        recompute_study(db, claim.study_id)
    return True


def _result_row(claim: ClaimedJob, rendering: Rendering, keys: dict[str, str]) -> AnalysisResult:
    explanation, bbox = rendering.explanation, rendering.bbox
    return AnalysisResult(
        job_id=claim.job_id,
        instance_id=claim.instance_id,
        model_name=rendering.model_name,
        model_version=rendering.model_version,
        model_sha256=rendering.model_sha256,
        cam_method=rendering.cam_method,
        label=explanation.label,
        tumour_score=float(explanation.tumour_score),
        probabilities={label: float(p) for label, p in explanation.probabilities.items()},
        bbox_x=bbox.x if bbox else None,
        bbox_y=bbox.y if bbox else None,
        bbox_width=bbox.width if bbox else None,
        bbox_height=bbox.height if bbox else None,
        original_key=keys["original"],
        heatmap_key=keys["heatmap"],
        overlay_key=keys["overlay"],
        contour_key=keys["contour"],
        timings_ms=rendering.timings_ms,
    )


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000.0, 3)
