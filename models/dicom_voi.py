"""One grayscale frame to display values: Modality LUT (PS3.3 C.11.1), then VOI LUT (C.11.2).

Enhanced multi-frame objects keep these attributes in functional groups (C.7.6.16):
Pixel Value Transformation (C.7.6.16.2.9) holds Rescale Slope/Intercept and Frame VOI
LUT (C.7.6.16.2.10) holds Window Center/Width, VOI LUT Function and possibly a VOI LUT
Sequence. The Per-Frame item of the chosen frame overrides the Shared item; top-level
attributes are the fallback.
"""

import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRBigEndian

from models.decoded_image import Window
from models.errors import InconsistentPixelData
from models.voi import (
    ROBUST_PERCENTILES,
    VOI_FUNCTIONS,
    VoiFunction,
    apply_window,
    is_valid_window,
    lookup_uint8,
    percentile_window,
    scale_to_uint8,
    window_for_range,
)

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]

_FLOAT32_MAX = float(np.finfo(np.float32).max)
# What pydicom's LUT functions raise on malformed descriptors or data.
_LUT_ERRORS = (
    ValueError, AttributeError, TypeError, KeyError, IndexError, NotImplementedError, RuntimeError, struct.error,
)  # fmt: skip


@dataclass(frozen=True)
class _StoredWindow:
    window: Window
    function: VoiFunction


def grayscale_display(
    frame: npt.NDArray[np.generic], ds: Dataset, index: int, values: FloatArray | None = None
) -> tuple[UInt8Array, Window | None]:
    """Display values of frame ``index`` and the window applied (None for a VOI LUT).

    The VOI source is the first of per-frame group, shared group and top level that has
    a usable Window Center/Width, else the first with a VOI LUT Sequence; with neither,
    a 0.5-99.5 percentile LINEAR window. ``values``: the frame's ``modality_values`` when
    the caller already has them (the worker does, for the model input), so they are not
    computed twice.
    """
    sources = [*_group_items(ds, index, "FrameVOILUTSequence"), ds]
    pixels, rescale = _windowing_input(frame, ds, index, values)
    for source in sources:
        stored = _stored_window(source)
        if stored is not None:
            return apply_window(pixels, stored.window, stored.function, rescale), stored.window
    for source in sources:
        if source.get("VOILUTSequence"):
            return _apply_voi_lut_sequence(pixels, source, ds, rescale), None
    window = _percentile_window(frame, ds, index)
    return apply_window(pixels, window, "LINEAR", rescale), window


def _windowing_input(
    frame: npt.NDArray[np.generic], ds: Dataset, index: int, given: FloatArray | None
) -> tuple[npt.NDArray[np.generic], tuple[float, float] | None]:
    """What the VOI functions read: the caller's modality values, else the stored frame with
    its rescale applied block by block (no frame-sized float32 copy), else (a Modality LUT
    Sequence) the modality values computed here."""
    if given is not None:
        return given, None
    rescale = _rescale(_modality_source(ds, index))
    if rescale is None:
        return modality_values(frame, ds, index), None
    return frame, rescale


def modality_values(frame: npt.NDArray[np.generic], ds: Dataset, index: int) -> FloatArray:
    """PS3.3 C.11.1: Rescale Slope/Intercept (functional group first) or a Modality LUT Sequence.

    One float32 copy of the frame, rescaled in place: exact for stored values of up to
    24 bits, within float32 rounding (about 6e-8 relative) otherwise.
    """
    source = _modality_source(ds, index)
    rescale = _rescale(source)
    if rescale is None:
        try:
            return np.asarray(apply_modality_lut(frame, source), dtype=np.float32)
        except _LUT_ERRORS as exc:
            raise InconsistentPixelData(f"modality LUT / rescale values are unusable: {_one_line(exc)}") from exc
    slope, intercept = rescale
    values = frame.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _percentile_window(frame: npt.NDArray[Any], ds: Dataset, index: int) -> Window:
    """``percentile_window`` of the modality values, at half its memory under a rescale.

    A rescale is affine, and percentiles (linearly interpolated) commute with affine maps;
    a negative slope swaps the symmetric 0.5th and 99.5th. So the stored values are
    partitioned (a copy of 2 bytes a pixel for 16-bit data) rather than float32 values.
    """
    source = _modality_source(ds, index)
    rescale = _rescale(source)
    if rescale is None:
        return percentile_window(modality_values(frame, ds, index))
    slope, intercept = rescale
    low, high = sorted(float(p) * slope + intercept for p in np.percentile(frame, ROBUST_PERCENTILES))
    return window_for_range(low, high)


def _has_rescale(item: Dataset) -> bool:
    return "RescaleSlope" in item and "RescaleIntercept" in item


def _modality_source(ds: Dataset, index: int) -> Dataset:
    """The Pixel Value Transformation item with a rescale for frame ``index``, else the top level."""
    rescales = [item for item in _group_items(ds, index, "PixelValueTransformationSequence") if _has_rescale(item)]
    return rescales[0] if rescales else ds


