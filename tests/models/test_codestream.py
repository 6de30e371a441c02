"""Compressed frames whose codestream header declares a bomb are refused before decoding."""

import struct

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame

import models.dicom_pixels
from models.codestream import codestream_dimensions
from models.errors import DecompressionBomb, InconsistentPixelData
from models.pixels import decode_dicom, read_dicom

HUGE = 40_000  # 40000 x 40000 x 2 bytes: 3.2 GB if a decoder ever allocated it


def load(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as fh:
        return read_dicom(fh.read())


def first_frame(ds: Dataset) -> bytes:
    return get_frame(ds.PixelData, 0, number_of_frames=1)


def with_jpeg_size(frame: bytes, sof: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOFn / SOF55 frame header: marker, Lf (2), P (1), Y (2), X (2)."""
    at = frame.index(sof)
    return frame[: at + 5] + struct.pack(">HH", height, width) + frame[at + 9 :]


def with_siz_size(codestream: bytes, width: int, height: int) -> bytes:
    """Rewrite Xsiz/Ysiz of the SIZ marker (offset 8 after SOC, SIZ, Lsiz, Rsiz)."""
    return codestream[:8] + struct.pack(">II", width, height) + codestream[16:]


def as_jp2(codestream: bytes) -> bytes:
    """A minimal JP2 file: signature box, file type box, contiguous codestream box."""
    signature = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
    ftyp = struct.pack(">I4s4sI4s", 20, b"ftyp", b"jp2 ", 0, b"jp2 ")
    return signature + ftyp + struct.pack(">I4s", 8 + len(codestream), b"jp2c") + codestream


@pytest.fixture(autouse=True)
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal here must come before a decoder is asked for pixels."""

    def fail(*_: object, **__: object) -> None:
        raise AssertionError("the frame reached the decoder")

    monkeypatch.setattr(models.dicom_pixels, "pixel_array", fail)


def jpeg_ls_bomb() -> Dataset:
    ds = load("MR_small_jpeg_ls_lossless.dcm")
    ds.PixelData = encapsulate([with_jpeg_size(first_frame(ds), b"\xff\xf7", HUGE, HUGE)])
    return ds


def test_jpeg_baseline_frame_declaring_a_huge_image() -> None:
    ds = load("SC_rgb_jpeg.dcm")
    ds.PixelData = encapsulate([with_jpeg_size(first_frame(ds), b"\xff\xc0", HUGE, HUGE)])
    with pytest.raises(DecompressionBomb, match="compressed frame declares 40000x40000 pixels"):
        decode_dicom(ds)


def test_jpeg_ls_frame_declaring_a_huge_image() -> None:
    with pytest.raises(DecompressionBomb, match="compressed frame declares 40000x40000 pixels"):
        decode_dicom(jpeg_ls_bomb())


def test_jpeg_2000_frame_declaring_a_huge_image() -> None:
    ds = load("MR_small_jp2klossless.dcm")
    ds.PixelData = encapsulate([with_siz_size(first_frame(ds), HUGE, HUGE)])
    with pytest.raises(DecompressionBomb, match="compressed frame declares 40000x40000 pixels"):
        decode_dicom(ds)


def test_jp2_wrapped_frame_declaring_a_huge_image() -> None:
    ds = load("MR_small_jp2klossless.dcm")
    ds.PixelData = encapsulate([as_jp2(with_siz_size(first_frame(ds), HUGE, HUGE))])
    with pytest.raises(DecompressionBomb, match="compressed frame declares 40000x40000 pixels"):
        decode_dicom(ds)


def test_the_selected_middle_frame_is_the_one_checked() -> None:
    ds = load("MR_small_jpeg_ls_lossless.dcm")
    honest = first_frame(ds)
    ds.PixelData = encapsulate([honest, first_frame(jpeg_ls_bomb()), honest])
    ds.NumberOfFrames = 3
    with pytest.raises(DecompressionBomb, match="40000x40000"):
        decode_dicom(ds)


def test_codestream_size_that_contradicts_rows_and_columns() -> None:
    ds = load("MR_small_jpeg_ls_lossless.dcm")
    ds.PixelData = encapsulate([with_jpeg_size(first_frame(ds), b"\xff\xf7", 64, 65)])
    with pytest.raises(InconsistentPixelData, match="declares 64x65 pixels but Columns x Rows is 64x64"):
        decode_dicom(ds)


def test_jpeg_2000_offsets_are_subtracted() -> None:
    codestream = first_frame(load("MR_small_jp2klossless.dcm"))
    shifted = codestream[:8] + struct.pack(">IIII", 74, 84, 10, 20) + codestream[24:]
    assert codestream_dimensions(shifted) == (64, 64)
    assert codestream_dimensions(as_jp2(shifted)) == (64, 64)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"\x00" * 64, "starts with no JPEG, JPEG 2000 or JP2 header"),
        (b"\xff\xd8\xff\xda\x00\x08", "no frame header before the scan data"),
        (b"\xff\x4f\xff\x51\x00\x29", "no complete SIZ marker"),
        (b"\xff\x4f\xff\x51\x00\x29\x00\x00" + struct.pack(">IIII", 64, 64, 64, 0), "empty image area"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 8, "no contiguous codestream"),
    ],
)
def test_unreadable_codestream_headers(frame: bytes, message: str) -> None:
    with pytest.raises(InconsistentPixelData, match=message):
        codestream_dimensions(frame)


def test_rle_frames_are_bounded_by_rows_and_columns_and_not_parsed() -> None:
    ds = load("MR_small_RLE.dcm")
    with pytest.raises(AssertionError, match="reached the decoder"):
        decode_dicom(ds)
