"""Worklist paging and the study view, read straight from the database (the source of truth).

Order: clinical priority, then AI suspicion, then age, i.e. ``clinical_priority DESC,
coalesce(triage_score, -1) DESC, received_at ASC, id ASC``: unscored studies sort below
every scored one, and within equal scores the oldest study comes first. The order is
stored on the study as an ascending key (``service.db.tables.sort_key_of``):
``(sort_priority, sort_score, received_at, id)``, which an index per filter reads in order.

Paging is keyset on that whole tuple (the cursor holds the last row's key, compared as one
row value), never OFFSET: studies that arrive while someone pages sort wherever they
belong without shifting the rows still to come, so no page repeats or skips a study whose
sort key did not change between the requests. A study whose triage score changes in
between (its analysis finished) moves; it may then be seen twice or not at all in that
pass, and the next refresh shows it in place.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select, tuple_
from sqlalchemy.orm import Session, selectinload

from service.active_model import ModelKey
from service.db.tables import AnalysisJob, AnalysisResult, Feedback, Instance, Series, Study, as_utc
from service.errors import NotFound
from service.worklist.cursor import decode_cursor, encode_cursor, sort_key
from service.worklist.schemas import (
    BoundingBox,
    FeedbackView,
    ImageKind,
    ImageUrls,
    InstanceView,
    JobView,
    RegionView,
    ResultView,
    SeriesView,
    StudyDetail,
    WorklistPage,
    WorklistQuery,
    WorklistRow,
)

ImageUrl = Callable[[str, ImageKind], str]
SORT_KEY = (Study.sort_priority, Study.sort_score, Study.received_at, Study.id)


class StudyNotFound(NotFound):
    code = "study_not_found"


def page(db: Session, query: WorklistQuery) -> WorklistPage:
    """One page of the worklist plus the cursor of the next one."""
    stmt = _worklist_select().where(*_filters(query))
    if query.cursor is not None:
        stmt = stmt.where(tuple_(*SORT_KEY) > tuple(decode_cursor(query.cursor)))
    rows = db.execute(stmt.limit(query.limit + 1)).all()
    items = [_row(row) for row in rows[: query.limit]]
    more = len(rows) > query.limit
    last = rows[query.limit - 1] if more else None
    next_cursor = encode_cursor(sort_key(last.Study)) if last is not None else None
    return WorklistPage(items=items, next_cursor=next_cursor)


def _worklist_select() -> Select[Any]:
    """Studies only in FROM (the rest are per-row subqueries), so the plan is the ordered index
    scan under the LIMIT whatever the statistics of the other tables."""
    key_sop = select(Instance.sop_instance_uid).where(Instance.id == Study.key_instance_id).scalar_subquery()
    instance_count = select(func.count(Instance.id)).where(Instance.study_id == Study.id).scalar_subquery()
    series_count = select(func.count(Series.id)).where(Series.study_id == Study.id).scalar_subquery()
    columns = (key_sop.label("key_sop"), instance_count.label("instance_count"), series_count.label("series_count"))
    return select(Study, *columns).order_by(*SORT_KEY)


def _filters(query: WorklistQuery) -> list[ColumnElement[bool]]:
    """Every given filter narrows the list; received_* is the half-open interval [after, before).

    ``min_score`` is said on ``sort_score`` (= -triage_score; 1.0, never matched, when
    unscored) so that it is an index condition of the order index rather than a filter.
    """
    conditions: list[ColumnElement[bool]] = []
    if query.status is not None:
        conditions.append(Study.status == query.status)
    if query.label is not None:
        conditions.append(Study.predicted_label == query.label)
    if query.min_score is not None:
        conditions.append(Study.sort_score <= -query.min_score)
    if query.modality is not None:
        conditions.append(Study.modality == query.modality)
    if query.date_from is not None:
        conditions.append(Study.study_date >= query.date_from)
    if query.date_to is not None:
        conditions.append(Study.study_date <= query.date_to)
    if query.patient_id is not None:
        conditions.append(Study.patient_id == query.patient_id)
    if query.received_after is not None:
        conditions.append(Study.received_at >= query.received_after)
    if query.received_before is not None:
        conditions.append(Study.received_at < query.received_before)
    if query.claimed is not None:
        conditions.append(Study.claimed_by.is_not(None) if query.claimed else Study.claimed_by.is_(None))
    if query.reported is not None:
        conditions.append(Study.reported_at.is_not(None) if query.reported else Study.reported_at.is_(None))
    return conditions


def summary_fields(study: Study, key_sop: str | None) -> dict[str, Any]:
    """The StudySummary fields of ``study``, shared by the worklist row and the study view."""
    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "patient_id": study.patient_id,
        "patient_name": study.patient_name,
        "study_date": study.study_date,
        "modality": study.modality,
        "body_part": study.body_part,
        "description": study.description,
        "status": study.status,
        "triage_score": study.triage_score,
        "predicted_label": study.predicted_label,
        "key_instance_sop_uid": key_sop,
        "key_frame": study.key_frame,
        "received_at": as_utc(study.received_at),
        "clinical_priority": study.clinical_priority,
        "synthetic": study.synthetic,
    }


def _row(row: Any) -> WorklistRow:
    study = row.Study
    return WorklistRow(
        **summary_fields(study, row.key_sop),
        instance_count=row.instance_count,
        series_count=row.series_count,
        claimed_by=study.claimed_by,
        reported_at=_utc(study.reported_at),
    )


def _utc(moment: datetime | None) -> datetime | None:
    return as_utc(moment) if moment is not None else None


def study_detail(
    db: Session, study_uid: str, image_url: ImageUrl, results_url: str, labels: list[str], model: ModelKey
) -> StudyDetail:
    """The study with its series, instances, jobs, latest results, reading state and feedback.

    Jobs and results are ``model``'s (the active one): shadow results are never shown to readers."""
    study = db.scalar(
        select(Study)
        .where(Study.study_instance_uid == study_uid)
        .options(selectinload(Study.series).selectinload(Series.instances).selectinload(Instance.jobs))
        .options(selectinload(Study.series).selectinload(Series.instances).selectinload(Instance.results))
    )
    if study is None:
        raise StudyNotFound("no study with this Study Instance UID")
    instances = [instance for series in study.series for instance in series.instances]
    sop_of = {instance.id: instance.sop_instance_uid for instance in instances}
    return StudyDetail(
        **summary_fields(study, sop_of.get(study.key_instance_id) if study.key_instance_id else None),
        study_time=study.study_time,
        claimed_by=study.claimed_by,
        claimed_at=_utc(study.claimed_at),
        reported_by=study.reported_by,
        reported_at=_utc(study.reported_at),
        feedback=[FeedbackView.model_validate(row) for row in _feedback(db, study)],
        labels=labels,
        series=[_series_view(series, image_url, sop_of, model) for series in study.series],
        results_generation=study.results_generation,
        results_delivered_at=as_utc(study.results_delivered_at) if study.results_delivered_at else None,
        turnaround_seconds=study.turnaround_seconds,
        results_url=results_url,
    )


