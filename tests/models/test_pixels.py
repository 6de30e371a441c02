"""DICOM decoding on pydicom's own test files, checked against independent computations."""

from io import BytesIO
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels.processing import apply_voi_lut

from models.errors import UnreadableDicom
from models.manifest import load_manifest
from models.pixels import decode_dicom, decode_image, read_dicom
from models.registry import default_manifest_path

FloatArray = npt.NDArray[np.float64]


def file_bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as fh:
        return fh.read()


def dataset(name: str) -> Dataset:
    return read_dicom(file_bytes(name))


def reference_window(values: FloatArray, center: float, width: float) -> npt.NDArray[np.uint8]:
    """PS3.3 C.11.2.1.2.1 written as one clipped ramp, scaled to 0..255."""
    ramp = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.rint(np.clip(ramp, 0.0, 1.0) * 255).astype(np.uint8)


def reference_percentile(values: FloatArray) -> npt.NDArray[np.uint8]:
    low, high = np.percentile(values, [0.5, 99.5])
    ramp = np.clip((values - low) / (high - low), 0.0, 1.0)
    display: npt.NDArray[np.uint8] = np.rint(ramp * 255).astype(np.uint8)
    return display


def assert_close(actual: npt.NDArray[np.uint8], expected: npt.NDArray[np.uint8], atol: int = 1) -> None:
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= atol


MR = "MR_small.dcm"


def test_mr_small_applies_the_file_window() -> None:
    ds = pydicom.dcmread(BytesIO(file_bytes(MR)))
    image = decode_dicom(dataset(MR))
    assert (image.source, image.frame_count, image.frame_index, image.window) == ("dicom", 1, 0, (600.0, 1600.0))
    assert image.pixels.dtype == np.uint8 and image.pixels.flags.c_contiguous and not image.is_color
    expected = reference_window(ds.pixel_array.astype(np.float64), 600.0, 1600.0)
    assert np.array_equal(image.pixels, expected)


def test_mr_small_agrees_with_pydicom_windowing() -> None:
    ds = pydicom.dcmread(BytesIO(file_bytes(MR)))
    windowed = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)  # output range of int16
    expected = np.rint((windowed + 32768) / 65535 * 255).astype(np.uint8)
    assert_close(decode_dicom(ds).pixels, expected)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_every_lossless_syntax_decodes_identically(name: str) -> None:
    assert np.array_equal(decode_dicom(dataset(name)).pixels, decode_dicom(dataset(MR)).pixels)


def test_preamble_less_dataset_with_sop_instance_uid_is_accepted() -> None:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, pydicom.dcmread(BytesIO(file_bytes(MR))))
    ds = read_dicom(buf.getvalue())
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert np.array_equal(decode_dicom(ds).pixels, decode_dicom(dataset(MR)).pixels)


def test_preamble_less_dataset_without_sop_instance_uid_is_refused() -> None:
    ds = pydicom.dcmread(BytesIO(file_bytes(MR)))
    del ds.SOPInstanceUID
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    with pytest.raises(UnreadableDicom, match="SOP Instance UID"):
        read_dicom(buf.getvalue())


