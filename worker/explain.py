"""On-demand explanations: one row of ``explanations``, claimed, computed, stored, each a short step.

A reader asks for another CAM method or class for one frame (``service.explanations``);
this computes it with the same pieces as the default analysis: the stored object is
decoded as the pipeline decodes it (one frame, the manifest's input policy), the
classifier explains it (``Classifier.explain(picture, method, target)``) and
``worker.pipeline.render_images`` draws the same kinds of picture. The row has one owner,
as a job does (``worker.jobs``): the claim moves it to ``running`` and bumps ``attempts``;
every later write checks both. Transient errors hand the row back for Celery's retry;
permanent ones fail it with a code; ``reconcile_explanations`` re-sends rows whose message
or worker was lost.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import OperationalError as DatabaseError

from models.analysis import FrameResult, frame_analysis
from models.decoded_image import DecodedImage
from models.dicom_pixels import decode_dicom
from models.dicom_read import read_dicom
from models.errors import ModelLibraryError
from models.inference import Classifier, Explanation
from models.raster import decode_raster, sniff_kind
from models.slice_geometry import Spacing, pixel_spacing
from service.active_model import ModelKey
from service.db.session import store_blob, unit_of_work
from service.db.tables import ExplanationStatus, Instance, OnDemandExplanation, utcnow
from service.logging_setup import error_frames
from service.queue import analysis_queue, send_explanations_after_commit
from service.settings import Settings
from service.storage import BlobStore
from worker.jobs import MAX_ERROR_MESSAGE, RETRIES_EXHAUSTED, deadline_cutoff
from worker.pipeline import TRANSIENT_ERRORS, BlobMissing, Outcome, load_blob, render_images
from worker.reconcile import BATCH_SIZE, ReconcileReport

logger = logging.getLogger(__name__)

IMAGE_KINDS = ("heatmap", "overlay", "contour", "map", "outline")


class ExplanationRefused(Exception):
    """The row asks for something this worker can never compute (another model, a lost label)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ClaimedExplanation:
    """What a worker needs to compute one explanation, read in the claiming transaction."""

    explanation_id: uuid.UUID
    attempts: int
    instance_id: uuid.UUID
    blob_key: str
    frame_index: int
    model_name: str
    model_version: str
    method: str
    target_label: str

    def log_ids(self) -> dict[str, str]:
        return {"explanation_id": str(self.explanation_id), "instance_id": str(self.instance_id)}


@dataclass(frozen=True)
class ExplanationRendering:
    explanation: Explanation
    pngs: dict[str, bytes]
    region_reason: str | None
    timings_ms: dict[str, float]
    cam_ready_sha256: str


def explain_job(explanation_id: uuid.UUID, *, settings: Settings, classifier: Classifier, worker_name: str) -> Outcome:
    """Compute one explanation end to end. Transient errors propagate (after the row is released)."""
    claim = claim_explanation(settings, explanation_id, worker_name)
    if claim is None:
        logger.info(
            "explanation not claimable; duplicate delivery ignored", extra={"explanation_id": str(explanation_id)}
        )
        return Outcome.skipped
    try:
        rendering = render_explanation(claim, settings=settings, classifier=classifier)
        stored = store_explanation(settings, claim, rendering)
    except (ModelLibraryError, BlobMissing, ExplanationRefused) as exc:
        fail_explanation(settings, claim, exc.code, f"{type(exc).__name__}: {exc}")
        return Outcome.failed
    except TRANSIENT_ERRORS as exc:
        return _after_transient_error(claim, settings, exc)
    except Exception as exc:  # the one boundary: a row must never stay "running" on an unnamed error
        logger.error("unexpected error; explanation failed", extra={**claim.log_ids(), "where": error_frames(exc)})
        fail_explanation(settings, claim, "internal_error", f"unexpected {type(exc).__name__} in the worker")
        return Outcome.failed
    if not stored:
        logger.warning("explanation taken over before it was stored; dropped", extra=claim.log_ids())
        return Outcome.lost
    logger.info(
        "explanation done", extra={**claim.log_ids(), "method": claim.method, "timings_ms": rendering.timings_ms}
    )
    return Outcome.succeeded


