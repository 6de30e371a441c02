"""The per-slice score curve of a series, in anatomical order (``GET /series/{uid}/slices``)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.active_model import ModelKey
from service.db.series_state import ordered_slices
from service.db.tables import Series
from service.errors import NotFound
from service.worklist.schemas import SeriesSlices, SliceView


class SeriesNotFound(NotFound):
    code = "series_not_found"


def series_slices(db: Session, series_uid: str, model: ModelKey) -> SeriesSlices:
    """Every frame ``model`` (the active one) scored, with its calibrated tumour probability, in order."""
    series = db.scalar(select(Series).where(Series.series_instance_uid == series_uid))
    if series is None:
        raise SeriesNotFound("no series with this Series Instance UID")
    slices = ordered_slices(db, series.id, model)
    key = (series.key_instance_id, series.key_frame)
    key_index = next((i for i, s in enumerate(slices) if (s.instance_id, s.frame_index) == key), None)
    return SeriesSlices(
        series_instance_uid=series.series_instance_uid,
        complete=series.completed_at is not None,
        series_score=series.series_score,
        key_index=key_index,
        slices=[
            SliceView(
                sop_instance_uid=s.sop_instance_uid,
                instance_number=s.instance_number,
                frame_index=s.frame_index,
                position_mm=s.position,
                tumour_score=s.tumour_score,
                label=s.label,
                probabilities=s.probabilities,
            )
            for s in slices
        ],
    )
