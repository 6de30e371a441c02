"""The decode byte budget: refused from the headers before decoding, and what decoding really costs.

The estimate (``raster_decode_bytes``, ``dicom_decode_bytes``) is checked against the
bytes a header declares; a child process measures the peak RSS of a large-but-allowed
decode, so the bound holds for the real allocations, not just for the formula.
"""

import json
import os
import struct
import subprocess
import sys
import zlib
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import grey_mr_dataset
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import MRImageStorage, RLELossless, generate_uid

from models.dicom_pixels import dicom_decode_bytes
from models.errors import DecompressionBomb, ImageTooLarge
from models.pixels import DEFAULT_MAX_DECODE_BYTES, decode_image, read_dicom
from models.raster import RasterHeader, jpeg_header, png_header, raster_decode_bytes

ROOT = Path(__file__).resolve().parents[2]
BOMB_SIDE = 8000


def rgba16_png(side: int) -> bytes:
    """A ``side`` x ``side`` 16-bit RGBA PNG of one flat colour: about 500 KB at 8000 x 8000."""
    ok, encoded = cv2.imencode(".png", np.full((side, side, 4), 1000, dtype=np.uint16))
    assert ok
    return bytes(encoded.tobytes())


def rle_segment(rows: int, columns: int, value: int) -> bytes:
    """One PS3.5 G.3 RLE segment of a constant byte, runs of at most 128 within each row."""
    row = bytearray()
    left = columns
    while left:
        run = min(left, 128)
        row += bytes([257 - run, value])  # a replicate run: -(run - 1) as a signed byte, then the byte
        left -= run
    return bytes(row) * rows


def rle_dicom(side: int) -> bytes:
    """A real RLE Lossless 16-bit MR of ``side`` x ``side``: two segments (high, low byte), ~2 MB at 8000."""
    segments = [rle_segment(side, side, 0x01), rle_segment(side, side, 0x00)]
    header = struct.pack("<16I", 2, 64, 64 + len(segments[0]), *([0] * 13))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([header + b"".join(segments)])
    ds["PixelData"].VR = "OB"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def native_dicom(side: int) -> bytes:
    ds = grey_mr_dataset(side)
    ds.PixelData = np.random.default_rng(1).integers(0, 4096, (side, side), dtype=np.uint16).tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_the_16bit_rgba_png_bomb_is_refused_from_its_header() -> None:
    data = rgba16_png(BOMB_SIDE)
    assert len(data) < 2_000_000
    header = png_header(data)
    assert header == RasterHeader(BOMB_SIDE, BOMB_SIDE, 16, 4)
    assert raster_decode_bytes(header) == BOMB_SIDE * BOMB_SIDE * 2 * (4 * 2)
    with pytest.raises(ImageTooLarge, match="512 MiB decode budget") as refused:
        decode_image(data)
    assert refused.value.code == "image_too_large"
    assert isinstance(refused.value, DecompressionBomb)  # callers answer 413


def test_the_rle_bomb_is_refused_from_its_image_pixel_module() -> None:
    data = rle_dicom(BOMB_SIDE)
    assert len(data) < 3_000_000
    assert dicom_decode_bytes(read_dicom(data)) == BOMB_SIDE * BOMB_SIDE * (2 * 2 + 4 + 1 + 2)
    with pytest.raises(ImageTooLarge, match="MiB decode budget"):
        decode_image(data)


def test_a_real_rle_frame_within_the_budget_decodes() -> None:
    image = decode_image(rle_dicom(256))
    assert image.pixels.shape == (256, 256)


def test_the_budget_is_a_parameter() -> None:
    data = rgba16_png(64)
    assert decode_image(data, max_bytes=64 * 64 * 16).pixels.shape == (64, 64, 3)
    with pytest.raises(ImageTooLarge, match=f"{64 * 64 * 16 - 1} bytes"):
        decode_image(data, max_bytes=64 * 64 * 16 - 1)


def test_jpeg_header_names_precision_and_components() -> None:
    ok, encoded = cv2.imencode(".jpg", np.zeros((40, 30, 3), np.uint8))
    assert ok
    header = jpeg_header(encoded.tobytes())
    assert header == RasterHeader(30, 40, 8, 3)
    assert raster_decode_bytes(header) == 30 * 40 * 2 * 3


def test_a_grey_png_is_budgeted_at_its_bit_depth() -> None:
    ok, encoded = cv2.imencode(".png", np.zeros((10, 20), np.uint16))
    assert ok
    assert raster_decode_bytes(png_header(encoded.tobytes())) == 10 * 20 * 2 * 2


def test_a_bad_png_colour_type_is_unreadable() -> None:
    data = bytearray(rgba16_png(8))
    data[25] = 5  # no such colour type (ISO/IEC 15948 11.2.2)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with pytest.raises(Exception, match="colour type 5"):
        decode_image(bytes(data))


def test_the_default_budget_is_512_mib() -> None:
    assert DEFAULT_MAX_DECODE_BYTES == 512 * 1024 * 1024


# Runs in a fresh interpreter: peak RSS growth (VmHWM reset before decoding, else ru_maxrss) of one decode.
_CHILD = """
import json, resource, sys
from pathlib import Path
from models.pixels import decode_image

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

decode_image(Path(sys.argv[1]).read_bytes())  # warm-up: plugins imported, allocator primed
data = Path(sys.argv[2]).read_bytes()
try:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before, peak = kib("VmRSS"), lambda: kib("VmHWM")
except OSError:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = decode_image(data)
print(json.dumps({"growth": (peak() - before) * 1024, "shape": list(image.pixels.shape)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc")
@pytest.mark.parametrize(
    ("name", "make", "raw_bytes"),
    [
        ("native_dicom_2048", lambda: native_dicom(2048), 2048 * 2048 * 2),
        ("png_rgba16_2048", lambda: rgba16_png(2048), 2048 * 2048 * 4 * 2),
    ],
)
def test_a_large_allowed_decode_stays_within_three_times_its_raw_pixels(
    tmp_path: Path, name: str, make: object, raw_bytes: int
) -> None:
    """Peak RSS growth < 3 x the raw pixel bytes (the budget's working copies included); the
    smallest of three fresh children counts, so a noisy neighbour cannot fail it."""
    assert callable(make)
    small = {"native_dicom_2048": lambda: native_dicom(64), "png_rgba16_2048": lambda: rgba16_png(64)}[name]
    warm_up, measured = tmp_path / "small", tmp_path / "full"
    warm_up.write_bytes(small())
    measured.write_bytes(make())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    growths = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(warm_up), str(measured)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["shape"][:2] == [2048, 2048]
        growths.append(result["growth"])
        if min(growths) < 3 * raw_bytes:
            break
    assert min(growths) < 3 * raw_bytes, f"{name}: peak RSS grew {min(growths)} bytes for {raw_bytes} raw"
