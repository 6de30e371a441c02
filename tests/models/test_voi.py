"""float32 block-wise windowing against float64 references written from PS3.3 C.11.1/C.11.2."""

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from models.pixels import decode_dicom
from models.voi import (
    BLOCK_VALUES,
    VOI_FUNCTIONS,
    VoiFunction,
    apply_window,
    lookup_uint8,
    percentile_window,
    scale_to_uint8,
)

Float64Array = npt.NDArray[np.float64]
UInt8Array = npt.NDArray[np.uint8]

ROWS, COLUMNS = 701, 509  # 356,809 values: more than one BLOCK_VALUES block, and a partial last block
assert BLOCK_VALUES < ROWS * COLUMNS < 2 * BLOCK_VALUES


def reference_linear(values: Float64Array, center: float, width: float) -> Float64Array:
    """PS3.3 C.11.2.1.2.1 as written: three branches, float64, not yet rounded."""
    if width == 1:
        return np.where(values <= center - 0.5, 0.0, 255.0)
    ramp = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    lower, upper = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    return np.where(values <= lower, 0.0, np.where(values > upper, 255.0, ramp))


def reference_linear_exact(values: Float64Array, center: float, width: float) -> Float64Array:
    """PS3.3 C.11.2.1.3.2, float64, not yet rounded."""
    return np.clip(((values - center) / width + 0.5) * 255, 0, 255)


def reference_sigmoid(values: Float64Array, center: float, width: float) -> Float64Array:
    """PS3.3 C.11.2.1.3.1, float64, not yet rounded."""
    with np.errstate(over="ignore"):
        return 255 / (1 + np.exp(-4 * (values - center) / width))


REFERENCES = {"LINEAR": reference_linear, "LINEAR_EXACT": reference_linear_exact, "SIGMOID": reference_sigmoid}


def reference_percentile_window(values: Float64Array) -> tuple[float, float]:
    low, high = (float(p) for p in np.percentile(values, [0.5, 99.5]))
    return (low + high + 1) / 2, high - low + 1


def assert_equal_but_for_rounding_ties(actual: UInt8Array, mapped: Float64Array) -> None:
    """``actual`` is rint(``mapped``), except that a pixel whose exact value lies within 0.01
    of a .5 tie may round the other way (float32 and float64 land on either side of it)."""
    assert actual.dtype == np.uint8 and actual.shape == mapped.shape
    difference = np.abs(actual.astype(int) - np.rint(mapped).astype(int))
    near_tie = np.abs(mapped - np.floor(mapped) - 0.5) < 0.01
    assert difference.max() <= 1
    assert not np.any((difference > 0) & ~near_tie)


def stored_values(seed: int = 3) -> npt.NDArray[np.uint16]:
    """12-bit stored values with structure (a smooth ramp) and noise, as an MR frame has."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 3000, ROWS * COLUMNS).reshape(ROWS, COLUMNS)
    return np.clip(ramp + rng.normal(0, 300, ramp.shape), 0, 4095).astype(np.uint16)


def grey_dataset(pixels: npt.NDArray[np.uint16], **attributes: object) -> Dataset:
    """A native MONOCHROME2 12-in-16-bit MR object holding ``pixels``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


RESCALES = [("1", "0"), ("2", "-1024"), ("0.37", "-12.3"), ("-1.5", "800")]


@pytest.mark.parametrize(("slope", "intercept"), RESCALES)
@pytest.mark.parametrize(
    ("function", "center", "width"),
    [("LINEAR", 1000.0, 2500.0), ("LINEAR", 400.5, 37.0), ("LINEAR_EXACT", 1000.0, 2500.0), ("SIGMOID", 600.0, 900.0)],
)
def test_window_after_rescale_matches_the_float64_reference(
    slope: str, intercept: str, function: VoiFunction, center: float, width: float
) -> None:
    pixels = stored_values()
    ds = grey_dataset(
        pixels,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=center,
        WindowWidth=width,
        VOILUTFunction=function,
    )
    image = decode_dicom(ds)
    assert image.window == (center, width)
    values = pixels.astype(np.float64) * float(slope) + float(intercept)
    assert_equal_but_for_rounding_ties(image.pixels, REFERENCES[function](values, center, width))


