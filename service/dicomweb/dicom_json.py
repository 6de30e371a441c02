"""DICOM JSON (PS3.18 Annex F) for QIDO-RS results and WADO-RS metadata.

Values are set on a pydicom ``Dataset`` and serialised with ``to_json_dict`` so that VRs,
Person Name groups (``{"Alphabetic": ...}``) and empty attributes follow Annex F exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from service.dicomweb.query import Level, QidoQuery
from service.errors import NotFound

# Returned by default (PS3.18 Tables 10.6.3-3 to -5, those a viewer needs).
STUDY_ATTRIBUTES = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "PatientName", "PatientID",
    "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)  # fmt: skip
SERIES_ATTRIBUTES = (
    "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances",
)  # fmt: skip
INSTANCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames")
_BY_LEVEL = {Level.study: STUDY_ATTRIBUTES, Level.series: SERIES_ATTRIBUTES, Level.instance: INSTANCE_ATTRIBUTES}
# Pixel data is never inlined in metadata: its BulkDataURI is the frames URL.
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class ObjectMissing(NotFound):
    """The database names a blob whose file is gone from the store."""

    code = "object_missing"


def wanted_attributes(level: Level, query: QidoQuery, scoped: Level | None) -> list[str]:
    """The level's attributes, its parents' where the path does not fix them, RetrieveURL and includefield.

    ``scoped`` is the deepest level named in the path (PS3.18 §10.6.3.3.1: attributes of a
    level fixed by the path are left out unless asked for).
    """
    names: list[str] = ["StudyInstanceUID", "SeriesInstanceUID"][: int(level) - 1]
    for parent in Level:
        if parent < level and (scoped is None or parent > scoped):
            names.extend(_BY_LEVEL[parent])
    names.extend(_BY_LEVEL[level])
    if query.include_all:
        for parent in Level:
            if parent <= level:
                names.extend(_BY_LEVEL[parent])
    names.extend(sorted(query.include))
    names.append("RetrieveURL")
    return list(dict.fromkeys(names))


def qido_json(values: dict[str, Any], wanted: Iterable[str]) -> dict[str, Any]:
    """One result: every wanted attribute this server holds (None: present but empty)."""
    ds = Dataset()
    for keyword in wanted:
        if keyword not in values:
            continue  # asked for with includefield, but not something Sightline keeps
        value = values[keyword]
        tag = tag_for_keyword(keyword)
        assert tag is not None  # wanted names come from the dictionary
        ds.add_new(tag, dictionary_VR(tag), value if value not in ("", []) else None)
    result: dict[str, Any] = ds.to_json_dict()
    return result


def read_header(path: Path) -> Dataset:
    """The attributes before the pixel data, reading no more of the file than that."""
    try:
        return dcmread(path, stop_before_pixels=True)
    except FileNotFoundError:
        raise ObjectMissing("the stored file of this object is missing") from None
    except InvalidDicomError:
        return dcmread(path, stop_before_pixels=True, force=True)


def metadata_json(header: Dataset, frames_url: str) -> dict[str, Any]:
    """PS3.18 §10.4.1.2 metadata: the header, AvailableTransferSyntaxUID and PixelData as a BulkDataURI."""
    syntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
    if syntax:
        header.AvailableTransferSyntaxUID = syntax  # our own copy, read for this response
    result: dict[str, Any] = header.to_json_dict()  # file meta (group 0002) is not part of it
    if "Rows" in header and "Columns" in header:
        frames = int(header.get("NumberOfFrames") or 1)
        uri = f"{frames_url}/" + ",".join(str(n) for n in range(1, frames + 1))
        vr = "OW" if int(header.get("BitsAllocated") or 8) > 8 and not _encapsulated(syntax) else "OB"
        result[f"{Tag('PixelData'):08X}"] = {"vr": vr, "BulkDataURI": uri}
    return result


def _encapsulated(syntax: object) -> bool:
    return bool(getattr(syntax, "is_encapsulated", False))
