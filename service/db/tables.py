"""SQLAlchemy 2 tables. Every change here is an Alembic migration in ``migrations/``."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)  # PS3.5 §9.1: a UID is at most 64 characters


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes; PostgreSQL aware ones. Answer aware UTC always."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@lru_cache(maxsize=1)
def builtin_model() -> tuple[str, str]:
    """Name and version of the built-in default model: the model of a job or slice row written
    without one (rows from code that predates the registry; ingest and workers always set it)."""
    from models.registry import DEFAULT_MODEL_NAME, get_manifest

    return DEFAULT_MODEL_NAME, get_manifest(DEFAULT_MODEL_NAME).version


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class StudyStatus(enum.StrEnum):
    pending = "pending"  # at least one instance still waiting for analysis
    analysed = "analysed"  # every instance has a result
    failed = "failed"  # nothing pending and at least one instance could not be analysed
    not_applicable = "not_applicable"  # nothing in the study is something the model may score


class Role(enum.StrEnum):
    ingest = "ingest"
    reader = "reader"
    admin = "admin"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, native_enum=False, length=16, validate_strings=True)


SORT_COLUMNS = ("sort_priority", "sort_score", "received_at", "id")
SORTED_FILTERS = ("status", "patient_id", "predicted_label", "modality")  # equality filters: (column, *sort)
SORTED_SUBSETS = {"unreported": "reported_at IS NULL", "claimed": "claimed_by IS NOT NULL"}  # partial indexes


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[date | None] = mapped_column(Date)
    study_time: Mapped[str | None] = mapped_column(String(16))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(64))
    synthetic: Mapped[bool] = mapped_column(default=False)
    clinical_priority: Mapped[int] = mapped_column(SmallInteger, default=0)
    status: Mapped[StudyStatus] = mapped_column(_enum(StudyStatus, "study_status"), default=StudyStatus.pending)
    triage_score: Mapped[float | None] = mapped_column(Float)
    predicted_label: Mapped[str | None] = mapped_column(String(64))
    key_instance_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("instances.id", use_alter=True, ondelete="SET NULL")
    )
    key_series_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("series.id", use_alter=True, ondelete="SET NULL")
    )
    key_frame: Mapped[int | None] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # Results as DICOM (service.results): set when the study settles as analysed, cleared once
    # the result objects of a new generation are stored; turnaround is measured from the last
    # instance received to the last result object stored at every destination.
    results_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    results_generation: Mapped[int] = mapped_column(Integer, default=0)
    results_delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    turnaround_seconds: Mapped[float | None] = mapped_column(Float)
    # Reading workflow (service.workflow): one reader holds a claim at a time; reporting ends it.
    # The claim's transaction UID is the UPS-RS Transaction UID of the study's workitem.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claim_transaction_uid: Mapped[str | None] = mapped_column(UID)
    reported_by: Mapped[str | None] = mapped_column(String(128))
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Worklist order as columns that all ascend (service.worklist): set by ``sort_key_of`` on
    # every ORM insert and update; one index per filter serves ``(sort key) > (cursor)``.
    sort_priority: Mapped[int] = mapped_column(SmallInteger)
    sort_score: Mapped[float] = mapped_column(Float)

    series: Mapped[list[Series]] = relationship(
        back_populates="study", order_by="Series.series_number", foreign_keys="Series.study_id"
    )

    __table_args__ = (
        Index("ix_studies_received_at", "received_at"),
        Index("ix_studies_study_date", "study_date"),
        Index(
            "ix_studies_results_due_at",
            "results_due_at",
            postgresql_where=text("results_due_at IS NOT NULL"),
            sqlite_where=text("results_due_at IS NOT NULL"),
        ),
        Index("ix_studies_sort", *SORT_COLUMNS),
        *(Index(f"ix_studies_{column}_sort", column, *SORT_COLUMNS) for column in SORTED_FILTERS),
        *(
            Index(f"ix_studies_{name}_sort", *SORT_COLUMNS, postgresql_where=text(where), sqlite_where=text(where))
            for name, where in SORTED_SUBSETS.items()
        ),
    )


UNSCORED_SORT = 1.0  # sort_score of an unscored study: after every scored one (scores are 0..1)


def sort_key_of(study: Study) -> tuple[int, float]:
    """``(sort_priority, sort_score)`` of ``study``: the worklist order ``clinical_priority DESC,
    coalesce(triage_score, -1) DESC`` negated, so that the whole key ascends."""
    priority = study.clinical_priority if study.clinical_priority is not None else 0  # the column default
    score = study.triage_score
    return -priority, (-score if score is not None else UNSCORED_SORT)


@event.listens_for(Study, "before_insert")
@event.listens_for(Study, "before_update")
def _store_sort_key(_mapper: Mapper[Study], _connection: Any, study: Study) -> None:
    """Every ORM flush of a study keeps its sort columns in step; a bulk ``update(Study)`` that
    changes clinical_priority or triage_score must set them itself (none does today)."""
    study.sort_priority, study.sort_score = sort_key_of(study)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    study_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(64))
    # Completeness: a series is complete once no instance arrived for the quiet period and
    # none of its jobs is pending; a late instance re-opens it (completed_at back to NULL).
    last_instance_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    series_score: Mapped[float | None] = mapped_column(Float)
    predicted_label: Mapped[str | None] = mapped_column(String(64))
    scored_slices: Mapped[int] = mapped_column(Integer, default=0)
    key_instance_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("instances.id", use_alter=True, ondelete="SET NULL")
    )
    key_frame: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="series", foreign_keys=[study_id])
    __table_args__ = (
        # The sweep's work list: open series by arrival of their last instance (a partial index
        # stays as small as the number of series still arriving).
        Index(
            "ix_series_open_last_instance_at",
            "last_instance_at",
            postgresql_where=text("completed_at IS NULL"),
            sqlite_where=text("completed_at IS NULL"),
        ),
    )
    instances: Mapped[list[Instance]] = relationship(
        back_populates="series", order_by="Instance.instance_number", foreign_keys="Instance.series_id"
    )


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    series_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    source_kind: Mapped[str] = mapped_column(String(8))  # dicom | png | jpeg
    transfer_syntax_uid: Mapped[str | None] = mapped_column(UID)
    blob_key: Mapped[str] = mapped_column(String(80))
    blob_size: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)  # NULL for objects without pixels (SR, KOS, PR)
    columns: Mapped[int | None] = mapped_column(Integer)
    frame_count: Mapped[int] = mapped_column(Integer, default=1)
    not_applicable_reason: Mapped[str | None] = mapped_column(String(200))  # NULL: the model scores it
    # What makes a re-send "the same instance" (PS3.4 B.4.1.3 leaves it to the SCP): the
    # patient/study identity attributes and the pixel data; see service.ingest.fingerprint.
    identity_sha256: Mapped[str | None] = mapped_column(String(64))
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances", foreign_keys=[series_id])
    jobs: Mapped[list[AnalysisJob]] = relationship(back_populates="instance")
    results: Mapped[list[AnalysisResult]] = relationship(back_populates="instance")


class AnalysisJob(Base):
    """One model run over one instance. The row, not the broker message, is the truth."""

    __tablename__ = "analysis_jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    # The model (service.registry) that runs this job: one job per instance and deployed model.
    model_name: Mapped[str] = mapped_column(String(128), default=lambda: builtin_model()[0])
    model_version: Mapped[str] = mapped_column(String(64), default=lambda: builtin_model()[1])
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), default=JobStatus.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    instance: Mapped[Instance] = relationship(back_populates="jobs")

    __table_args__ = (
        Index("ix_analysis_jobs_status_enqueued_at", "status", "enqueued_at"),
        UniqueConstraint("instance_id", "model_name", "model_version", name="uq_analysis_jobs_instance_model"),
    )


class DeploymentRole(enum.StrEnum):
    active = "active"  # drives everything readers see; exactly one (none: the configured model)
    shadow = "shadow"  # scored and stored, never shown to readers as triage
    retired = "retired"  # no new jobs; its stored results stay


class ModelDeployment(Base):
    """A model version installed on this deployment, with its role and routing rules (service.registry)."""

    __tablename__ = "model_deployments"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[DeploymentRole] = mapped_column(_enum(DeploymentRole, "deployment_role"))
    routing_rules: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # attribute -> pattern
    installed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    installed_by: Mapped[str] = mapped_column(String(128))
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    promoted_by: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (UniqueConstraint("model_name", "model_version", name="uq_model_deployments_model"),)


class AnalysisResult(Base):
    __tablename__ = "analysis_results"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("analysis_jobs.id", ondelete="CASCADE"), unique=True)
    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    cam_ready_sha256: Mapped[str | None] = mapped_column(String(64))
    cam_method: Mapped[str] = mapped_column(String(32))
    # How the model input was made (models.manifest.InputPolicy) and the windows used.
    input_policy: Mapped[str | None] = mapped_column(String(32))
    resize_filter: Mapped[str | None] = mapped_column(String(16))
    input_window: Mapped[list[float] | None] = mapped_column(JSON)
    display_window: Mapped[list[float] | None] = mapped_column(JSON)
    temperature: Mapped[float | None] = mapped_column(Float)
    key_frame: Mapped[int] = mapped_column(Integer, default=0)  # the frame the images show
    label: Mapped[str] = mapped_column(String(64))
    tumour_score: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    target_label: Mapped[str | None] = mapped_column(String(64))
    cam_strength: Mapped[float | None] = mapped_column(Float)
    region_reason: Mapped[str | None] = mapped_column(String(200))  # why there is no focal region
    region_area_mm2: Mapped[float | None] = mapped_column(Float)
    box_width_mm: Mapped[float | None] = mapped_column(Float)
    box_height_mm: Mapped[float | None] = mapped_column(Float)
    bbox_x: Mapped[int | None] = mapped_column(Integer)
    bbox_y: Mapped[int | None] = mapped_column(Integer)
    bbox_width: Mapped[int | None] = mapped_column(Integer)
    bbox_height: Mapped[int | None] = mapped_column(Integer)
    original_key: Mapped[str] = mapped_column(String(80))
    heatmap_key: Mapped[str] = mapped_column(String(80))
    overlay_key: Mapped[str] = mapped_column(String(80))
    contour_key: Mapped[str] = mapped_column(String(80))
    map_key: Mapped[str | None] = mapped_column(String(80))  # NULL for results made before 0004
    outline_key: Mapped[str | None] = mapped_column(String(80))
    timings_ms: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    instance: Mapped[Instance] = relationship(back_populates="results")
    slices: Mapped[list[SliceScore]] = relationship(back_populates="result", order_by="SliceScore.frame_index")


class SliceScore(Base):
    """One scored frame: calibrated probabilities, its place in the volume and its raw CAM.

    Kept per frame so a series can be re-scored (a late instance, another aggregation)
    without running the model again, and served as the series' score curve.
    """

    __tablename__ = "slice_scores"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    result_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("analysis_results.id", ondelete="CASCADE"))
    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    model_name: Mapped[str] = mapped_column(String(128), default=lambda: builtin_model()[0])  # the result's
    model_version: Mapped[str] = mapped_column(String(64), default=lambda: builtin_model()[1])
    series_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    frame_index: Mapped[int] = mapped_column(Integer)
    position: Mapped[float | None] = mapped_column(Float)  # mm along the slice normal
    tumour_score: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(64))
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON)
    target_label: Mapped[str] = mapped_column(String(64))
    cam_strength: Mapped[float] = mapped_column(Float)
    cam: Mapped[bytes] = mapped_column(LargeBinary)  # float32, C order, cam_rows x cam_columns
    cam_rows: Mapped[int] = mapped_column(Integer)
    cam_columns: Mapped[int] = mapped_column(Integer)

    result: Mapped[AnalysisResult] = relationship(back_populates="slices")

    __table_args__ = (
        UniqueConstraint(
            "instance_id", "frame_index", "model_name", "model_version", name="uq_slice_scores_instance_frame"
        ),
    )


class ResultKind(enum.StrEnum):
    sr = "sr"  # Comprehensive 3D SR, TID 1500 measurement report
    sc = "sc"  # Secondary Capture of the key slice overlay (burned-in annotation)
    pr = "pr"  # presentation state over the original key slice
    pm = "pm"  # Parametric Map of the heatmap (Grad-CAM values over the original key slice)


class ResultObject(Base):
    """A DICOM object Sightline made from a study's results; its bytes are a blob."""

    __tablename__ = "result_objects"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    study_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    generation: Mapped[int] = mapped_column(Integer)  # the study's results_generation it belongs to
    kind: Mapped[ResultKind] = mapped_column(_enum(ResultKind, "result_kind"))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    blob_key: Mapped[str] = mapped_column(String(80))
    blob_size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    deliveries: Mapped[list[Delivery]] = relationship(back_populates="result_object")


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # waiting for its next attempt
    delivered = "delivered"
    failed = "failed"  # attempts exhausted, or refused for good by the destination