def _feedback(db: Session, study: Study) -> list[Feedback]:
    return list(db.scalars(select(Feedback).where(Feedback.study_id == study.id).order_by(Feedback.created_at)))


def _series_view(series: Series, image_url: ImageUrl, sop_of: dict[uuid.UUID, str], model: ModelKey) -> SeriesView:
    return SeriesView(
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        modality=series.modality,
        body_part=series.body_part,
        description=series.description,
        complete=series.completed_at is not None,
        series_score=series.series_score,
        predicted_label=series.predicted_label,
        scored_slices=series.scored_slices,
        key_instance_sop_uid=sop_of.get(series.key_instance_id) if series.key_instance_id else None,
        key_frame=series.key_frame,
        instances=[_instance_view(instance, image_url, model) for instance in series.instances],
    )


def _instance_view(instance: Instance, image_url: ImageUrl, model: ModelKey) -> InstanceView:
    job = next((j for j in instance.jobs if (j.model_name, j.model_version) == (model.name, model.version)), None)
    result = latest_result(instance.results, model)
    return InstanceView(
        sop_instance_uid=instance.sop_instance_uid,
        sop_class_uid=instance.sop_class_uid,
        instance_number=instance.instance_number,
        source_kind=instance.source_kind,
        rows=instance.rows,
        columns=instance.columns,
        frame_count=instance.frame_count,
        not_applicable_reason=instance.not_applicable_reason,
        original_url=image_url(instance.sop_instance_uid, ImageKind.original),
        job=_job_view(job) if job is not None else None,
        result=_result_view(result, instance.sop_instance_uid, image_url) if result is not None else None,
    )


def _job_view(job: AnalysisJob) -> JobView:
    return JobView(
        id=job.id,
        status=job.status,
        attempts=job.attempts,
        error_code=job.error_code,
        error_message=job.error_message,
        enqueued_at=as_utc(job.enqueued_at) if job.enqueued_at else None,
        finished_at=as_utc(job.finished_at) if job.finished_at else None,
    )


def _bbox(result: AnalysisResult) -> BoundingBox | None:
    """The CAM's hot region in pixels of the original image, when the worker found one."""
    x, y, width, height = result.bbox_x, result.bbox_y, result.bbox_width, result.bbox_height
    if x is None or y is None or width is None or height is None:
        return None
    return BoundingBox(x=x, y=y, width=width, height=height)


def latest_result(results: list[AnalysisResult], model: ModelKey) -> AnalysisResult | None:
    """The newest of ``model``'s results (readers see the active model's only)."""
    own = [r for r in results if (r.model_name, r.model_version) == (model.name, model.version)]
    return max(own, key=lambda r: (as_utc(r.created_at), str(r.id)), default=None)


def _result_view(result: AnalysisResult, sop_uid: str, image_url: ImageUrl) -> ResultView:
    bbox = _bbox(result)
    return ResultView(
        label=result.label,
        tumour_score=result.tumour_score,
        probabilities=result.probabilities,
        key_frame=result.key_frame,
        target_label=result.target_label,
        cam_strength=result.cam_strength,
        model_name=result.model_name,
        model_version=result.model_version,
        model_sha256=result.model_sha256,
        cam_ready_sha256=result.cam_ready_sha256,
        cam_method=result.cam_method,
        temperature=result.temperature,
        input_policy=result.input_policy,
        resize_filter=result.resize_filter,
        input_window=result.input_window,
        display_window=result.display_window,
        region=RegionView(
            focal=bbox is not None,
            reason=result.region_reason,
            bbox=bbox,
            area_mm2=result.region_area_mm2,
            box_width_mm=result.box_width_mm,
            box_height_mm=result.box_height_mm,
        ),
        bbox=bbox,
        timings_ms=result.timings_ms,
        created_at=as_utc(result.created_at),
        images=ImageUrls(**{kind.value: image_url(sop_uid, kind) for kind in ImageKind}),
    )
