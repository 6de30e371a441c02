"""QIDO-RS, the Search Transaction (PS3.18 §10.6): ``GET /dicomweb/studies``, ``/series``, ``/instances``.

Matching, counting and paging run in SQL over ``query.dicom_objects()`` (originals stored
as DICOM plus Sightline's result objects); only result objects' own attributes (Series
Number, Instance Number, ...) are read from their file headers, since the table keeps none.

No match answers 200 with ``[]``: PS3.18 §8.3.4.4.1 still says 204, but CP-2473 moves to
200 (RFC 9110 §15.3.5 forbids a body on 204 and C-FIND reports zero matches as Success);
stock viewers (OHIF v2/v3) accept both. RetrieveURL values are paths on this server, never
built from the request's Host header.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from sqlalchemy import Integer, cast, distinct, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

from service.db.tables import Study
from service.deps import DbSession, Reader, Store
from service.dicomweb.dicom_json import qido_json, read_header, wanted_attributes
from service.dicomweb.multipart import media_type_of
from service.dicomweb.query import UID_PATTERN, InvalidQuery, Level, QidoQuery, dicom_objects, filters, parse_query
from service.dicomweb.stow import DICOM_JSON, NotAcceptable
from service.errors import Forbidden, Unauthenticated, UnprocessableInput, error_responses
from service.storage import BlobStore

router = APIRouter(tags=["dicomweb"])
Uid = Annotated[str, Path(max_length=64, pattern=UID_PATTERN)]
UrlFor = Callable[..., str]
_ACCEPTABLE = {DICOM_JSON, "application/json", "application/*", "*/*"}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(InvalidQuery, Unauthenticated, Forbidden, NotAcceptable, UnprocessableInput),
    200: {"description": "Matching results (an empty array when none match)", "content": {DICOM_JSON: {}}},
}


@router.get("/studies", response_class=Response, responses=_RESPONSES, summary="QIDO-RS: search for studies")
def search_studies(request: Request, db: DbSession, _: Reader) -> Response:
    """Studies holding at least one DICOM object; most recently received first."""
    return _search(request, db, None, Level.study, {})


@router.get("/series", response_class=Response, responses=_RESPONSES, summary="QIDO-RS: search for series")
def search_all_series(request: Request, db: DbSession, store: Store, _: Reader) -> Response:
    return _search(request, db, store, Level.series, {})


@router.get(
    "/studies/{study}/series", response_class=Response, responses=_RESPONSES, summary="QIDO-RS: series of a study"
)
def search_study_series(request: Request, db: DbSession, store: Store, _: Reader, study: Uid) -> Response:
    return _search(request, db, store, Level.series, {"StudyInstanceUID": study})


@router.get(
    "/studies/{study}/instances", response_class=Response, responses=_RESPONSES, summary="QIDO-RS: instances of a study"
)
def search_study_instances(request: Request, db: DbSession, store: Store, _: Reader, study: Uid) -> Response:
    return _search(request, db, store, Level.instance, {"StudyInstanceUID": study})


@router.get(
    "/studies/{study}/series/{series}/instances",
    response_class=Response,
    responses=_RESPONSES,
    summary="QIDO-RS: instances of a series",
)
def search_series_instances(
    request: Request, db: DbSession, store: Store, _: Reader, study: Uid, series: Uid
) -> Response:
    return _search(request, db, store, Level.instance, {"StudyInstanceUID": study, "SeriesInstanceUID": series})


def _search(request: Request, db: Session, store: BlobStore | None, level: Level, path: dict[str, str]) -> Response:
    accept = request.headers.get("accept")
    if accept and not {media_type_of(item) for item in accept.split(",")} & _ACCEPTABLE:
        raise NotAcceptable(f"search results are only available as {DICOM_JSON}")
    query = parse_query(request.query_params.multi_items(), level)
    query.matches.update(path)
    scoped = Level.series if "SeriesInstanceUID" in path else Level.study if path else None
    wanted = wanted_attributes(level, query, scoped)

    def url(name: str, **uids: str) -> str:
        return request.url_for(name, **uids).path

    if level is Level.study:
        rows = _studies(db, query, url)
    elif level is Level.series:
        assert store is not None
        rows = _series(db, store, query, url)
    else:
        assert store is not None
        rows = _instances(db, store, query, url)
    body = json.dumps([qido_json(values, wanted) for values in rows])
    return Response(body, media_type=DICOM_JSON)


def _study_values(study: Study) -> dict[str, Any]:
    return {
        "StudyInstanceUID": study.study_instance_uid,
        "StudyDate": study.study_date.strftime("%Y%m%d") if study.study_date else None,
        "StudyTime": study.study_time,
        "AccessionNumber": study.accession_number,
        "PatientName": study.patient_name,
        "PatientID": study.patient_id,
        "StudyDescription": study.description,
    }


def _studies(db: Session, query: QidoQuery, url: UrlFor) -> list[dict[str, Any]]:
    objects = dicom_objects()
    counts = (
        select(
            objects.c.study_id,
            func.count().label("instances"),
            func.count(distinct(objects.c.series_uid)).label("series"),
        )
        .group_by(objects.c.study_id)
        .subquery()
    )
    statement = (
        select(Study, counts.c.instances, counts.c.series)
        .join(counts, counts.c.study_id == Study.id)
        .where(*filters(query, objects))
        .order_by(Study.received_at.desc(), Study.id)
        .limit(query.limit)
        .offset(query.offset)
    )
    found = db.execute(statement).all()
    modalities = _modalities(db, [study.id for study, _, _ in found])
    return [
        {
            **_study_values(study),
            "ModalitiesInStudy": sorted(modalities.get(study.id, ())),
            "NumberOfStudyRelatedSeries": n_series,
            "NumberOfStudyRelatedInstances": n_instances,
            "RetrieveURL": url("retrieve_study", study=study.study_instance_uid),
        }
        for study, n_instances, n_series in found
    ]


def _modalities(db: Session, study_ids: list[Any]) -> dict[Any, set[str]]:
    """ModalitiesInStudy for one page of studies in one query."""
    objects = dicom_objects()
    pairs = db.execute(
        select(objects.c.study_id, objects.c.modality).where(objects.c.study_id.in_(study_ids)).distinct()
    )
    found: dict[Any, set[str]] = {}
    for study_id, modality in pairs:
        if modality:
            found.setdefault(study_id, set()).add(modality)
    return found


def _series(db: Session, store: BlobStore, query: QidoQuery, url: UrlFor) -> list[dict[str, Any]]:
    objects = dicom_objects()
    number = func.min(objects.c.series_number)
    statement = (
        select(
            Study,
            objects.c.series_uid,
            func.count(),
            func.min(objects.c.modality),
            number,
            func.min(objects.c.series_description),
            func.max(cast(objects.c.generated, Integer)),
            func.min(objects.c.blob_key),
        )
        .join(objects, objects.c.study_id == Study.id)
        .where(*filters(query, objects))
        .group_by(Study.id, objects.c.series_uid)
        .order_by(Study.received_at.desc(), Study.id, number, objects.c.series_uid)
        .limit(query.limit)
        .offset(query.offset)
    )
    rows: list[dict[str, Any]] = []
    for study, series_uid, count, modality, series_number, description, generated, blob_key in db.execute(statement):
        values = {
            **_study_values(study),
            "SeriesInstanceUID": series_uid,
            "Modality": modality,
            "SeriesNumber": series_number,
            "SeriesDescription": description,
            "NumberOfSeriesRelatedInstances": count,
            "RetrieveURL": url("retrieve_series", study=study.study_instance_uid, series=series_uid),
        }
        if generated:
            values.update(_header_values(store, blob_key, ("Modality", "SeriesNumber", "SeriesDescription")))
        rows.append(values)
    return rows


def _instances(db: Session, store: BlobStore, query: QidoQuery, url: UrlFor) -> list[dict[str, Any]]:
    objects: Subquery = dicom_objects()
    statement = (
        select(Study, objects)
        .join(objects, objects.c.study_id == Study.id)
        .where(*filters(query, objects))
        .order_by(Study.received_at.desc(), Study.id, objects.c.series_uid)
        .order_by(objects.c.instance_number, objects.c.sop_uid)
        .limit(query.limit)
        .offset(query.offset)
    )
    rows: list[dict[str, Any]] = []
    for row in db.execute(statement):
        study, obj = row[0], row._mapping
        values = {
            **_study_values(study),
            "SeriesInstanceUID": obj["series_uid"],
            "Modality": obj["modality"],
            "SeriesNumber": obj["series_number"],
            "SeriesDescription": obj["series_description"],
            "SOPClassUID": obj["sop_class_uid"],
            "SOPInstanceUID": obj["sop_uid"],
            "InstanceNumber": obj["instance_number"],
            "Rows": obj["rows"],
            "Columns": obj["columns"],
            "NumberOfFrames": obj["frames"],
            "RetrieveURL": url(
                "retrieve_instance", study=study.study_instance_uid, series=obj["series_uid"], instance=obj["sop_uid"]
            ),
        }
        if obj["generated"]:
            keywords = ("Modality", "SeriesNumber", "SeriesDescription", "InstanceNumber", "Rows", "Columns")
            values.update(_header_values(store, obj["blob_key"], (*keywords, "NumberOfFrames")))
            if values["Rows"] is not None and values["NumberOfFrames"] is None:
                values["NumberOfFrames"] = 1
        rows.append(values)
    return rows


def _header_values(store: BlobStore, blob_key: str, keywords: tuple[str, ...]) -> dict[str, Any]:
    """A result object's own attributes, read from its file header (the table keeps none of them)."""
    header = read_header(store.path_for(blob_key))
    return {keyword: header.get(keyword) for keyword in keywords}