class Delivery(Base):
    """One result object to one configured destination: attempts and the last answer."""

    __tablename__ = "deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    result_object_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("result_objects.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(String(64))
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus, "delivery_status"), default=DeliveryStatus.pending
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[str | None] = mapped_column(String(64))  # e.g. "0x0000" or "HTTP 200"
    last_error: Mapped[str | None] = mapped_column(String(200))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    result_object: Mapped[ResultObject] = relationship(back_populates="deliveries")

    __table_args__ = (
        UniqueConstraint("result_object_id", "destination", name="uq_deliveries_object_destination"),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )


class ApiToken(Base):
    """A bearer token. Only its SHA-256 is stored; the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # NULL: never
    # Updated at most once a minute per token (service.auth.tokens), so reads stay cheap.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Feedback(Base):
    """A reader's verdict on the model's label for a study: agree, or the right label."""

    __tablename__ = "feedback"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    study_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    reader: Mapped[str] = mapped_column(String(128))
    model_label: Mapped[str | None] = mapped_column(String(64))  # the study's label when feedback was given
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    agrees: Mapped[bool] = mapped_column()
    reader_label: Mapped[str] = mapped_column(String(64))  # the label the reader says is right
    comment: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Append-only trail of who did what, when, from where (views, claims, reports, feedback).

    Rows are only ever inserted; on PostgreSQL a trigger refuses UPDATE and DELETE.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))  # the token's name
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))  # view, claim, release, report, feedback, ...
    study_instance_uid: Mapped[str | None] = mapped_column(UID)
    client: Mapped[str | None] = mapped_column(String(64))  # the client's address
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_study_instance_uid", "study_instance_uid"),
    )


class ExplanationStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


EXPLANATION_REQUEST = ("instance_id", "frame_index", "model_name", "model_version", "method", "target_label")


class OnDemandExplanation(Base):
    """Another CAM method or class for one frame, asked for by a reader and computed once.

    The unique request key (instance, frame, model name and version, method, target label)
    makes a repeated request the same row; the worker owns it from its claim (``running``,
    ``attempts`` bumped) to ``done`` or ``failed``, as with ``AnalysisJob``. ``requested_by``
    is the token's name, never patient data.
    """

    __tablename__ = "explanations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    frame_index: Mapped[int] = mapped_column(Integer)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    cam_ready_sha256: Mapped[str | None] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))
    target_label: Mapped[str] = mapped_column(String(64))
    status: Mapped[ExplanationStatus] = mapped_column(
        _enum(ExplanationStatus, "explanation_status"), default=ExplanationStatus.queued
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    heatmap_key: Mapped[str | None] = mapped_column(String(80))
    overlay_key: Mapped[str | None] = mapped_column(String(80))
    contour_key: Mapped[str | None] = mapped_column(String(80))
    map_key: Mapped[str | None] = mapped_column(String(80))
    outline_key: Mapped[str | None] = mapped_column(String(80))
    cam_strength: Mapped[float | None] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    region_reason: Mapped[str | None] = mapped_column(String(200))
    timings_ms: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    requested_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint(*EXPLANATION_REQUEST, name="uq_explanations_request"),
        Index("ix_explanations_status_enqueued_at", "status", "enqueued_at"),
    )