def _after_transient_error(claim: ClaimedExplanation, settings: Settings, exc: BaseException) -> Outcome:
    if claim.attempts >= settings.job_max_attempts:
        fail_explanation(settings, claim, RETRIES_EXHAUSTED, f"{type(exc).__name__} on attempt {claim.attempts}")
        return Outcome.failed
    try:
        with unit_of_work(settings) as db:
            db.execute(
                update(OnDemandExplanation)
                .where(*_owned_by(claim))
                .values(status=ExplanationStatus.queued, enqueued_at=utcnow())
            )
    except DatabaseError:
        logger.warning("could not release explanation; the reconciler will re-queue it", extra=claim.log_ids())
    logger.warning("transient error; explanation will be retried", extra={**claim.log_ids(), "attempt": claim.attempts})
    raise exc


def claim_explanation(settings: Settings, explanation_id: uuid.UUID, worker_name: str) -> ClaimedExplanation | None:
    """Take the row if it is queued, or running past the deadline (its worker died)."""
    now = utcnow()
    row = OnDemandExplanation
    claimable = or_(
        row.status == ExplanationStatus.queued,
        and_(row.status == ExplanationStatus.running, row.started_at < deadline_cutoff(settings, now)),
    )
    with unit_of_work(settings) as db:
        attempts = db.scalar(
            update(row)
            .where(row.id == explanation_id, claimable)
            .values(status=ExplanationStatus.running, attempts=row.attempts + 1, started_at=now, worker=worker_name)
            .returning(row.attempts)
            .execution_options(synchronize_session=False)
        )
        if attempts is None:
            return None
        found = db.execute(
            select(row, Instance.blob_key)
            .join(Instance, Instance.id == row.instance_id)
            .where(row.id == explanation_id)
        ).one()
    claimed: OnDemandExplanation = found[0]
    return ClaimedExplanation(
        explanation_id, attempts, claimed.instance_id, found[1], claimed.frame_index,
        claimed.model_name, claimed.model_version, claimed.method, claimed.target_label,
    )  # fmt: skip


def _owned_by(claim: ClaimedExplanation) -> tuple[ColumnElement[bool], ...]:
    return (
        OnDemandExplanation.id == claim.explanation_id,
        OnDemandExplanation.status == ExplanationStatus.running,
        OnDemandExplanation.attempts == claim.attempts,
    )


def render_explanation(
    claim: ClaimedExplanation, *, settings: Settings, classifier: Classifier
) -> ExplanationRendering:
    """Decode the frame, explain it with the row's method and target, render; no database access."""
    manifest = classifier.manifest
    if (manifest.name, manifest.version) != (claim.model_name, claim.model_version):
        raise ExplanationRefused(
            "model_unavailable", f"this worker runs {manifest.name} {manifest.version}, not {claim.model_version}"
        )
    if claim.target_label not in manifest.labels:
        raise ExplanationRefused("unknown_label", f"the model has no label {claim.target_label!r}")
    started = time.perf_counter()
    data = load_blob(BlobStore(settings.storage_dir), claim.blob_key)
    image, spacing = decode_frame(data, classifier, claim.frame_index, settings)
    decoded = time.perf_counter()
    explanation = classifier.explain(image.model_pixels, claim.method, manifest.labels.index(claim.target_label))
    explained = time.perf_counter()
    pngs, region_reason = render_frame(image, explanation, spacing, classifier, settings)
    finished = time.perf_counter()
    timings = {
        **{key: round(value, 3) for key, value in explanation.timings_ms.items()},
        "decode": _ms(started, decoded),
        "explain": _ms(decoded, explained),
        "render": _ms(explained, finished),
        "total": _ms(started, finished),
    }
    return ExplanationRendering(explanation, pngs, region_reason, timings, classifier.cam_ready_sha256)


def decode_frame(
    data: bytes, classifier: Classifier, frame: int, settings: Settings
) -> tuple[DecodedImage, Spacing | None]:
    """Frame ``frame`` as the pipeline decodes it: display pixels and the manifest's model input."""
    limits = {"max_pixels": settings.max_image_pixels, "max_bytes": settings.max_decode_bytes}
    if sniff_kind(data) in ("png", "jpeg"):
        if frame != 0:
            raise ExplanationRefused("frame_out_of_range", f"a PNG or JPEG has one frame, not frame {frame}")
        return decode_raster(data, **limits), None
    ds = read_dicom(data)
    image = decode_dicom(ds, index=frame, input_policy=classifier.manifest.input_policy, **limits)
    return image, pixel_spacing(ds, frame)


