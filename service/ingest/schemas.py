"""Request form and response bodies of ``POST /api/v1/uploads``."""

from __future__ import annotations

import enum
import uuid

from pydantic import BaseModel, Field


class ClinicalPriority(enum.StrEnum):
    """How urgent the referring clinician says the study is; stored as 0/1/2 on the study."""

    routine = "routine"
    urgent = "urgent"
    stat = "stat"

    @property
    def rank(self) -> int:
        return {"routine": 0, "urgent": 1, "stat": 2}[self.value]


class UploadedInstance(BaseModel):
    sop_instance_uid: str
    study_instance_uid: str
    instance_id: uuid.UUID
    job_id: uuid.UUID | None = Field(description="The instance's analysis job (null only if it has none)")
    duplicate: bool = Field(description="True when this SOP Instance UID was already stored; nothing re-stored")
    not_applicable_reason: str | None = Field(
        None, description="Why the model does not score this instance (stored and shown, no job); null if it does"
    )


class UploadResult(BaseModel):
    """202: the files are stored and their analysis jobs queued (or were already)."""

    instances: list[UploadedInstance]
    accepted: int = Field(description="Instances newly stored by this request")
    duplicates: int = Field(description="Instances that were already stored")
