"""What the worklist needs from an uploaded image: UIDs, patient/study attributes, geometry.

DICOM attributes come from the composite IOD modules of PS3.3: Patient (C.7.1.1),
General Study (C.7.2.1), General Series (C.7.3.1), General Image (C.7.6.1) and SOP Common
(C.12.1). Strings are cut to the column lengths of ``service.db.tables`` (which follow the
VR maximum lengths of PS3.5 §6.2); an unparseable optional value becomes ``None``, never
an error. Only the three UIDs that identify the instance are required.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import RE_VALID_UID, generate_uid

from models.pixels import DecodedImage
from service.ingest.errors import InvalidUid
from service.ingest.fingerprint import dicom_content, dicom_identity, identity_sha256

INT32_MAX = 2**31 - 1
RASTER_MODALITY = "OT"  # PS3.3 C.7.3.1.1.1: Other


@dataclass(frozen=True)
class InstanceMeta:
    """One instance as the database stores it, whatever format it arrived in."""

    source_kind: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None
    transfer_syntax_uid: str | None
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_date: date | None
    study_time: str | None
    modality: str | None
    body_part: str | None
    study_description: str | None
    series_description: str | None
    series_number: int | None
    instance_number: int | None
    rows: int | None  # None for objects without pixels
    columns: int | None
    frame_count: int
    identity_sha256: str
    content_sha256: str
    not_applicable_reason: str | None = None  # None: the model scores it
    synthetic: bool = False  # generated test data, set only by the upload's ``synthetic`` field


@dataclass(frozen=True)
class RasterContext:
    """What a PNG/JPEG upload cannot carry itself: form fields and the UIDs made for the request."""

    study_instance_uid: str
    series_instance_uid: str
    uid_seed: str  # makes SOP Instance UIDs from content: a re-sent file is the same instance
    patient_id: str | None = None
    patient_name: str | None = None
    study_description: str | None = None


def is_valid_uid(value: str) -> bool:
    """PS3.5 §9.1, as ``pydicom.uid.UID.is_valid`` checks it (without pydicom's warning)."""
    return len(value) <= 64 and RE_VALID_UID.match(value) is not None


def require_uid(value: object, label: str) -> str:
    """A UID that must be present and well formed; the message names the attribute only."""
    text = str(value).strip().rstrip("\0") if value is not None else ""
    if not text:
        raise InvalidUid(f"{label} is missing")
    if not is_valid_uid(text):
        raise InvalidUid(f"{label} is not a valid UID (PS3.5 §9.1: digits and dots, at most 64 characters)")
    return text


def from_dicom(ds: Dataset, image: DecodedImage | None, *, data: bytes, reason: str | None) -> InstanceMeta:
    """Metadata of a DICOM instance whose pixels already decoded (``image`` None: it has none)."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    sop_class = text_value(ds.get("SOPClassUID"), 64)
    return InstanceMeta(
        source_kind="dicom",
        study_instance_uid=require_uid(ds.get("StudyInstanceUID"), "(0020,000D) Study Instance UID"),
        series_instance_uid=require_uid(ds.get("SeriesInstanceUID"), "(0020,000E) Series Instance UID"),
        sop_instance_uid=require_uid(ds.get("SOPInstanceUID"), "(0008,0018) SOP Instance UID"),
        sop_class_uid=sop_class if sop_class and is_valid_uid(sop_class) else None,
        transfer_syntax_uid=text_value(syntax, 64),
        patient_id=text_value(ds.get("PatientID"), 64),
        patient_name=text_value(ds.get("PatientName"), 324),
        accession_number=text_value(ds.get("AccessionNumber"), 16),
        study_date=parse_da(ds.get("StudyDate")),
        study_time=text_value(ds.get("StudyTime"), 16),
        modality=text_value(ds.get("Modality"), 16),
        body_part=text_value(ds.get("BodyPartExamined"), 64),
        study_description=text_value(ds.get("StudyDescription"), 64),
        series_description=text_value(ds.get("SeriesDescription"), 64),
        series_number=int_value(ds.get("SeriesNumber")),
        instance_number=int_value(ds.get("InstanceNumber")),
        rows=int(image.pixels.shape[0]) if image else None,
        columns=int(image.pixels.shape[1]) if image else None,
        frame_count=image.frame_count if image else 0,
        identity_sha256=dicom_identity(ds),
        content_sha256=dicom_content(ds, data),
        not_applicable_reason=reason,
    )


def from_raster(
    image: DecodedImage, context: RasterContext, instance_number: int, *, data: bytes, reason: str | None
) -> InstanceMeta:
    """A PNG/JPEG becomes an "OT" instance. Its SOP Instance UID is derived (PS3.5 §B.2) from
    the request's seed and the file's sha256, so re-sending the same file is a duplicate."""
    content = hashlib.sha256(data).hexdigest()
    identity = {"PatientID": context.patient_id, "PatientName": context.patient_name}
    return InstanceMeta(
        source_kind=image.source,
        study_instance_uid=context.study_instance_uid,
        series_instance_uid=context.series_instance_uid,
        sop_instance_uid=generate_uid(entropy_srcs=[context.uid_seed, content]),
        sop_class_uid=None,
        transfer_syntax_uid=None,
        patient_id=text_value(context.patient_id, 64),
        patient_name=text_value(context.patient_name, 324),
        accession_number=None,
        study_date=None,
        study_time=None,
        modality=RASTER_MODALITY,
        body_part=None,
        study_description=text_value(context.study_description, 64),
        series_description=None,
        series_number=1,
        instance_number=instance_number,
        rows=int(image.pixels.shape[0]),
        columns=int(image.pixels.shape[1]),
        frame_count=image.frame_count,
        identity_sha256=identity_sha256({**identity, "StudyInstanceUID": context.study_instance_uid}),
        content_sha256=content,
        not_applicable_reason=reason,
    )


def text_value(value: object, max_length: int) -> str | None:
    """A stripped string cut to ``max_length``; multi-valued elements joined with ``\\`` (PS3.5 §6.4)."""
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        value = "\\".join(str(item) for item in value)
    text = str(value).replace("\0", "").strip()
    return text[:max_length] or None


def int_value(value: object) -> int | None:
    """An IS value (PS3.5 §6.2) as a 32-bit integer, or ``None`` when absent or out of range."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if value else None
    if value is None or value == "":
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if -INT32_MAX - 1 <= number <= INT32_MAX else None


def parse_da(value: object) -> date | None:
    """A DA value, ``YYYYMMDD`` (PS3.5 §6.2; the ACR-NEMA ``YYYY.MM.DD`` form too), else ``None``."""
    if isinstance(value, date):
        return value
    text = text_value(value, 16)
    if text is None:
        return None
    try:
        return datetime.strptime(text.replace(".", ""), "%Y%m%d").date()
    except ValueError:
        return None


def raster_context(
    files: Sequence[bytes],
    *,
    study_instance_uid: str | None,
    idempotency_key: str | None,
    patient_id: str | None,
    patient_name: str | None,
    study_description: str | None,
) -> RasterContext:
    """UIDs for the PNG/JPEG files of one request, derived (PS3.5 §B.2) from what identifies
    the request: the ``Idempotency-Key`` if the client sent one, else the patient fields and
    the files' sha256, so the same request sent twice names the same study, series and
    instances; a file's SOP Instance UID depends on its own sha256 and the patient fields
    only, so the same picture for the same patient is one instance whatever else came with
    it. ``study_instance_uid`` given by the client is used as is.
    """
    hashes = sorted(hashlib.sha256(data).hexdigest() for data in files)
    seed = json.dumps(["key", idempotency_key] if idempotency_key else ["content", patient_id, patient_name, hashes])
    study = require_uid(study_instance_uid, "study_instance_uid") if study_instance_uid else None
    return RasterContext(
        study_instance_uid=study or generate_uid(entropy_srcs=[seed, "study"]),
        series_instance_uid=generate_uid(entropy_srcs=[seed, study or "", "series"]),
        uid_seed=json.dumps(["key", idempotency_key] if idempotency_key else [patient_id, patient_name, study]),
        patient_id=patient_id,
        patient_name=patient_name,
        study_description=study_description,
    )
