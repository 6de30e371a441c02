"""Request and response models of the on-demand explanation endpoints."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from models.manifest import CamMethodName
from service.db.tables import ExplanationStatus

FrameIndex = Annotated[int, Field(ge=0, le=2**31 - 1)]


class ExplanationImageKind(enum.StrEnum):
    """The pictures of a finished explanation: the same kinds as the default analysis (the
    original is the instance's own, served by ``/instances/{sop_uid}/original.png``)."""

    heatmap = "heatmap"
    overlay = "overlay"
    contour = "contour"
    map = "map"
    outline = "outline"


class MethodInfo(BaseModel):
    id: str = Field(description="The method id to send as ``method``")
    title: str
    paper: str | None = Field(description="The paper the method is named for; null when the catalogue has none")
    kind: str | None = Field(description="How the map is made (e.g. gradient, perturbation); null when unknown")
    description: str | None = Field(description="What the map means, in a sentence; null when unknown")


class MethodCatalogue(BaseModel):
    methods: list[MethodInfo]
    catalogue: str = Field(description="Where the list came from: ``models.cam`` or ``manifest`` (ids only)")
    metrics: Any = Field(description="Published sanity/faithfulness metrics per method; null when none are published")
    metrics_note: str | None = Field(description="Why ``metrics`` is null; null when metrics are present")


class ExplanationCreate(BaseModel):
    """What a reader asks for: a CAM method and the class whose evidence it maps."""

    model_config = ConfigDict(extra="forbid")

    method: CamMethodName
    target_label: str = Field(min_length=1, max_length=64, description="One of the model's labels")
    frame: FrameIndex | None = Field(None, description="0-based frame; default: the key frame of the analysis")


class ExplanationImages(BaseModel):
    heatmap: str
    overlay: str
    contour: str
    map: str
    outline: str


class ExplanationView(BaseModel):
    id: uuid.UUID
    instance_id: uuid.UUID
    sop_instance_uid: str
    frame_index: int
    model_name: str
    model_version: str
    model_sha256: str
    method: str
    target_label: str
    status: ExplanationStatus
    attempts: int
    error_code: str | None
    error_message: str | None
    cam_strength: float | None = Field(description="The map's unnormalised maximum, in the method's units")
    probabilities: dict[str, Any] | None = Field(description="Calibrated probabilities of the frame")
    region_reason: str | None = Field(description="Why no focal region is outlined; null when one is")
    timings_ms: dict[str, Any] | None
    requested_by: str = Field(description="Name of the token that first asked for it")
    created_at: datetime
    finished_at: datetime | None
    url: str = Field(description="Poll this until ``status`` is done or failed")
    images: ExplanationImages | None = Field(description="PNG URLs once done; null before")


class ExplanationList(BaseModel):
    items: list[ExplanationView]
