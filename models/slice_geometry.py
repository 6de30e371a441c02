"""Where each frame lies: position along the slice normal and pixel spacing (PS3.3 C.7.6.2).

Image Plane module (C.7.6.2.1.1): the normal of a slice is the cross product of the row
and column direction cosines of (0020,0037) Image Orientation (Patient); its position
along the normal is the dot product with (0020,0032) Image Position (Patient). Enhanced
multi-frame objects keep both in functional groups (C.7.6.16.2.3 Plane Position,
C.7.6.16.2.4 Plane Orientation, C.7.6.16.2.1 Pixel Measures): per-frame first, then
shared. Sorting by this position gives anatomical order; frame index and Instance
Number are only fallbacks (they follow acquisition, which may be interleaved).
"""

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

Spacing = tuple[float, float]  # (row spacing, column spacing) in mm


def frame_positions(ds: Dataset, frame_count: int) -> list[float | None]:
    """Position along the normal (mm) of every frame, ``None`` where the headers do not say."""
    return [_position(ds, index) for index in range(frame_count)]


def pixel_spacing(ds: Dataset, index: int = 0) -> Spacing | None:
    """(0028,0030) Pixel Spacing of frame ``index``: functional groups first, then top level."""
    for source in (*_macro_items(ds, index, "PixelMeasuresSequence"), ds):
        spacing = _floats(source.get("PixelSpacing"), 2)
        if spacing is not None and all(value > 0 for value in spacing):
            return spacing[0], spacing[1]
    return None


def anatomical_order(positions: Sequence[float | None], fallback: Sequence[int]) -> list[int]:
    """Indices sorted by position when every item has one, else by ``fallback`` (e.g. frame index)."""
    indices = list(range(len(positions)))
    if positions and all(position is not None for position in positions):
        return sorted(indices, key=lambda i: (positions[i], fallback[i]))
    return sorted(indices, key=lambda i: fallback[i])


def _position(ds: Dataset, index: int) -> float | None:
    position = orientation = None
    for source in (*_macro_items(ds, index, "PlanePositionSequence"), ds):
        position = position or _floats(source.get("ImagePositionPatient"), 3)
    for source in (*_macro_items(ds, index, "PlaneOrientationSequence"), ds):
        orientation = orientation or _floats(source.get("ImageOrientationPatient"), 6)
    if position is None or orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
        return None
    return float(np.dot(position, normal / np.linalg.norm(normal)))


def _macro_items(ds: Dataset, index: int, keyword: str) -> list[Dataset]:
    """The ``keyword`` macro of frame ``index``: per-frame item first, then shared (C.7.6.16)."""
    items: list[Dataset] = []
    for groups_keyword, position in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_keyword)
        if isinstance(groups, DicomSequence) and len(groups) > position:
            macro = groups[position].get(keyword)
            if isinstance(macro, DicomSequence) and len(macro) > 0:
                items.append(macro[0])
    return items


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    """``count`` finite numbers from a DS multi-value, else ``None`` (malformed headers are ignored)."""
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        numbers = tuple(float(item) for item in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        return None
    return numbers
