"""VOI LUT Function, VOI LUT Sequence and enhanced functional groups (PS3.3 C.11.2, C.7.6.16)."""

import logging

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from models.errors import InconsistentPixelData
from models.pixels import decode_dicom, read_dicom

RAMP = np.arange(0, 64 * 64 * 10, 10, dtype=np.int16).reshape(64, 64) % 1000  # 0..990 in steps of 10


def mr_small(pixels: npt.NDArray[np.int16] = RAMP) -> Dataset:
    """MR_small.dcm (64x64 signed 16-bit, window 600/1600) with ``pixels`` as its frame."""
    path = get_testdata_file("MR_small.dcm")
    assert path is not None
    with open(path, "rb") as fh:
        ds = read_dicom(fh.read())
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


def sigmoid(values: npt.NDArray[np.float64], center: float, width: float) -> npt.NDArray[np.uint8]:
    """PS3.3 C.11.2.1.3.1 with y_min 0, y_max 255."""
    return np.rint(255 / (1 + np.exp(-4 * (values - center) / width))).astype(np.uint8)


def item(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_sigmoid_function() -> None:
    ds = mr_small(np.full((64, 64), 300, dtype=np.int16))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 500, 400, "SIGMOID"
    image = decode_dicom(ds)
    assert image.window == (500.0, 400.0)
    assert (image.pixels == 30).all()  # 255 / (1 + e^2) = 30.35


def test_sigmoid_function_over_a_ramp() -> None:
    ds = mr_small()
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 500, 400, "SIGMOID"
    assert np.array_equal(decode_dicom(ds).pixels, sigmoid(RAMP.astype(np.float64), 500, 400))


@pytest.mark.parametrize(("function", "expected"), [("LINEAR_EXACT", 128), ("LINEAR", 255)])
def test_linear_exact_differs_from_linear_at_the_center(function: str, expected: int) -> None:
    """W=2 C=500 at x=500: LINEAR_EXACT (C.11.2.1.3.2) gives 127.5; LINEAR's ramp is already at the top."""
    ds = mr_small(np.full((64, 64), 500, dtype=np.int16))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 500, 2, function
    assert (decode_dicom(ds).pixels == expected).all()


def test_linear_exact_accepts_a_width_below_one() -> None:
    ds = mr_small()
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 500, 0.5, "LINEAR_EXACT"
    image = decode_dicom(ds)
    assert image.window == (500.0, 0.5)
    expected = np.where(RAMP > 500, 255, np.where(RAMP == 500, 128, 0)).astype(np.uint8)  # 127.5 at the center
    assert np.array_equal(image.pixels, expected)


def test_unknown_function_is_linear(caplog: pytest.LogCaptureFixture) -> None:
    ds = mr_small()
    ds.VOILUTFunction = "CUBIC"
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(decode_dicom(ds).pixels, decode_dicom(mr_small()).pixels)
    assert "unknown VOI LUT Function 'CUBIC'" in caplog.text


def inverting_lut(lut_data_vr: str = "US") -> Dataset:
    """1000 entries from 0, 8-bit: entry i is 255 - i // 4."""
    table = (255 - np.arange(1000) // 4).astype(np.uint16)
    lut = item(LUTDescriptor=[1000, 0, 8])
    lut.add_new(0x00283006, lut_data_vr, table.tolist() if lut_data_vr == "US" else table.astype("<u2").tobytes())
    return lut


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_voi_lut_sequence_without_a_window(vr: str) -> None:
    ds = mr_small()
    del ds.WindowCenter, ds.WindowWidth
    ds.VOILUTSequence = Sequence([inverting_lut(vr)])
    image = decode_dicom(ds)
    assert image.window is None
    assert np.array_equal(image.pixels, (255 - RAMP // 4).astype(np.uint8))


def test_voi_lut_sequence_clamps_values_outside_its_range() -> None:
    ds = mr_small(np.array([[-5, 0, 999, 30000]] * 64, dtype=np.int16).repeat(16, axis=1))
    del ds.WindowCenter, ds.WindowWidth
    ds.VOILUTSequence = Sequence([inverting_lut()])
    assert decode_dicom(ds).pixels[0, ::16].tolist() == [255, 255, 6, 6]


@pytest.mark.parametrize(
    ("descriptor", "message"),
    [
        ([1000, 0, 3], "1000 entries of 3 bits"),
        ([2000, 0, 8], "1000 entries of 8 bits for a 2000-entry"),
        ([1000, 0], ""),
    ],
)
def test_malformed_voi_lut_descriptor(descriptor: list[int], message: str) -> None:
    ds = mr_small()
    del ds.WindowCenter, ds.WindowWidth
    lut = inverting_lut()
    lut.LUTDescriptor = descriptor
    ds.VOILUTSequence = Sequence([lut])
    with pytest.raises(InconsistentPixelData, match=f"VOI LUT Sequence is unusable: .*{message}"):
        decode_dicom(ds)


def enhanced(per_frame_window: Dataset | None, per_frame_rescale: Dataset | None = None) -> Dataset:
    """Three frames (RAMP, RAMP + 1, RAMP + 2); shared groups: slope 2, intercept -100, C/W 900/800."""
    ds = mr_small(np.stack([RAMP, RAMP + 1, RAMP + 2]))
    ds.NumberOfFrames = 3
    shared = item(
        PixelValueTransformationSequence=Sequence([item(RescaleSlope=2, RescaleIntercept=-100, RescaleType="US")]),
        FrameVOILUTSequence=Sequence([item(WindowCenter=900, WindowWidth=800)]),
    )
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    middle = item()
    if per_frame_window:
        middle.FrameVOILUTSequence = Sequence([per_frame_window])
    if per_frame_rescale:
        middle.PixelValueTransformationSequence = Sequence([per_frame_rescale])
    ds.PerFrameFunctionalGroupsSequence = Sequence([item(), middle, item()])
    return ds


def test_enhanced_shared_functional_groups_override_the_top_level() -> None:
    image = decode_dicom(enhanced(None))
    assert (image.frame_index, image.window) == (1, (900.0, 800.0))
    values = (RAMP + 1).astype(np.float64) * 2 - 100
    expected = np.rint(np.clip(((values - 899.5) / 799 + 0.5), 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(image.pixels, expected)


def test_enhanced_per_frame_group_overrides_the_shared_group() -> None:
    image = decode_dicom(enhanced(item(WindowCenter=700, WindowWidth=300, VOILUTFunction="SIGMOID")))
    assert image.window == (700.0, 300.0)
    values = (RAMP + 1).astype(np.float64) * 2 - 100
    assert np.array_equal(image.pixels, sigmoid(values, 700, 300))


def test_enhanced_per_frame_group_without_a_window_falls_back_to_the_shared_one() -> None:
    image = decode_dicom(enhanced(item(WindowCenterWidthExplanation="none")))
    assert image.window == (900.0, 800.0)


def test_top_level_attributes_remain_the_fallback() -> None:
    ds = enhanced(None)
    del ds.SharedFunctionalGroupsSequence
    assert decode_dicom(ds).window == (600.0, 1600.0)


def test_enhanced_per_frame_rescale_overrides_the_shared_one() -> None:
    window = item(WindowCenter=500, WindowWidth=400, VOILUTFunction="SIGMOID")
    image = decode_dicom(enhanced(window, item(RescaleSlope=1, RescaleIntercept=0, RescaleType="US")))
    assert np.array_equal(image.pixels, sigmoid((RAMP + 1).astype(np.float64), 500, 400))


def tripling_modality_lut() -> Dataset:
    """PS3.3 C.11.1 Modality LUT: 1000 16-bit entries from 0, entry i is 3 i + 7."""
    return item(LUTDescriptor=[1000, 0, 16], ModalityLUTType="US", LUTData=(np.arange(1000) * 3 + 7).tolist())


def test_modality_lut_sequence_comes_before_the_window() -> None:
    ds = mr_small()
    ds.ModalityLUTSequence = Sequence([tripling_modality_lut()])
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1500, 1200, "SIGMOID"
    image = decode_dicom(ds)
    assert image.window == (1500.0, 1200.0)
    assert np.array_equal(image.pixels, sigmoid(RAMP.astype(np.float64) * 3 + 7, 1500, 1200))


def test_modality_lut_sequence_without_a_window_takes_the_percentiles_of_its_output() -> None:
    ds = mr_small()
    del ds.WindowCenter, ds.WindowWidth
    ds.ModalityLUTSequence = Sequence([tripling_modality_lut()])
    low, high = np.percentile(RAMP.astype(np.float64) * 3 + 7, [0.5, 99.5])
    assert decode_dicom(ds).window == pytest.approx(((low + high + 1) / 2, high - low + 1))


@pytest.mark.parametrize("windowed", [True, False])
@pytest.mark.parametrize(("slope", "intercept"), [("1e39", "0"), ("1", "-1e39")])
def test_rescale_beyond_float32_is_refused(slope: str, intercept: str, windowed: bool) -> None:
    """Modality values are float32 (``modality_values``): a slope or intercept past its range is unusable."""
    ds = mr_small()
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if not windowed:  # the percentile window reads the rescale before any modality value is made
        del ds.WindowCenter, ds.WindowWidth
    with pytest.raises(InconsistentPixelData, match=r"rescale values are unusable: .* overflow float32"):
        decode_dicom(ds)
