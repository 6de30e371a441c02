"""Peak memory of decoding one upload through ``models.pixels.decode_image``, per decoded megapixel.

``run(rounds)`` returns a ``dict[str, float]`` with one figure per input kind: the median over
``rounds`` fresh child processes of

    (peak RSS after decode_image) - (RSS just before it, the file bytes already read)
    ---------------------------------------------------------------------------------
                        decoded pixels / 1e6

in MB per megapixel, which is numerically bytes per decoded pixel (the uint8 result
included). Each child is a new ``python -c`` that first decodes a 64x64 file of the same
kind (so decoder plugins are imported before measuring), so RSS peaks of one kind never
mix with another's. Keys:

- ``dicom_native_16bit_4096_mb_per_mpx``: 4096x4096 MONOCHROME2, 12 of 16 bits, Explicit
  VR Little Endian, Rescale Slope/Intercept and a window;
- ``dicom_rle_16bit_2048_mb_per_mpx``: 2048x2048, the same attributes, RLE Lossless;
- ``dicom_jpegls_16bit_2048_mb_per_mpx``: the same, JPEG-LS Lossless;
- ``dicom_j2k_16bit_2048_mb_per_mpx``: the same, JPEG 2000 Lossless;
- ``png_grey_8bit_8000_mb_per_mpx``: 8000x8000 8-bit grey PNG;
- ``png_grey_16bit_4096_mb_per_mpx``: 4096x4096 16-bit grey PNG;
- ``png_rgba_16bit_4096_mb_per_mpx``: 4096x4096 16-bit RGBA PNG (alpha dropped on decode);
- ``jpeg_rgb_4096_mb_per_mpx``: 4096x4096 RGB JPEG (quality 90).

``python tests/bench/decode_memory.py`` prints them; each case also reports the decode
budget estimate (``models.raster.raster_decode_bytes`` / ``models.dicom_pixels.dicom_decode_bytes``)
per pixel next to the measurement, as ``<kind>_budget_b_per_px``.

The pictures are synthetic brain-like slices (``models.synthetic``) scaled up, so that the
compressed kinds compress as real images do. The peak is VmHWM from /proc/self/status, reset
just before decoding; where /proc is missing, ru_maxrss (since the child started).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from helpers import grey_mr_dataset
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from models.synthetic import Lesion, synthetic_slice

ROOT = Path(__file__).resolve().parents[2]
WARM_UP_SIDE = 64
CHILD_TIMEOUT_S = 300

# Runs in the child: argv[1] is the warm-up file, argv[2] the measured one; prints growth and pixels as JSON.
# The peak is Linux's VmHWM, reset just before decoding (clear_refs 5, Linux >= 4.0): ru_maxrss would not do,
# as Linux carries the parent's high-water mark over fork and exec into the child's ru_maxrss.
_CHILD = """
import json, resource, sys
from pathlib import Path
from models.pixels import decode_image

def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False

def rss_bytes(peak, procfs):
    if procfs:
        return status_kib("VmHWM" if peak else "VmRSS") * 1024
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib if sys.platform == "darwin" else kib * 1024

