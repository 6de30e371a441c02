"""How far a shadow version agrees with the active one, and each version with the readers.

Per shadow version, over the instances both versions scored (each version's newest
result per instance): label agreement, Cohen's kappa (Cohen 1960) on the labels, and the
mean absolute difference of the tumour score. Per series both scored, the triage flag
agreement: a series is flagged when its score (``models.aggregation``, the same window
the worklist uses) reaches ``FLAG_THRESHOLD``, even odds that it holds a tumour.

Reader feedback (``service.workflow.feedback``) records the label a reader says is right
for a study; a version agrees when its study label (the label of its highest-scoring
series' key slice, as the worklist computes it) equals that label.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.aggregation import adjacent_window_score
from service.active_model import ModelKey, manifest_of
from service.db.series_state import of_model, ordered_slices
from service.db.tables import AnalysisResult, Feedback, Series, SliceScore
from service.registry.schemas import AgreementReport, ModelRef, ReaderAgreement, ShadowAgreement
from service.registry.service import routed_models
from service.settings import Settings

FLAG_THRESHOLD = 0.5


@dataclass(frozen=True)
class PairStats:
    paired_instances: int
    label_agreement: float | None
    cohens_kappa: float | None
    mean_abs_score_difference: float | None
    paired_series: int
    series_flag_agreement: float | None


@dataclass(frozen=True)
class FeedbackStats:
    studies: int
    agreement: float | None


def cohens_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """(p_o - p_e) / (1 - p_e); ``None`` without pairs; 1.0 when both always give one same label."""
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    counts_a, counts_b = Counter(first), Counter(second)
    expected = sum(counts_a[label] * counts_b[label] for label in counts_a) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def compare(db: Session, active: ModelKey, shadow: ModelKey, window: int) -> PairStats:
    """Instance and series agreement of ``shadow`` with ``active``."""
    ours, theirs = _latest_results(db, active), _latest_results(db, shadow)
    paired = sorted(set(ours) & set(theirs))
    labels_a = [ours[i][0] for i in paired]
    labels_s = [theirs[i][0] for i in paired]
    diffs = [abs(ours[i][1] - theirs[i][1]) for i in paired]
    flags_a, flags_s = _series_scores(db, active, window), _series_scores(db, shadow, window)
    series = sorted(set(flags_a) & set(flags_s))
    same_flag = [(flags_a[s][0] >= FLAG_THRESHOLD) == (flags_s[s][0] >= FLAG_THRESHOLD) for s in series]
    return PairStats(
        paired_instances=len(paired),
        label_agreement=_mean([float(a == b) for a, b in zip(labels_a, labels_s, strict=True)]),
        cohens_kappa=cohens_kappa(labels_a, labels_s),
        mean_abs_score_difference=_mean(diffs),
        paired_series=len(series),
        series_flag_agreement=_mean([float(flag) for flag in same_flag]),
    )


def feedback_agreement(db: Session, model: ModelKey, window: int) -> FeedbackStats:
    """How often ``model``'s study label equals the label readers recorded (latest feedback per study)."""
    reader_label: dict[uuid.UUID, str] = {}
    for study_id, label in db.execute(select(Feedback.study_id, Feedback.reader_label).order_by(Feedback.created_at)):
        reader_label[study_id] = label
    study_label: dict[uuid.UUID, tuple[float, str]] = {}
    for score, label, study_id in _series_scores(db, model, window, studies=set(reader_label)).values():
        if study_id not in study_label or score > study_label[study_id][0]:
            study_label[study_id] = (score, label)
    judged = [study_label[s][1] == reader_label[s] for s in study_label]
    return FeedbackStats(studies=len(judged), agreement=_mean([float(ok) for ok in judged]))


def _latest_results(db: Session, model: ModelKey) -> dict[uuid.UUID, tuple[str, float]]:
    rows = db.execute(
        select(AnalysisResult.instance_id, AnalysisResult.label, AnalysisResult.tumour_score)
        .where(AnalysisResult.model_name == model.name, AnalysisResult.model_version == model.version)
        .order_by(AnalysisResult.created_at, AnalysisResult.id)
    )
    return {instance_id: (label, score) for instance_id, label, score in rows}


def _series_scores(
    db: Session, model: ModelKey, window: int, studies: set[uuid.UUID] | None = None
) -> dict[uuid.UUID, tuple[float, str, uuid.UUID]]:
    """(score, key label, study id) of every series ``model`` scored, from its slices."""
    query = select(Series.id, Series.study_id).where(
        Series.id.in_(select(SliceScore.series_id).where(of_model(SliceScore, model)))
    )
    if studies is not None:
        query = query.where(Series.study_id.in_(studies))
    scores: dict[uuid.UUID, tuple[float, str, uuid.UUID]] = {}
    for series_id, study_id in db.execute(query).all():
        slices = ordered_slices(db, series_id, model)
        best = adjacent_window_score([s.tumour_score for s in slices], window)
        if best is not None:
            scores[series_id] = (best.score, slices[best.key_index].label, study_id)
    return scores


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def agreement_report(db: Session, settings: Settings) -> AgreementReport:
    """Every shadow version against the active one, and every non-retired version against readers."""
    routed = routed_models(db, settings)
    active = routed[0].key
    window = manifest_of(active, settings).aggregation.window
    shadows = []
    for model in routed[1:]:
        stats = compare(db, active, model.key, window)
        shadows.append(
            ShadowAgreement(
                model=_ref(model.key),
                paired_instances=stats.paired_instances,
                label_agreement=stats.label_agreement,
                cohens_kappa=stats.cohens_kappa,
                mean_abs_tumour_score_difference=stats.mean_abs_score_difference,
                paired_series=stats.paired_series,
                series_flag_agreement=stats.series_flag_agreement,
            )
        )
    readers = []
    for model in routed:
        feedback = feedback_agreement(db, model.key, manifest_of(model.key, settings).aggregation.window)
        readers.append(ReaderAgreement(model=_ref(model.key), role=model.role, **vars(feedback)))
    return AgreementReport(active=_ref(active), shadows=shadows, reader_feedback=readers)


def _ref(key: ModelKey) -> ModelRef:
    return ModelRef(name=key.name, version=key.version)
