"""What the result builders need to know about one analysed study, free of ORM objects."""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.multival import MultiValue

RESEARCH_NOTICE = (
    "Decision support for research use only. Not a medical device; predictions must not be used for diagnosis."
)
MANUFACTURER = "Sightline"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within 0..1, got {value!r}")


@dataclass(frozen=True)
class StudyFindings:
    """The model's verdict on a study plus the key slice it is shown on.

    ``bbox`` is ``(x, y, width, height)`` in pixels of the key frame; ``region_reason``
    says why there is no focal region and is None exactly when ``bbox`` is given.
    """

    label: str
    tumour_score: float
    series_score: float
    probabilities: Mapping[str, float]
    target_label: str
    cam_method: str
    cam_strength: float
    region_reason: str | None
    bbox: tuple[int, int, int, int] | None
    key_frame: int
    model_name: str
    model_version: str
    model_sha256: str
    display_window: tuple[float, float] | None = None
    region_area_mm2: float | None = None
    box_mm: tuple[float, float] | None = None
    research_notice: str = RESEARCH_NOTICE

    def __post_init__(self) -> None:
        for name in ("label", "target_label"):  # any model's labels: those it gave probabilities for
            if getattr(self, name) not in self.probabilities:
                raise ValueError(f"{name} must be one of the labels with a probability, got {getattr(self, name)!r}")
        _unit_interval("tumour_score", self.tumour_score)
        _unit_interval("series_score", self.series_score)
        if not self.probabilities:
            raise ValueError("probabilities must map each label to 0..1")
        for label, value in self.probabilities.items():
            _unit_interval(f"probabilities[{label!r}]", value)
        if (self.bbox is None) == (self.region_reason is None):
            raise ValueError("give exactly one of bbox (focal region) and region_reason (why there is none)")
        if self.bbox is not None and (min(self.bbox[:2]) < 0 or min(self.bbox[2:]) <= 0):
            raise ValueError(f"bbox must be (x >= 0, y >= 0, width > 0, height > 0), got {self.bbox!r}")
        if self.key_frame < 0:
            raise ValueError(f"key_frame is 0-based and must be >= 0, got {self.key_frame}")
        if not _SHA256.fullmatch(self.model_sha256):
            raise ValueError("model_sha256 must be 64 lowercase hex digits")
        if self.display_window is not None and self.display_window[1] < 1:
            raise ValueError(f"display_window width must be >= 1, got {self.display_window[1]!r}")

    @property
    def score_text(self) -> str:
        """One line a reader sees next to the image: label and tumour score."""
        return f"{self.label} (tumour score {self.tumour_score:.2f}) - RESEARCH USE"


def key_frame_number(source: Dataset, findings: StudyFindings) -> int | None:
    """Check ``source`` can carry results; return the 1-based key frame for multi-frame images, else None.

    Raises ValueError naming the missing attribute, so a broken input fails before any building.
    """
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns"):
        if not source.get(keyword):
            raise ValueError(f"source image lacks {keyword}; cannot build results for it")
    if not any(keyword in source for keyword in _PIXEL_KEYWORDS):
        raise ValueError("source has no pixel data; results must reference an image")
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if findings.key_frame >= frames:
        raise ValueError(f"key_frame {findings.key_frame} is outside the source's {frames} frame(s)")
    if findings.bbox is not None:
        x, y, width, height = findings.bbox
        if x + width > source.Columns or y + height > source.Rows:
            raise ValueError(f"bbox {findings.bbox} exceeds the {source.Columns}x{source.Rows} image")
    return findings.key_frame + 1 if "NumberOfFrames" in source else None


def bbox_polyline(bbox: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """Closed polyline (column, row) around the box; DICOM puts (0, 0) at the top-left pixel's corner."""
    x, y, width, height = (float(v) for v in bbox)
    return [(x, y), (x + width, y), (x + width, y + height), (x, y + height), (x, y)]


@dataclass(frozen=True)
class FrameGeometry:
    """Where the key frame lies, from the top level or the functional groups (PS3.3 C.7.6.16)."""

    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None


def _functional_value(source: Dataset, frame_index: int, sequence: str, keyword: str) -> Any:
    if keyword in source:
        return source[keyword].value
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame_index), ("SharedFunctionalGroupsSequence", 0)):
        items = source.get(groups)
        if items and len(items) > index and sequence in items[index]:
            macro = items[index][sequence][0]
            if keyword in macro:
                return macro[keyword].value
    return None


def frame_geometry(source: Dataset, frame_index: int) -> FrameGeometry:
    """Geometry of frame ``frame_index`` (0-based); each part is None when the source lacks it."""

    def floats(sequence: str, keyword: str) -> tuple[float, ...] | None:
        value = _functional_value(source, frame_index, sequence, keyword)
        if value is None or value == "":
            return None
        values = value if isinstance(value, MultiValue | list | tuple) else [value]
        return tuple(float(v) for v in values)

    spacing = floats("PixelMeasuresSequence", "PixelSpacing")
    thickness = floats("PixelMeasuresSequence", "SliceThickness")
    return FrameGeometry(
        pixel_spacing=(spacing[0], spacing[1]) if spacing and len(spacing) == 2 else None,
        slice_thickness=thickness[0] if thickness else None,
        orientation=floats("PlaneOrientationSequence", "ImageOrientationPatient"),
        position=floats("PlanePositionSequence", "ImagePositionPatient"),
    )


_TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)  # fmt: skip


def header_view(source: Dataset) -> Dataset:
    """The source's header without pixel data, with absent Type 2 patient/study attributes present but empty.

    highdicom reads these attributes unconditionally when it copies patient and study from
    a reference; archives often omit them. Empty is what PS3.3 requires for "unknown".
    """
    view = Dataset()
    for element in source:
        if element.tag < 0x7FE00000 and element.keyword not in _PIXEL_KEYWORDS:
            view.add(element)
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in view:
            setattr(view, keyword, "")
    return view