def _rescale(source: Dataset) -> tuple[float, float] | None:
    """(0028,1053) Rescale Slope and (0028,1052) Rescale Intercept; (1, 0) when absent.

    None when a Modality LUT Sequence (0028,3000) takes their place, as pydicom decides.
    Values must be finite in float32, where the modality values are computed.
    """
    if source.get("ModalityLUTSequence"):
        return None
    if not _has_rescale(source):
        return 1.0, 0.0
    try:
        slope, intercept = float(source.RescaleSlope), float(source.RescaleIntercept)
    except (TypeError, ValueError) as exc:
        raise InconsistentPixelData(f"modality LUT / rescale values are unusable: {_one_line(exc)}") from exc
    if not all(math.isfinite(value) and abs(value) <= _FLOAT32_MAX for value in (slope, intercept)):
        raise InconsistentPixelData(
            f"modality LUT / rescale values are unusable: slope {slope!r} / intercept {intercept!r} overflow float32"
        )
    return slope, intercept


def _group_items(ds: Dataset, index: int, keyword: str) -> list[Dataset]:
    """The ``keyword`` macro items for frame ``index``: per-frame first, then shared (C.7.6.16)."""
    items = []
    for groups_keyword, position in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_keyword)
        if not isinstance(groups, DicomSequence) or len(groups) <= position:
            continue
        macro = groups[position].get(keyword)
        if isinstance(macro, DicomSequence) and len(macro) > 0:
            items.append(macro[0])
    return items


def _apply_voi_lut_sequence(
    values: npt.NDArray[np.generic], source: Dataset, ds: Dataset, rescale: tuple[float, float] | None = None
) -> UInt8Array:
    """PS3.3 C.11.2.1.1: the first VOI LUT, indexed by modality output, scaled to 0..255.

    Inputs below the first mapped value take the first entry, inputs past the table the
    last. (pydicom's ``apply_voi`` indexes an 8-bit LUT with a uint8 array, so inputs
    past 255 wrap; the lookup is done here instead.)
    """
    try:
        lut = source.VOILUTSequence[0]
        entries, first_mapped, bits = (int(v) for v in lut.LUTDescriptor)
        table = _lut_data(lut.LUTData, ds)
    except _LUT_ERRORS as exc:
        raise InconsistentPixelData(f"VOI LUT Sequence is unusable: {_one_line(exc)}") from exc
    entries = entries or 2**16  # PS3.3 C.11.2.1.1: 0 means 65536 entries
    if not 8 <= bits <= 16 or table.size < entries:
        raise InconsistentPixelData(
            f"VOI LUT Sequence is unusable: {table.size} entries of {bits} bits for a {entries}-entry table"
        )
    return lookup_uint8(values, scale_to_uint8(table[:entries], bits), first_mapped, rescale)


def _lut_data(data: object, ds: Dataset) -> npt.NDArray[np.int64]:
    """(0028,3006) LUT Data: US/SS values, or OW bytes in the dataset's byte order."""
    if isinstance(data, bytes):
        big_endian = UID(ds.file_meta.TransferSyntaxUID) == ExplicitVRBigEndian
        return np.frombuffer(data, dtype=">u2" if big_endian else "<u2").astype(np.int64)
    values = data if isinstance(data, Sequence) else [data]
    return np.asarray(values, dtype=np.int64)


def _stored_window(source: Dataset) -> _StoredWindow | None:
    """The first (0028,1050) Window Center / (0028,1051) Window Width pair, if usable."""
    center, width = source.get("WindowCenter"), source.get("WindowWidth")
    if center is None or width is None:
        return None
    function = _voi_function(source)
    try:
        window = (_as_float(_first(center)), _as_float(_first(width)))
    except (TypeError, ValueError, IndexError):
        logger.warning("ignoring a Window Center/Width that is not numeric")
        return None
    if not is_valid_window(window, function):
        logger.warning("ignoring Window Width %s, out of range for %s (PS3.3 C.11.2.1)", window[1], function)
        return None
    return _StoredWindow(window, function)


def _voi_function(source: Dataset) -> VoiFunction:
    """(0028,1056) VOI LUT Function; absent or unknown means LINEAR (C.11.2.1.3)."""
    value = str(source.get("VOILUTFunction") or "LINEAR").strip().upper()
    for function in VOI_FUNCTIONS:
        if value == function:
            return function
    logger.warning("unknown VOI LUT Function %r; using LINEAR", value[:16])
    return "LINEAR"


def _first(value: object) -> object:
    """Window Center/Width may be multi-valued (PS3.3 C.11.2.1.2); the first pair is the default."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return value[0]
    return value


def _as_float(value: object) -> float:
    if not isinstance(value, int | float | str):
        raise TypeError(f"not a number: {type(value).__name__}")
    return float(value)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