def render_frame(
    image: DecodedImage, explanation: Explanation, spacing: Spacing | None, classifier: Classifier, settings: Settings
) -> tuple[dict[str, bytes], str | None]:
    """The default analysis's pictures (``worker.pipeline.render_images``) of this one map."""
    frame = FrameResult(image.frame_index, None, explanation, image.window, image.input_window)
    analysis = frame_analysis(classifier, frame, image, spacing, [frame])
    pngs, _ = render_images(analysis, settings)
    return {kind: pngs[kind] for kind in IMAGE_KINDS}, analysis.region.reason


def store_explanation(settings: Settings, claim: ClaimedExplanation, rendering: ExplanationRendering) -> bool:
    """One transaction: end the row as done (if still ours), then write its images and numbers."""
    store = BlobStore(settings.storage_dir)
    with unit_of_work(settings) as db:
        ended = db.scalar(
            update(OnDemandExplanation)
            .where(*_owned_by(claim))
            .values(status=ExplanationStatus.done, finished_at=utcnow(), error_code=None, error_message=None)
            .returning(OnDemandExplanation.id)
            .execution_options(synchronize_session=False)
        )
        if ended is None:  # the row lock taken above keeps a second claimant out until we commit
            return False
        keys = {f"{kind}_key": store_blob(db, store, rendering.pngs[kind]) for kind in IMAGE_KINDS}
        explanation = rendering.explanation
        db.execute(
            update(OnDemandExplanation)
            .where(OnDemandExplanation.id == claim.explanation_id)
            .values(
                **keys,
                cam_strength=float(explanation.strength),
                probabilities=explanation.probabilities,
                region_reason=rendering.region_reason,
                timings_ms=rendering.timings_ms,
                cam_ready_sha256=rendering.cam_ready_sha256,
            )
            .execution_options(synchronize_session=False)
        )
    return True


def fail_explanation(settings: Settings, claim: ClaimedExplanation, code: str, message: str) -> bool:
    """End the row as failed; the message names the error, never patient data."""
    clipped = message if len(message) <= MAX_ERROR_MESSAGE else message[: MAX_ERROR_MESSAGE - 1] + "…"
    with unit_of_work(settings) as db:
        ended = db.scalar(
            update(OnDemandExplanation)
            .where(*_owned_by(claim))
            .values(status=ExplanationStatus.failed, finished_at=utcnow(), error_code=code, error_message=clipped)
            .returning(OnDemandExplanation.id)
            .execution_options(synchronize_session=False)
        )
    logger.warning("explanation failed", extra={**claim.log_ids(), "error_code": code, "attempt": claim.attempts})
    return ended is not None


def stuck_explanations(cutoff: datetime) -> ColumnElement[bool]:
    """Queued without a message for too long, or running without a live worker for too long."""
    row = OnDemandExplanation
    queued_since = or_(row.enqueued_at < cutoff, and_(row.enqueued_at.is_(None), row.created_at < cutoff))
    return or_(
        and_(row.status == ExplanationStatus.queued, queued_since),
        and_(row.status == ExplanationStatus.running, row.started_at < cutoff),
    )


def reconcile_explanations(settings: Settings, *, now: datetime | None = None) -> ReconcileReport:
    """Re-queue and re-send stuck explanations (one batch), or fail those out of attempts."""
    now = now or utcnow()
    with unit_of_work(settings) as db:
        rows = db.scalars(
            select(OnDemandExplanation)
            .where(stuck_explanations(deadline_cutoff(settings, now)))
            .order_by(OnDemandExplanation.created_at)
            .limit(BATCH_SIZE)
            .with_for_update(skip_locked=True)
        ).all()
        requeue: dict[uuid.UUID, str] = {}
        for row in rows:
            if row.attempts >= settings.job_max_attempts:
                row.status, row.finished_at = ExplanationStatus.failed, now
                row.error_code, row.error_message = RETRIES_EXHAUSTED, f"not done after {row.attempts} attempts"
            else:
                row.status, row.enqueued_at = ExplanationStatus.queued, now
                requeue[row.id] = analysis_queue(ModelKey(row.model_name, row.model_version), settings)
        db.flush()
        send_explanations_after_commit(db, requeue, settings)
    report = ReconcileReport(requeued=len(requeue), failed=len(rows) - len(requeue))
    if rows:
        logger.warning("stuck explanations reconciled", extra=report.as_dict())
    return report


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000.0, 3)
