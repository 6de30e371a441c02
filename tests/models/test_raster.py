"""PNG/JPEG decoding: values, colour order, bit depth, and header checks before decoding."""

import struct
import zlib

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from models.errors import DecompressionBomb, UnreadableDicom, UnreadableRaster
from models.pixels import decode_image, decode_raster, sniff_kind
from models.raster import jpeg_dimensions, png_dimensions


def encode(pixels: npt.NDArray[np.integer], ext: str, params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(ext, pixels, params or [])
    assert ok
    return bytes(buffer.tobytes())


def gradient(height: int = 21, width: int = 37) -> npt.NDArray[np.uint8]:
    rows, cols = np.mgrid[0:height, 0:width]
    values: npt.NDArray[np.uint8] = ((rows * 7 + cols * 3) % 256).astype(np.uint8)
    return values


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite IHDR width/height and its CRC, so only our header check can object."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def test_sniff_kind() -> None:
    png = encode(gradient(), ".png")
    assert sniff_kind(png) == "png"
    assert sniff_kind(encode(gradient(), ".jpg")) == "jpeg"
    assert sniff_kind(b"\0" * 128 + b"DICM" + b"\0" * 8) == "dicom"
    assert sniff_kind(b"") is None and sniff_kind(b"GIF89a") is None and sniff_kind(png[:7]) is None


def test_grayscale_png_round_trips_exactly() -> None:
    image = decode_raster(encode(gradient(), ".png"))
    assert (image.source, image.frame_count, image.frame_index, image.window) == ("png", 1, 0, None)
    assert not image.is_color and image.pixels.flags.c_contiguous
    assert np.array_equal(image.pixels, gradient())


def test_colour_png_comes_back_in_rgb_order() -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10
    image = decode_raster(encode(rgb[..., ::-1], ".png"))  # OpenCV writes BGR
    assert image.is_color and tuple(image.pixels[0, 0]) == (200, 100, 10)


def test_alpha_is_dropped() -> None:
    bgra = np.zeros((4, 6, 4), np.uint8)
    bgra[...] = (10, 20, 30, 77)
    image = decode_raster(encode(bgra, ".png"))
    assert image.pixels.shape == (4, 6, 3) and tuple(image.pixels[1, 1]) == (30, 20, 10)


def test_16_bit_png_is_scaled_to_8_bit() -> None:
    deep = (np.arange(60, dtype=np.uint16).reshape(6, 10) * 1111).astype(np.uint16)
    image = decode_raster(encode(deep, ".png"))
    expected = np.rint(deep.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert image.pixels.dtype == np.uint8 and np.array_equal(image.pixels, expected)


def test_jpeg_is_close_to_its_source() -> None:
    image = decode_raster(encode(gradient(), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 100]))
    assert image.source == "jpeg" and not image.is_color
    assert np.abs(image.pixels.astype(int) - gradient().astype(int)).mean() < 2.0


@pytest.mark.parametrize("progressive", [0, 1])
def test_jpeg_header_dimensions(progressive: int) -> None:
    data = encode(np.dstack([gradient()] * 3), ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
    assert jpeg_dimensions(data) == (37, 21)


def test_png_header_dimensions() -> None:
    assert png_dimensions(encode(gradient(), ".png")) == (37, 21)


def test_png_bomb_is_refused_before_decoding() -> None:
    bomb = with_png_size(encode(gradient(), ".png"), 100_000, 100_000)
    with pytest.raises(DecompressionBomb, match="png declares 100000x100000 pixels"):
        decode_raster(bomb)


def test_jpeg_bomb_is_refused_before_decoding() -> None:
    data = bytearray(encode(gradient(), ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65535, 65535)
    with pytest.raises(DecompressionBomb, match="jpeg declares 65535x65535 pixels"):
        decode_raster(bytes(data))


def test_pixel_budget_boundary() -> None:
    png = encode(gradient(), ".png")
    assert decode_raster(png, max_pixels=37 * 21).pixels.shape == (21, 37)
    with pytest.raises(DecompressionBomb, match="37x21 pixels, over the 776-pixel limit"):
        decode_raster(png, max_pixels=37 * 21 - 1)


def test_truncated_png() -> None:
    png = encode(np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8), ".png")
    with pytest.raises(UnreadableRaster, match="png data could not be decoded"):
        decode_raster(png[: len(png) // 2])


def test_png_without_ihdr() -> None:
    with pytest.raises(UnreadableRaster, match="no IHDR"):
        decode_raster(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)


def test_truncated_jpeg() -> None:
    jpeg = encode(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8), ".jpg")
    with pytest.raises(UnreadableRaster, match="jpeg data could not be decoded"):
        decode_raster(jpeg[: len(jpeg) // 2])


def test_jpeg_with_garbage_after_soi() -> None:
    with pytest.raises(UnreadableRaster, match="JPEG marker expected at byte 6"):
        decode_raster(b"\xff\xd8\xff\xe0\x00\x02garbage")


def test_jpeg_without_frame_header() -> None:
    with pytest.raises(UnreadableRaster, match="no frame header"):
        decode_raster(b"\xff\xd8\xff\xda\x00\x02")


def test_unknown_bytes() -> None:
    with pytest.raises(UnreadableRaster, match="not a PNG or JPEG"):
        decode_raster(b"GIF89a" + b"\0" * 64)


def test_decode_image_routes_by_magic_bytes() -> None:
    assert decode_image(encode(gradient(), ".png")).source == "png"
    assert decode_image(encode(gradient(), ".jpg")).source == "jpeg"
    with pytest.raises(UnreadableDicom, match="not DICOM, PNG or JPEG"):
        decode_image(b"GIF89a" + b"\0" * 64)
