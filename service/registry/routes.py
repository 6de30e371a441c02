"""``/api/v1/models``: deployed model versions and their agreement (admin only: operators
judge a shadow version before promoting it; readers never see shadow results)."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import Admin, AppSettings, DbSession
from service.errors import Forbidden, Unauthenticated, error_responses
from service.registry import service as registry_service
from service.registry.agreement import agreement_report
from service.registry.schemas import AgreementReport, DeploymentView

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    response_model=list[DeploymentView],
    summary="Deployed model versions with their roles, routing rules and queues",
    responses=error_responses(Unauthenticated, Forbidden),
)
def list_models(db: DbSession, settings: AppSettings, _: Admin) -> list[DeploymentView]:
    """With no deployment rows, the configured model is listed as active and ``implicit``."""
    return registry_service.deployment_views(db, settings)


@router.get(
    "/models/agreement",
    response_model=AgreementReport,
    summary="Agreement of each shadow version with the active one, and of each version with readers",
    responses=error_responses(Unauthenticated, Forbidden),
)
def get_agreement(db: DbSession, settings: AppSettings, _: Admin) -> AgreementReport:
    """Paired instances, label agreement, Cohen's kappa, mean |tumour score difference| and
    series triage-flag agreement per shadow version; study-label agreement with reader feedback."""
    return agreement_report(db, settings)
