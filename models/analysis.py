"""One stored object, every frame: decode, make the model input, classify and explain.

Usable without the web or the database: the worker stores what this returns. Frames are
decoded one at a time (a 150-frame Enhanced MR object never holds 150 decoded frames);
only the display pixels of the current key frame are kept. The key frame is the one
with the highest calibrated tumour probability; its map is resized once, straight from
the CAM layer's grid to the original geometry, and a region is outlined on it only when
``models.regions`` finds a focal one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from models.decoded_image import DecodedImage, Window
from models.dicom_pixels import decode_dicom
from models.dicom_read import read_dicom
from models.inference import Classifier, Explanation
from models.raster import DEFAULT_MAX_DECODE_BYTES, decode_raster, sniff_kind
from models.regions import Region, find_region, head_mask
from models.render import resize_map
from models.slice_geometry import Spacing, frame_positions, pixel_spacing

CamMap = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FrameResult:
    index: int
    position: float | None
    explanation: Explanation
    display_window: Window | None
    input_window: Window | None


@dataclass(frozen=True)
class InstanceAnalysis:
    frames: list[FrameResult]
    key: FrameResult
    display: npt.NDArray[np.uint8]  # the key frame as a viewer shows it
    cam: CamMap  # the key frame's raw map at the original geometry
    region: Region
    spacing: Spacing | None


def analyse_object(
    data: bytes, classifier: Classifier, *, max_pixels: int, max_bytes: int = DEFAULT_MAX_DECODE_BYTES
) -> InstanceAnalysis:
    """Score every frame of a DICOM/PNG/JPEG object and explain its key frame (``max_bytes``: per frame)."""
    policy = classifier.manifest.input_policy
    if sniff_kind(data) in ("png", "jpeg"):
        image = decode_raster(data, max_pixels=max_pixels, max_bytes=max_bytes)
        only = _frame(classifier, image, None)
        return _finish(classifier, only, image, None, [only])
    ds = read_dicom(data)
    first = decode_dicom(ds, max_pixels=max_pixels, max_bytes=max_bytes, index=0, input_policy=policy)
    positions = frame_positions(ds, first.frame_count)
    key_image, key = first, _frame(classifier, first, positions[0])
    frames = [key]
    for index in range(1, first.frame_count):
        image = decode_dicom(ds, max_pixels=max_pixels, max_bytes=max_bytes, index=index, input_policy=policy)
        result = _frame(classifier, image, positions[index])
        frames.append(result)
        if result.explanation.tumour_score > key.explanation.tumour_score:
            key_image, key = image, result
    return _finish(classifier, key, key_image, ds, frames)


def _frame(classifier: Classifier, image: DecodedImage, position: float | None) -> FrameResult:
    explanation = classifier.explain(image.model_pixels)
    return FrameResult(image.frame_index, position, explanation, image.window, image.input_window)


def _finish(
    classifier: Classifier, key: FrameResult, image: DecodedImage, ds: Dataset | None, frames: list[FrameResult]
) -> InstanceAnalysis:
    spacing = pixel_spacing(ds, key.index) if ds is not None else None
    return frame_analysis(classifier, key, image, spacing, frames)


def frame_analysis(
    classifier: Classifier, key: FrameResult, image: DecodedImage, spacing: Spacing | None, frames: list[FrameResult]
) -> InstanceAnalysis:
    """The key frame's map at image size and its region: what every rendering of a map draws
    (the default analysis and an on-demand explanation alike)."""
    cam = cam_at_image(key.explanation.cam, image.pixels.shape[:2], classifier.manifest.center_crop)
    region = find_region(
        cam,
        head_mask(image.pixels),
        tumour_score=key.explanation.tumour_score,
        strength=key.explanation.strength,
        policy=classifier.manifest.region,
        spacing=spacing,
    )
    return InstanceAnalysis(frames, key, image.pixels, cam, region, spacing)


def cam_at_image(cam: CamMap, shape: tuple[int, ...], center_crop: float | None) -> CamMap:
    """The raw map in original-image pixels: one bilinear resize onto the part of the image
    the model saw (all of it, or the manifest's centre crop; zero outside)."""
    height, width = int(shape[0]), int(shape[1])
    if center_crop is None:
        return resize_map(cam, (height, width))
    crop_h, crop_w = max(1, round(height * center_crop)), max(1, round(width * center_crop))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    full = np.zeros((height, width), dtype=np.float32)
    full[top : top + crop_h, left : left + crop_w] = resize_map(cam, (crop_h, crop_w))
    return full