@pytest.mark.parametrize(("slope", "intercept"), RESCALES)
def test_percentile_window_after_rescale_matches_the_float64_reference(slope: str, intercept: str) -> None:
    pixels = stored_values()
    image = decode_dicom(grey_dataset(pixels, RescaleSlope=slope, RescaleIntercept=intercept))
    values = pixels.astype(np.float64) * float(slope) + float(intercept)
    window = reference_percentile_window(values)
    assert image.window == pytest.approx(window, rel=1e-9)
    assert_equal_but_for_rounding_ties(image.pixels, reference_linear(values, *window))


@pytest.mark.parametrize("function", VOI_FUNCTIONS)
@pytest.mark.parametrize("window", [(0.0, 1.0), (-3.25, 7.5), (120.0, 4000.0), (1e4, 2.0)])
def test_apply_window_on_float32_values_matches_the_float64_reference(
    function: VoiFunction, window: tuple[float, float]
) -> None:
    rng = np.random.default_rng(11)
    values = rng.normal(0, 1500, (ROWS, COLUMNS)).astype(np.float32)
    values[0, :5] = [window[0] - 0.5, window[0], window[0] + 0.5, -1e38, 1e38]  # the threshold, the center, far out
    before = values.copy()
    display = apply_window(values, window, function)
    assert_equal_but_for_rounding_ties(display, REFERENCES[function](values.astype(np.float64), *window))
    assert np.array_equal(values, before)  # the caller's values are never scratch space


def test_percentile_window_partitions_float32_values() -> None:
    values = stored_values().astype(np.float32) * np.float32(0.37) - np.float32(12.3)
    assert percentile_window(values) == pytest.approx(reference_percentile_window(values.astype(np.float64)), rel=1e-6)


@pytest.mark.parametrize("bits", [8, 10, 12, 15, 16])
def test_scale_to_uint8_equals_float64_for_every_stored_value(bits: int) -> None:
    """x * 255 is exact in float32 up to 16 bits and the division correctly rounded: no value moves."""
    stored = np.arange(2**bits, dtype=np.uint16 if bits > 8 else np.uint8)
    expected = np.rint(stored.astype(np.float64) * 255 / (2**bits - 1)).astype(np.uint8)
    assert np.array_equal(scale_to_uint8(stored, bits), expected)
    assert np.array_equal(scale_to_uint8(np.tile(stored, 2**19 // stored.size + 1), bits)[: stored.size], expected)


def test_scale_to_uint8_clips_values_beyond_the_bits() -> None:
    assert scale_to_uint8(np.array([-5, 0, 4095, 4096, 65535], dtype=np.int32), 12).tolist() == [0, 0, 255, 255, 255]


def test_lookup_clamps_to_the_table_and_rounds_the_index() -> None:
    table = np.arange(10, 20, dtype=np.uint8)
    values = np.array([-100.0, 5.4, 7.5, 8.5, 14.0, 1e9], dtype=np.float32)  # rint: half to even
    assert lookup_uint8(values, table, 5).tolist() == [10, 10, 13, 13, 19, 19]
    assert lookup_uint8(values, table, -100).tolist() == [10, 19, 19, 19, 19, 19]


@pytest.mark.parametrize(("function", "width"), [("LINEAR", 0.5), ("LINEAR_EXACT", 0.0), ("SIGMOID", float("nan"))])
def test_apply_window_refuses_an_unusable_width(function: VoiFunction, width: float) -> None:
    with pytest.raises(ValueError, match="window width must be finite"):
        apply_window(np.zeros((2, 2), np.float32), (0.0, width), function)
