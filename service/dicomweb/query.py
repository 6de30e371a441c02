"""QIDO-RS query parameters (PS3.18 §8.3.4) turned into SQL over the DICOM objects Sightline holds.

The DICOM objects are the originals stored as DICOM (``source_kind == "dicom"``; PNG/JPEG
uploads are not DICOM and never appear) plus the result objects Sightline made (SR, SC,
presentation states), which live in series of their own inside the original study.
``dicom_objects()`` is one UNION ALL of both, so matching, counting and paging all run in SQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import IntEnum
from typing import Any

from pydicom.datadict import dictionary_has_tag, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Integer, String, and_, case, cast, false, null, select, true
from sqlalchemy.sql import Subquery

from service.db.tables import Instance, ResultKind, ResultObject, Series, Study
from service.errors import BadRequest

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
MAX_LIMIT = 1000  # a page never holds more than this, whatever ``limit`` asks
MAX_DIGITS = 12  # limit/offset beyond this are refused at parsing, before SQL (bigint-safe)
_CONTROL_KEYS = {"limit", "offset", "includefield", "fuzzymatching"}
# Modality of a result object's series, by kind (PS3.3 C.7.3.1.1.1 defined terms; SC is "OT").
RESULT_MODALITY = {ResultKind.sr: "SR", ResultKind.sc: "OT", ResultKind.pr: "PR", ResultKind.pm: "OT"}


class Level(IntEnum):
    """The query/retrieve levels (PS3.4 C.6.2.1), ordered from the top."""

    study = 1
    series = 2
    instance = 3


MATCHING_KEYS: dict[str, Level] = {
    "PatientID": Level.study,
    "PatientName": Level.study,
    "StudyDate": Level.study,
    "StudyInstanceUID": Level.study,
    "AccessionNumber": Level.study,
    "StudyDescription": Level.study,
    "ModalitiesInStudy": Level.study,
    "SeriesInstanceUID": Level.series,
    "Modality": Level.series,
    "SOPInstanceUID": Level.instance,
    "SOPClassUID": Level.instance,
}


class InvalidQuery(BadRequest):
    code = "invalid_query"


@dataclass
class QidoQuery:
    """Matching values by keyword, paging, and the extra attributes asked for with includefield."""

    matches: dict[str, str] = field(default_factory=dict)
    limit: int = MAX_LIMIT
    offset: int = 0
    include: set[str] = field(default_factory=set)
    include_all: bool = False


def parse_query(items: Sequence[tuple[str, str]], level: Level) -> QidoQuery:
    """PS3.18 §8.3.4.1: ``{attributeID}={value}``, limit, offset, includefield; unknown keys are a 400."""
    query = QidoQuery()
    for key, value in items:
        if key in _CONTROL_KEYS:
            _control(query, key, value)
            continue
        keyword = attribute_keyword(key)
        if MATCHING_KEYS.get(keyword, Level.instance + 1) > level:
            raise InvalidQuery(f"{key} is not a supported matching key at the {level.name} level")
        if value:  # an empty value is universal matching (PS3.4 C.2.2.2.3)
            query.matches[keyword] = value
    return query


def _control(query: QidoQuery, key: str, value: str) -> None:
    if key in ("limit", "offset"):
        if not value.isdigit() or len(value) > MAX_DIGITS:
            raise InvalidQuery(f"{key} must be a non-negative integer of at most {MAX_DIGITS} digits")
        if key == "limit":
            query.limit = min(int(value), MAX_LIMIT)
        else:
            query.offset = int(value)
    elif key == "includefield":
        for name in filter(None, (part.strip() for part in value.split(","))):
            if name == "all":
                query.include_all = True
            else:
                query.include.add(attribute_keyword(name))


def attribute_keyword(name: str) -> str:
    """A keyword or an 8-hex-digit tag (PS3.18 §8.3.4.1.1) as its dictionary keyword; 400 for neither."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        tag = int(name, 16)
        keyword = keyword_for_tag(tag) if dictionary_has_tag(tag) else ""
    else:
        keyword = name if tag_for_keyword(name) is not None else ""
    if not keyword:
        raise InvalidQuery(f"{name} is not a DICOM attribute keyword or tag")
    return keyword


