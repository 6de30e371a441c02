"""What the worklist needs from an uploaded image: UIDs, patient/study attributes, geometry.

DICOM attributes come from the composite IOD modules of PS3.3: Patient (C.7.1.1),
General Study (C.7.2.1), General Series (C.7.3.1), General Image (C.7.6.1) and SOP Common
(C.12.1). Strings are cut to the column lengths of ``service.db.tables`` (which follow the
VR maximum lengths of PS3.5 §6.2); an unparseable optional value becomes ``None``, never
an error. Only the three UIDs that identify the instance are required.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import RE_VALID_UID, generate_uid

from models.pixels import DecodedImage
from service.ingest.errors import InvalidUid

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
    rows: int
    columns: int
    frame_count: int
    synthetic: bool = False  # generated test data, set only by the upload's ``synthetic`` field


@dataclass(frozen=True)
class RasterContext:
    """What a PNG/JPEG upload cannot carry itself: form fields and the UIDs made for the request."""

    study_instance_uid: str
    series_instance_uid: str
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


def from_dicom(ds: Dataset, image: DecodedImage) -> InstanceMeta:
    """Metadata of a DICOM instance whose pixels already decoded."""
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
        rows=int(image.pixels.shape[0]),
        columns=int(image.pixels.shape[1]),
        frame_count=image.frame_count,
    )


def from_raster(image: DecodedImage, context: RasterContext, instance_number: int) -> InstanceMeta:
    """A PNG/JPEG becomes an "OT" instance with UIDs generated here (PS3.5 §B.2 UUID-derived)."""
    return InstanceMeta(
        source_kind=image.source,
        study_instance_uid=context.study_instance_uid,
        series_instance_uid=context.series_instance_uid,
        sop_instance_uid=generate_uid(),
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


def new_raster_uids(study_instance_uid: str | None) -> tuple[str, str]:
    """The study (given or generated) and a new series UID for the raster files of one request."""
    study = require_uid(study_instance_uid, "study_instance_uid") if study_instance_uid else generate_uid()
    return study, generate_uid()