def test_deflate_without_window_uses_the_percentile_window() -> None:
    ds = dataset("image_dfl.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    image = decode_dicom(ds)
    values = ds.pixel_array.astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    assert image.window == pytest.approx(((low + high + 1) / 2, high - low + 1))
    assert_close(image.pixels, reference_percentile(values))


def test_rescale_slope_and_intercept_are_applied_before_the_window() -> None:
    ds = dataset(MR)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 500, 2000
    hounsfield_like = ds.pixel_array.astype(np.float64) * 2 - 100
    assert np.array_equal(decode_dicom(ds).pixels, reference_window(hounsfield_like, 500.0, 2000.0))


def test_ct_rescale_without_window() -> None:
    ds = dataset("CT_small.dcm")
    values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert_close(decode_dicom(ds).pixels, reference_percentile(values))


def test_window_absent_falls_back_to_percentile() -> None:
    ds = dataset(MR)
    del ds.WindowCenter, ds.WindowWidth
    image = decode_dicom(ds)
    assert image.window != (600.0, 1600.0)
    assert_close(image.pixels, reference_percentile(ds.pixel_array.astype(np.float64)))


def test_multi_valued_window_uses_the_first_pair() -> None:
    ds = dataset(MR)
    ds.WindowCenter, ds.WindowWidth = [600, 100], [1600, 50]
    image = decode_dicom(ds)
    assert image.window == (600.0, 1600.0)
    assert np.array_equal(image.pixels, decode_dicom(dataset(MR)).pixels)


def test_window_width_below_one_is_ignored() -> None:
    ds = dataset(MR)
    ds.WindowWidth = 0
    assert_close(decode_dicom(ds).pixels, reference_percentile(ds.pixel_array.astype(np.float64)))


def test_monochrome1_is_inverted_after_windowing() -> None:
    ds = dataset(MR)
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert np.array_equal(decode_dicom(ds).pixels, 255 - decode_dicom(dataset(MR)).pixels)


def test_multi_frame_gives_the_middle_frame() -> None:
    ds = dataset("SC_rgb_rle_2frame.dcm")
    image = decode_dicom(ds)
    assert (image.frame_count, image.frame_index, image.window) == (2, 1, None)
    assert image.is_color and np.array_equal(image.pixels, ds.pixel_array[1])


def test_multi_frame_grayscale_middle_frame() -> None:
    ds = dataset("rtdose.dcm")
    image = decode_dicom(ds)
    assert (image.frame_count, image.frame_index) == (15, 7)
    assert_close(image.pixels, reference_percentile(ds.pixel_array[7].astype(np.float64)))


def test_jpeg_baseline_ybr_is_rgb_and_close_to_the_lossless_reference() -> None:
    lossless = decode_dicom(dataset("SC_rgb_rle.dcm")).pixels.astype(int)
    image = decode_dicom(dataset("SC_rgb_jpeg_dcmtk.dcm"))
    assert image.is_color and image.pixels.shape == (100, 100, 3) and image.window is None
    difference = np.abs(image.pixels.astype(int) - lossless)
    assert difference.max() <= 8 and difference.mean() < 1.0
    assert tuple(image.pixels[5, 5]) == pytest.approx((255, 0, 0), abs=8)  # top band is red


def test_ybr_full_422_is_converted_to_rgb() -> None:
    lossless = decode_dicom(dataset("SC_rgb_rle.dcm")).pixels.astype(int)
    image = decode_dicom(dataset("SC_ybr_full_422_uncompressed.dcm"))
    assert image.is_color
    assert np.abs(image.pixels.astype(int) - lossless).max() <= 8


def test_16_bit_colour_is_scaled_to_8_bit() -> None:
    ds = dataset("SC_rgb_rle_16bit.dcm")
    expected = np.rint(ds.pixel_array.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(decode_dicom(ds).pixels, expected)


def test_palette_colour_goes_through_its_lookup_tables() -> None:
    ds = dataset("examples_palette.dcm")
    entries, first, bits = ds.RedPaletteColorLookupTableDescriptor
    assert bits == 16
    channels = [
        np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, dtype="<u2") for c in ("Red", "Green", "Blue")
    ]
    index = np.clip(ds.pixel_array.astype(int) - first, 0, entries - 1)
    expected = np.rint(np.stack([lut[index] for lut in channels], axis=-1) / 257).astype(np.uint8)
    image = decode_dicom(ds)
    assert image.is_color and image.window is None
    assert np.array_equal(image.pixels, expected)


def test_decode_image_sniffs_dicom() -> None:
    image = decode_image(file_bytes(MR))
    assert np.array_equal(image.pixels, decode_dicom(dataset(MR)).pixels)


def test_decode_image_keeps_the_dicom_error_for_a_damaged_dicom_file() -> None:
    with pytest.raises(UnreadableDicom, match="no data elements after the File Meta Information"):
        decode_image(file_bytes(MR)[:300])


def test_an_input_policy_makes_the_model_input_and_leaves_the_display_alone() -> None:
    """``models evaluate``/``calibrate`` feed the model what the worker feeds it: MR_small's narrow
    stored window is the display, the default model's full-range policy is the model input."""
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    policy = load_manifest(default_manifest_path()).input_policy
    plain, with_policy = decode_image(data), decode_image(data, input_policy=policy)
    np.testing.assert_array_equal(with_policy.pixels, plain.pixels)
    expected = decode_dicom(read_dicom(data), input_policy=policy).model_input
    assert expected is not None
    np.testing.assert_array_equal(with_policy.model_pixels, expected)
    assert not np.array_equal(with_policy.model_pixels, plain.model_pixels)
