"""Query and response models of the worklist, study and image endpoints."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from service.db.tables import JobStatus, StudyStatus

DISCLAIMER = "Research use only. Not a medical device."


class ImageKind(enum.StrEnum):
    """The pictures of an analysed instance (the original is also rendered before analysis).

    ``map`` is the Grad-CAM map as 8-bit grey levels (0 = none, 255 = the map's maximum) and
    ``outline`` the focal region's outline and box on a transparent layer, for a viewer
    that colours, fades and toggles them over the original itself.
    """

    original = "original"
    heatmap = "heatmap"
    overlay = "overlay"
    contour = "contour"
    map = "map"
    outline = "outline"


class WorklistQuery(BaseModel):
    """Filters and keyset paging of ``GET /api/v1/worklist``; every filter is optional."""

    model_config = {"extra": "forbid"}

    status: StudyStatus | None = None
    label: str | None = Field(None, max_length=64, description="Predicted label of the study")
    min_score: float | None = Field(None, ge=0.0, le=1.0, description="Triage score at least this")
    modality: str | None = Field(None, max_length=16)
    date_from: date | None = Field(None, description="Study date on or after (inclusive)")
    date_to: date | None = Field(None, description="Study date on or before (inclusive)")
    patient_id: str | None = Field(None, max_length=64)
    received_after: datetime | None = Field(None, description="Received at or after (inclusive)")
    received_before: datetime | None = Field(None, description="Received before (exclusive)")
    claimed: bool | None = Field(None, description="true: claimed by any reader; false: unclaimed")
    reported: bool | None = Field(None, description="true: reported; false: not yet reported")
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=512, description="next_cursor of the previous page")

    @field_validator("received_after", "received_before")
    @classmethod
    def _in_utc(cls, moment: datetime | None) -> datetime | None:
        """Aware UTC (a naive value is taken as UTC); refuses an offset that leaves years 1..9999."""
        if moment is None or moment.tzinfo is None:
            return moment.replace(tzinfo=UTC) if moment is not None else None
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise ValueError("the time is out of range once converted to UTC") from None


class StudySummary(BaseModel):
    """What the worklist row and the study view both say about a study."""

    study_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    patient_name: str | None
    study_date: date | None
    modality: str | None
    body_part: str | None
    description: str | None
    status: StudyStatus
    triage_score: float | None = Field(description="Highest series score (calibrated, robust to one stray slice)")
    predicted_label: str | None = Field(description="Label of the key slice")
    key_instance_sop_uid: str | None
    key_frame: int | None = Field(description="Frame of the key instance holding the key slice")
    received_at: datetime
    clinical_priority: int
    synthetic: bool


class WorklistRow(StudySummary):
    instance_count: int
    series_count: int
    claimed_by: str | None = Field(description="Token name of the reader holding the study")
    reported_at: datetime | None


class WorklistPage(BaseModel):
    items: list[WorklistRow]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page; null on the last")


class JobView(BaseModel):
    id: uuid.UUID
    status: JobStatus
    attempts: int
    error_code: str | None
    error_message: str | None
    enqueued_at: datetime | None
    finished_at: datetime | None


class BoundingBox(BaseModel):
    x: int
    y: int
    width: int
    height: int


class ImageUrls(BaseModel):
    original: str
    heatmap: str
    overlay: str
    contour: str
    map: str
    outline: str


class RegionView(BaseModel):
    """The outlined region of the key frame's map, or why there is none ("no focal region")."""

    focal: bool
    reason: str | None = Field(description="Why no region is outlined; null when one is")
    bbox: BoundingBox | None = Field(description="Pixels of the original image")
    area_mm2: float | None = Field(description="Region area when Pixel Spacing is known")
    box_width_mm: float | None
    box_height_mm: float | None


class ResultView(BaseModel):
    label: str
    tumour_score: float = Field(description="Calibrated tumour probability of the key frame")
    probabilities: dict[str, Any] = Field(description="Calibrated (temperature-scaled) probabilities of the key frame")
    key_frame: int
    target_label: str | None = Field(description="The class the map explains: the most likely tumour class")
    cam_strength: float | None = Field(description="The map's unnormalised maximum, in the method's units")
    model_name: str
    model_version: str
    model_sha256: str
    cam_ready_sha256: str | None
    cam_method: str
    temperature: float | None
    input_policy: str | None = Field(description="How the model input was made from stored values")
    resize_filter: str | None
    input_window: list[float] | None = Field(description="(center, width) mapped to the model's 0..255")
    display_window: list[float] | None = Field(description="(center, width) of the displayed picture")
    region: RegionView
    bbox: BoundingBox | None
    timings_ms: dict[str, Any]
    created_at: datetime
    images: ImageUrls


class InstanceView(BaseModel):
    sop_instance_uid: str
    sop_class_uid: str | None
    instance_number: int | None
    source_kind: str
    rows: int | None
    columns: int | None
    frame_count: int
    not_applicable_reason: str | None = Field(description="Why the model does not score it; null when it does")
    original_url: str = Field(description="Rendered from the stored file until a result exists")
    job: JobView | None
    result: ResultView | None


class SeriesView(BaseModel):
    series_instance_uid: str
    series_number: int | None
    modality: str | None
    body_part: str | None
    description: str | None
    complete: bool = Field(description="Quiet for the configured period with no pending job")
    series_score: float | None = Field(description="Best mean calibrated tumour probability of adjacent slices")
    predicted_label: str | None
    scored_slices: int
    key_instance_sop_uid: str | None
    key_frame: int | None
    instances: list[InstanceView]


class SliceView(BaseModel):
    """One scored frame of the series, in anatomical order."""

    sop_instance_uid: str
    instance_number: int | None
    frame_index: int
    position_mm: float | None = Field(description="Along the slice normal (PS3.3 C.7.6.2.1.1)")
    tumour_score: float = Field(description="Calibrated tumour probability of the slice")
    label: str
    probabilities: dict[str, float] = Field(description="Calibrated class probabilities of the slice")


class SeriesSlices(BaseModel):
    """The per-slice score curve of a series, ordered by position (else Instance Number, frame)."""

    series_instance_uid: str
    complete: bool
    series_score: float | None
    key_index: int | None = Field(description="Index into ``slices`` of the key slice")
    slices: list[SliceView]


class FeedbackView(BaseModel):
    """A reader's verdict on the model's label (service.workflow)."""

    model_config = {"from_attributes": True}

    reader: str
    agrees: bool
    reader_label: str = Field(description="The label the reader says is right")
    model_label: str | None = Field(description="The study's predicted label when the feedback was given")
    model_name: str | None
    model_version: str | None
    comment: str | None
    created_at: datetime

    @field_validator("created_at")
    @classmethod
    def _aware(cls, moment: datetime) -> datetime:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class StudyDetail(StudySummary):
    study_time: str | None
    claimed_by: str | None = Field(description="Token name of the reader holding the study")
    claimed_at: datetime | None
    reported_by: str | None
    reported_at: datetime | None
    feedback: list[FeedbackView] = Field(description="Readers' verdicts, oldest first")
    labels: list[str] = Field(description="The active model's labels (the choices for feedback)")
    series: list[SeriesView]
    results_generation: int = Field(description="Generations of result objects (SR, SC, PR) made; 0: none yet")
    results_delivered_at: datetime | None = Field(description="When the current objects reached every destination")
    turnaround_seconds: float | None = Field(
        description="From the last instance received to the result objects stored at every destination"
    )
    results_url: str = Field(description="The result objects and their deliveries")
    disclaimer: str = DISCLAIMER