def dicom_objects() -> Subquery:
    """Every DICOM object: originals stored as DICOM, then generated result objects."""
    originals = (
        select(
            Instance.study_id.label("study_id"),
            Series.series_instance_uid.label("series_uid"),
            Instance.sop_instance_uid.label("sop_uid"),
            Instance.sop_class_uid.label("sop_class_uid"),
            Instance.instance_number.label("instance_number"),
            Instance.rows.label("rows"),
            Instance.columns.label("columns"),
            Instance.frame_count.label("frames"),
            Instance.blob_key.label("blob_key"),
            Series.modality.label("modality"),
            Series.series_number.label("series_number"),
            Series.description.label("series_description"),
            false().label("generated"),
        )
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.source_kind == "dicom")
    )
    modality = case(*((ResultObject.kind == kind, text) for kind, text in RESULT_MODALITY.items()), else_="OT")
    generated = select(
        ResultObject.study_id,
        ResultObject.series_instance_uid,
        ResultObject.sop_instance_uid,
        ResultObject.sop_class_uid,
        cast(null(), Integer),
        cast(null(), Integer),
        cast(null(), Integer),
        cast(null(), Integer),
        ResultObject.blob_key,
        modality,
        cast(null(), Integer),
        cast(null(), String),
        true(),
    )
    return originals.union_all(generated).subquery("dicom_objects")


def filters(query: QidoQuery, objects: Subquery) -> list[ColumnElement[bool]]:
    """SQL conditions for every matching key; study keys on ``Study``, the others on ``objects``."""
    conditions: list[ColumnElement[bool]] = []
    columns: dict[str, Any] = {
        "PatientID": Study.patient_id,
        "AccessionNumber": Study.accession_number,
        "StudyDescription": Study.description,
        "StudyInstanceUID": Study.study_instance_uid,
        "SeriesInstanceUID": objects.c.series_uid,
        "SOPInstanceUID": objects.c.sop_uid,
        "SOPClassUID": objects.c.sop_class_uid,
        "Modality": objects.c.modality,
    }
    for keyword, value in query.matches.items():
        if keyword == "PatientName":
            conditions.append(Study.patient_name.ilike(_like_pattern(value), escape="\\"))
        elif keyword == "StudyDate":
            conditions.append(_date_range(Study.study_date, value))
        elif keyword == "ModalitiesInStudy":
            others = select(objects.c.study_id).where(objects.c.modality.in_(_values(value)))
            conditions.append(Study.id.in_(others.scalar_subquery()))
        elif keyword.endswith("UID"):
            conditions.append(columns[keyword].in_(_uid_list(keyword, value)))
        elif keyword == "Modality":
            conditions.append(columns[keyword].in_(_values(value)))
        else:
            conditions.append(_text_match(columns[keyword], value))
    return conditions


def _text_match(column: Any, value: str) -> ColumnElement[bool]:
    """Single value matching, or wildcard matching with * and ? (PS3.4 C.2.2.2.4)."""
    if "*" in value or "?" in value:
        return and_(column.like(_like_pattern(value), escape="\\"))
    return and_(column == value)


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _values(value: str) -> list[str]:
    """A list of values (PS3.18 §8.3.4.1: comma separated; backslash as in DICOM multi-values)."""
    return [part.strip() for part in re.split(r"[,\\]", value) if part.strip()]


def _uid_list(keyword: str, value: str) -> list[str]:
    uids = _values(value)
    for uid in uids:
        if len(uid) > 64 or not re.fullmatch(UID_PATTERN, uid):
            raise InvalidQuery(f"{keyword} holds a value that is not a UID")
    return uids


def _date_range(column: Any, value: str) -> ColumnElement[bool]:
    """Single date or range ``A-B``, ``A-``, ``-B`` (PS3.4 C.2.2.2.5)."""
    start, dash, end = value.partition("-")
    if not dash:
        return and_(column == _date(start))
    if not start and not end:
        raise InvalidQuery("StudyDate range needs at least one end")
    bounds: list[ColumnElement[bool]] = []
    if start:
        bounds.append(column >= _date(start))
    if end:
        bounds.append(column <= _date(end))
    return and_(*bounds)


def _date(text: str) -> date:
    try:
        return datetime.strptime(text.strip(), "%Y%m%d").date()
    except ValueError:
        raise InvalidQuery("StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD") from None
