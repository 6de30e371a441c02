"""Request and response models of the reading workflow, audit and statistics endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.worklist.schemas import FeedbackView

__all__ = ["AuditPage", "AuditQuery", "AuditView", "FeedbackIn", "FeedbackView", "Stats", "StudyClaim"]


class StudyClaim(BaseModel):
    """Who holds the study's reading task, and who reported it."""

    study_instance_uid: str
    claimed_by: str | None = Field(description="Token name of the reader holding the claim")
    claimed_at: datetime | None
    reported_by: str | None
    reported_at: datetime | None


class FeedbackIn(BaseModel):
    """A reader's verdict on the model's label: agree, or name the right label."""

    model_config = {"extra": "forbid"}

    agrees: bool
    label: str | None = Field(None, max_length=64, description="Required when not agreeing: the right label")
    comment: str | None = Field(None, max_length=1000)


class AuditQuery(BaseModel):
    model_config = {"extra": "forbid"}

    limit: int = Field(100, ge=1, le=1000)
    after_id: int | None = Field(None, ge=0, description="next_after_id of the previous page")
    actor: str | None = Field(None, max_length=128)
    action: str | None = Field(None, max_length=32)
    study_uid: str | None = Field(None, max_length=64)


class AuditView(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    study_instance_uid: str | None
    client: str | None
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditView]
    next_after_id: int | None = Field(description="Pass as ``after_id`` for the next page; null on the last")


class Agreement(BaseModel):
    agreed: int
    total: int
    rate: float | None = Field(description="agreed / total; null when no feedback")


class FeedbackStats(BaseModel):
    labels: list[str]
    confusion: dict[str, dict[str, int]] = Field(description="model label -> reader label -> count")
    agreement: dict[str, Agreement] = Field(description="Per model label")


class ProcessingSeconds(BaseModel):
    count: int
    p50: float | None
    p95: float | None


class RecentFailure(BaseModel):
    error_code: str | None
    finished_at: datetime | None


class FailureStats(BaseModel):
    total: int
    by_code: dict[str, int]
    recent: list[RecentFailure] = Field(description="The last 20, newest first")


class Stats(BaseModel):
    feedback: FeedbackStats
    queue: dict[str, int] = Field(description="Analysis jobs per status")
    processing_seconds: ProcessingSeconds = Field(description="finished_at - started_at of jobs finished in 24 h")
    failures: FailureStats
