"""Peak memory of decoding a 4096x4096 16-bit frame, and the zero-copy frame it relies on.

The budget counts tracemalloc's peak (numpy reports its buffers to it) from the moment the
file bytes are in memory, per pixel, result included: Pixel Data as pydicom holds it (2),
the float32 modality values (4) and the uint8 display (1) fit in 8 bytes a pixel only if
the stored frame is a view on the Pixel Data and windowing makes no frame-sized float.
"""

import tracemalloc
from io import BytesIO

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from models.decoded_image import DecodedImage
from models.pixels import decode_dicom, decode_image, read_dicom

SIDE = 4096
PIXELS = SIDE * SIDE
BUDGET_BYTES_PER_PIXEL = 8.0
SLOPE, INTERCEPT = 2.0, -1024.0
WINDOW = (3000.0, 6000.0)


@pytest.fixture(scope="module")
def stored() -> npt.NDArray[np.uint16]:
    """Seeded noise in 12 of 16 bits (the hardest case for RLE and deflate, and for a percentile)."""
    pixels = np.random.default_rng(2024).integers(0, 2**16, (SIDE, SIDE), dtype=np.uint16)
    pixels &= 0x0FFF
    return pixels


def grey_file(pixels: npt.NDArray[np.integer], syntax: UID = ExplicitVRLittleEndian, **attributes: object) -> bytes:
    """A DICOM MR file of ``pixels`` (12 bits stored in 16; signed for a signed dtype) with ``attributes``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def decode_with_peak(data: bytes) -> tuple[DecodedImage, float]:
    """decode_image(data) and tracemalloc's peak during it, in bytes per pixel."""
    tracemalloc.start()
    try:
        image = decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return image, peak / PIXELS


def assert_close(actual: npt.NDArray[np.uint8], expected: npt.NDArray[np.floating]) -> None:
    assert np.abs(actual.astype(int) - np.rint(expected).astype(int)).max() <= 1


def rescaled(stored: npt.NDArray[np.uint16], rows: int = 64) -> npt.NDArray[np.float64]:
    return stored[:rows].astype(np.float64) * SLOPE + INTERCEPT


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian], ids=["native", "deflated"])
def test_linear_window_within_budget(stored: npt.NDArray[np.uint16], syntax: UID) -> None:
    data = grey_file(
        stored, syntax, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT, WindowCenter=WINDOW[0], WindowWidth=WINDOW[1]
    )
    image, bytes_per_pixel = decode_with_peak(data)
    assert bytes_per_pixel <= BUDGET_BYTES_PER_PIXEL
    assert image.pixels.shape == (SIDE, SIDE) and image.window == WINDOW
    ramp = (rescaled(stored) - (WINDOW[0] - 0.5)) / (WINDOW[1] - 1) + 0.5
    assert_close(image.pixels[:64], np.clip(ramp, 0, 1) * 255)


def test_sigmoid_window_within_budget(stored: npt.NDArray[np.uint16]) -> None:
    data = grey_file(
        stored,
        RescaleSlope=SLOPE,
        RescaleIntercept=INTERCEPT,
        WindowCenter=WINDOW[0],
        WindowWidth=WINDOW[1],
        VOILUTFunction="SIGMOID",
    )
    image, bytes_per_pixel = decode_with_peak(data)
    assert bytes_per_pixel <= BUDGET_BYTES_PER_PIXEL
    assert_close(image.pixels[:64], 255 / (1 + np.exp(-4 * (rescaled(stored) - WINDOW[0]) / WINDOW[1])))


def test_percentile_window_within_budget(stored: npt.NDArray[np.uint16]) -> None:
    image, bytes_per_pixel = decode_with_peak(grey_file(stored, RescaleSlope=SLOPE, RescaleIntercept=INTERCEPT))
    assert bytes_per_pixel <= BUDGET_BYTES_PER_PIXEL
    low, high = np.percentile(stored.astype(np.float64) * SLOPE + INTERCEPT, [0.5, 99.5])
    assert image.window == pytest.approx(((low + high + 1) / 2, high - low + 1))
    assert_close(image.pixels[:64], np.clip((rescaled(stored) - low) / (high - low), 0, 1) * 255)


def small_frame(seed: int = 5) -> npt.NDArray[np.int16]:
    """Signed 12-bit values, -2048..2047, sign-extended into int16 as most writers store them."""
    return np.random.default_rng(seed).integers(-2048, 2048, (48, 80), dtype=np.int16)


def small_dataset(pixels: npt.NDArray[np.integer]) -> Dataset:
    return read_dicom(grey_file(pixels, WindowCenter=0, WindowWidth=4096))


def test_unused_high_bits_of_unsigned_pixels_are_masked() -> None:
    """PS3.5 8.1.1: bits above Bits Stored carry no meaning; the zero-copy view must not read them."""
    clean = (small_frame().astype(np.int32) + 2048).astype(np.uint16)
    noisy = clean | (np.random.default_rng(6).integers(0, 16, clean.shape, dtype=np.uint16) << 12)
    assert (noisy >> 12).any()
    assert np.array_equal(decode_dicom(small_dataset(noisy)).pixels, decode_dicom(small_dataset(clean)).pixels)


def test_signed_pixels_stored_without_sign_extension_are_sign_extended() -> None:
    extended = small_frame()
    bare = (extended.view(np.uint16) & 0x0FFF).view(np.int16)  # -1 stored as 0x0FFF, i.e. 4095 in int16
    assert (bare != extended).any()
    expected = decode_dicom(small_dataset(extended)).pixels
    assert np.array_equal(decode_dicom(small_dataset(bare)).pixels, expected)
    values = extended.astype(np.float64)
    assert_close(expected, np.clip((values + 0.5) / 4095 + 0.5, 0, 1) * 255)