decode_image(Path(sys.argv[1]).read_bytes())
data = Path(sys.argv[2]).read_bytes()
procfs = reset_peak()
before = rss_bytes(False, procfs)
image = decode_image(data)
print(json.dumps({"growth": rss_bytes(True, procfs) - before, "pixels": image.pixels.shape[0] * image.pixels.shape[1]}))
"""


def run(rounds: int = 3) -> dict[str, float]:
    """Median MB of peak RSS growth per decoded megapixel for each input kind (see the module docstring)."""
    kinds: dict[str, tuple[Callable[[int], bytes], int]] = {
        "dicom_native_16bit_4096_mb_per_mpx": (_native_dicom, 4096),
        "dicom_rle_16bit_2048_mb_per_mpx": (_rle_dicom, 2048),
        "dicom_jpegls_16bit_2048_mb_per_mpx": (_jpegls_dicom, 2048),
        "dicom_j2k_16bit_2048_mb_per_mpx": (_j2k_dicom, 2048),
        "png_grey_8bit_8000_mb_per_mpx": (_grey_png, 8000),
        "png_grey_16bit_4096_mb_per_mpx": (_grey16_png, 4096),
        "png_rgba_16bit_4096_mb_per_mpx": (_rgba16_png, 4096),
        "jpeg_rgb_4096_mb_per_mpx": (_rgb_jpeg, 4096),
    }
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sightline-decode-memory-") as tmp:
        for name, (make, side) in kinds.items():
            warm_up, measured = Path(tmp) / f"{name}.small", Path(tmp) / f"{name}.full"
            warm_up.write_bytes(make(WARM_UP_SIDE))
            data = make(side)
            measured.write_bytes(data)
            figures[name] = round(statistics.median(_child_growth(warm_up, measured) for _ in range(rounds)), 2)
            figures[name.replace("_mb_per_mpx", "_budget_b_per_px")] = round(_budget(data) / side / side, 2)
            measured.unlink()
    return figures


def _budget(data: bytes) -> int:
    """The decode byte budget's estimate for ``data`` (what the API compares with SIGHTLINE_MAX_DECODE_BYTES)."""
    from models.dicom_pixels import dicom_decode_bytes
    from models.pixels import read_dicom
    from models.raster import jpeg_header, png_header, raster_decode_bytes, sniff_kind

    kind = sniff_kind(data)
    if kind == "png":
        return raster_decode_bytes(png_header(data))
    if kind == "jpeg":
        return raster_decode_bytes(jpeg_header(data))
    return dicom_decode_bytes(read_dicom(data))


def _child_growth(warm_up: Path, measured: Path) -> float:
    """Bytes of RSS growth per decoded pixel in one fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(warm_up), str(measured)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return float(result["growth"]) / float(result["pixels"])


def _picture(side: int, dtype: type[np.uint8] | type[np.uint16]) -> np.ndarray:
    """A 12-bit synthetic slice resized to ``side`` (uint16), or scaled to 8 bits (uint8)."""
    base = synthetic_slice(min(side, 1024), lesion=Lesion(0.35, 0.4, 0.08), seed=side)
    picture = cv2.resize(base, (side, side), interpolation=cv2.INTER_LINEAR)
    if dtype is np.uint8:
        return (picture // 16).astype(np.uint8)
    return picture


def _dicom_bytes(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _native_dicom(side: int) -> bytes:
    ds = grey_mr_dataset(side)
    ds.PixelData = _picture(side, np.uint16).astype("<u2").tobytes()
    return _dicom_bytes(ds)


def _rle_dicom(side: int) -> bytes:
    """PS3.5 Annex G; pydicom picks an installed RLE encoder (pylibjpeg-rle, else its own)."""
    ds = grey_mr_dataset(side)
    ds.compress(UID(RLELossless), _picture(side, np.uint16))
    return _dicom_bytes(ds)


def _jpegls_dicom(side: int) -> bytes:
    ds = grey_mr_dataset(side)
    ds.compress(UID(JPEGLSLossless), _picture(side, np.uint16))
    return _dicom_bytes(ds)


def _j2k_dicom(side: int) -> bytes:
    ds = grey_mr_dataset(side)
    ds.compress(UID(JPEG2000Lossless), _picture(side, np.uint16))
    return _dicom_bytes(ds)


def _grey_png(side: int) -> bytes:
    return _encoded(".png", _picture(side, np.uint8))


def _grey16_png(side: int) -> bytes:
    return _encoded(".png", _picture(side, np.uint16) * 16)


def _rgba16_png(side: int) -> bytes:
    grey = _picture(side, np.uint16) * 16
    alpha = np.full_like(grey, 65535)
    return _encoded(".png", np.stack([grey, grey // 2, grey // 3, alpha], axis=-1))


def _rgb_jpeg(side: int) -> bytes:
    grey = _picture(side, np.uint8)
    tinted = np.stack([grey, (grey * 0.8).astype(np.uint8), (grey * 0.6).astype(np.uint8)], axis=-1)
    return _encoded(".jpg", tinted, [cv2.IMWRITE_JPEG_QUALITY, 90])


def _encoded(extension: str, picture: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, encoded = cv2.imencode(extension, picture, params or [])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {extension} picture")
    return encoded.tobytes()


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
