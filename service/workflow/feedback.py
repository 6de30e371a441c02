"""A reader's verdict on the model's label for a study: agree, or name the right label.

Agreeing records the study's predicted label as the reader's; disagreeing needs another
of the active model's labels. The model name and version are those of the key instance's
latest result (the result that gave the study its label), null when there is none.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.active_model import active_model, latest_result
from service.db.tables import AnalysisResult, Feedback, Study, utcnow
from service.errors import UnprocessableInput
from service.settings import get_settings
from service.workflow.schemas import FeedbackIn
from service.worklist.schemas import FeedbackView


class NoPrediction(UnprocessableInput):
    code = "no_prediction"


class UnknownLabel(UnprocessableInput):
    code = "unknown_label"


class LabelRequired(UnprocessableInput):
    code = "label_required"


class LabelConflict(UnprocessableInput):
    code = "label_conflict"


def reader_label(study: Study, body: FeedbackIn, labels: list[str]) -> str:
    """The label the reader says is right, checked against the prediction and the model's labels."""
    predicted = study.predicted_label
    if body.label is not None and body.label not in labels:
        raise UnknownLabel(f"label must be one of {labels}")
    if body.agrees:
        if predicted is None and body.label is None:
            raise NoPrediction("the study has no predicted label to agree with; give the label")
        if predicted is not None and body.label not in (None, predicted):
            raise LabelConflict(f"agreeing with the model means the label {predicted!r}")
        return predicted or str(body.label)
    if body.label is None:
        raise LabelRequired("name the right label when not agreeing")
    if body.label == predicted:
        raise LabelConflict("the label is the model's own; send agrees=true instead")
    return body.label


def add(db: Session, reader: str, study: Study, body: FeedbackIn, labels: list[str]) -> FeedbackView:
    label = reader_label(study, body, labels)
    result = _key_result(db, study)
    row = Feedback(
        study_id=study.id,
        reader=reader,
        model_label=study.predicted_label,
        model_name=result.model_name if result else None,
        model_version=result.model_version if result else None,
        agrees=body.agrees,
        reader_label=label,
        comment=body.comment,
        created_at=utcnow(),
    )
    db.add(row)
    db.flush()
    return FeedbackView.model_validate(row)


def _key_result(db: Session, study: Study) -> AnalysisResult | None:
    """The active model's result on the key instance: feedback is on what the reader saw."""
    if study.key_instance_id is None:
        return None
    return latest_result(db, study.key_instance_id, active_model(db, get_settings()))
