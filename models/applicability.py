"""Whether a model may score an instance: the manifest's ``scope`` against its DICOM header.

A classifier trained on brain MR slices gives a tumour label to anything with pixels: a
CT slice, an ultrasound frame, a localizer, a secondary capture. Every such instance is
stored and shown, but marked not applicable with the first rule it fails, and never
scored. The attributes read: (0008,0060) Modality (PS3.3 C.7.3.1.1.1), (0018,0015) Body
Part Examined (C.7.3.1), (0008,0016) SOP Class UID (C.12.1), (0008,0008) Image Type
(C.7.6.1.1.2: value 1 ORIGINAL/DERIVED, value 2 PRIMARY/SECONDARY, then modality-specific
values such as LOCALIZER), (0028,0004) Photometric Interpretation and Rows/Columns.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from models.manifest import Scope


@dataclass(frozen=True)
class ImageAttributes:
    """The header values applicability is judged on (strings upper-cased and stripped)."""

    modality: str | None
    body_part: str | None
    sop_class_uid: str | None
    image_type: tuple[str, ...]
    photometric: str | None
    rows: int
    columns: int
    has_pixels: bool
    is_raster: bool = False


def dicom_attributes(ds: Dataset) -> ImageAttributes:
    """The attributes of a parsed DICOM dataset; malformed values count as absent."""
    return ImageAttributes(
        modality=_text(ds.get("Modality")),
        body_part=_text(ds.get("BodyPartExamined")),
        sop_class_uid=_text(ds.get("SOPClassUID")),
        image_type=_values(ds.get("ImageType")),
        photometric=_text(ds.get("PhotometricInterpretation")),
        rows=_int(ds.get("Rows")),
        columns=_int(ds.get("Columns")),
        has_pixels="PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds,
    )


def raster_attributes(rows: int, columns: int, *, color: bool) -> ImageAttributes:
    """A PNG/JPEG upload: no header, only its size and whether it is grey."""
    photometric = "RGB" if color else "MONOCHROME2"
    return ImageAttributes(None, None, None, (), photometric, rows, columns, has_pixels=True, is_raster=True)


def not_applicable_reason(attrs: ImageAttributes, scope: Scope) -> str | None:
    """The first scope rule ``attrs`` fails, in words a reader understands; ``None`` if in scope."""
    if not attrs.has_pixels:
        return "no pixel data (a report, key object selection or presentation state)"
    if attrs.is_raster:
        return None if scope.raster_images else "PNG/JPEG uploads are outside this model's scope"
    for check in (_modality, _body_part, _sop_class, _image_type, _photometric, _size):
        reason = check(attrs, scope)
        if reason is not None:
            return reason
    return None


def _modality(attrs: ImageAttributes, scope: Scope) -> str | None:
    if scope.modalities and attrs.modality not in _upper(scope.modalities):
        return f"modality {attrs.modality or 'absent'} is not one of {', '.join(scope.modalities)}"
    return None


def _body_part(attrs: ImageAttributes, scope: Scope) -> str | None:
    if scope.body_parts and attrs.body_part is not None and attrs.body_part not in _upper(scope.body_parts):
        return f"body part {attrs.body_part} is not one of {', '.join(scope.body_parts)}"
    return None


def _sop_class(attrs: ImageAttributes, scope: Scope) -> str | None:
    if scope.sop_classes and attrs.sop_class_uid not in scope.sop_classes:
        return f"SOP class {attrs.sop_class_uid or 'absent'} is not an image class this model scores"
    return None


def _image_type(attrs: ImageAttributes, scope: Scope) -> str | None:
    if not attrs.image_type:
        return None  # Image Type is type 1 only in some IODs; its absence is not evidence of a derived image
    required = _upper(scope.image_type_values)
    for position, wanted in enumerate(required):
        if position < len(attrs.image_type) and attrs.image_type[position] != wanted:
            return f"image type {'/'.join(attrs.image_type)} is not {'/'.join(required)}"
    excluded = set(_upper(scope.image_type_excluded)) & set(attrs.image_type)
    if excluded:
        return f"image type {'/'.join(attrs.image_type)} is a {', '.join(sorted(excluded)).lower()}"
    return None


def _photometric(attrs: ImageAttributes, scope: Scope) -> str | None:
    if scope.photometric and attrs.photometric not in _upper(scope.photometric):
        return f"photometric interpretation {attrs.photometric or 'absent'} is not {', '.join(scope.photometric)}"
    return None


def _size(attrs: ImageAttributes, scope: Scope) -> str | None:
    if min(attrs.rows, attrs.columns) < scope.min_size:
        return f"{attrs.rows}x{attrs.columns} pixels is smaller than {scope.min_size} on a side"
    return None


def _upper(values: list[str]) -> list[str]:
    return [value.strip().upper() for value in values]


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).replace("\0", "").strip().upper()
    return text or None


def _values(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value.strip().upper(),)
    if isinstance(value, Iterable):
        return tuple(str(item).strip().upper() for item in value)
    return ()


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
