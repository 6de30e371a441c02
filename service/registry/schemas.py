"""What ``/api/v1/models`` answers: deployments with their roles, and agreement reports."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.db.tables import DeploymentRole


class DeploymentView(BaseModel):
    """One installed model version. ``implicit``: the configured model, active without a row."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    manifest_sha256: str
    role: DeploymentRole
    routing_rules: dict[str, list[str]] = Field(description="attribute -> patterns; empty: everything in scope")
    queue: str = Field(description="The Celery queue its workers consume")
    installed_at: datetime | None
    installed_by: str | None
    promoted_at: datetime | None
    promoted_by: str | None
    implicit: bool = False


class ModelRef(BaseModel):
    name: str
    version: str


class ShadowAgreement(BaseModel):
    """A shadow version against the active one, over what both scored."""

    model: ModelRef
    paired_instances: int
    label_agreement: float | None = Field(description="Fraction of paired instances with the same label")
    cohens_kappa: float | None
    mean_abs_tumour_score_difference: float | None
    paired_series: int
    series_flag_agreement: float | None = Field(description="Fraction of paired series flagged alike (score >= 0.5)")


class ReaderAgreement(BaseModel):
    """A version's study labels against the labels readers recorded as right."""

    model: ModelRef
    role: DeploymentRole
    studies: int
    agreement: float | None


class AgreementReport(BaseModel):
    active: ModelRef
    shadows: list[ShadowAgreement]
    reader_feedback: list[ReaderAgreement]
