"""Heatmaps, overlays and outlines at the original image resolution; RGB uint8 throughout.

OpenCV works in BGR; the conversion happens here and nowhere else (colour maps and PNG
encoding), so every array this module returns or accepts is RGB.
"""

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from models.errors import InvalidImageArray

RgbImage = npt.NDArray[np.uint8]
CamMap = npt.NDArray[np.float32]
CONTOUR_RGB = (0, 255, 0)
BOX_RGB = (255, 215, 0)  # amber: distinct from the green outline and from grey anatomy


@dataclass(frozen=True)
class BoundingBox:
    """Axis-aligned box in original-image pixels: top-left corner, width and height."""

    x: int
    y: int
    width: int
    height: int


def encode_png(img: npt.NDArray[np.uint8]) -> bytes:
    """PNG bytes of an HxW grey, HxWx3 RGB or HxWx4 RGBA uint8 image."""
    pixels = _check_pixels(img)
    if pixels.ndim == 3:
        bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR if pixels.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        ok, encoded = cv2.imencode(".png", bgr)
    else:
        ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise InvalidImageArray(f"PNG encoding failed for an image of shape {img.shape}")
    return bytes(encoded.tobytes())


def resize_map(cam: CamMap, size: tuple[int, int]) -> CamMap:
    """The one resize of a raw CAM: bilinear, straight from the CAM layer's grid to the
    original (height, width), negative interpolation overshoot clipped to 0."""
    if cam.ndim != 2 or cam.size == 0:
        raise InvalidImageArray(f"expected a 2-D CAM, got shape {cam.shape}")
    height, width = size
    resized = cv2.resize(np.ascontiguousarray(cam, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.maximum(resized, 0.0, out=resized)


def map_levels01(cam: CamMap) -> CamMap:
    """The raw map over its own maximum (0..1); all zeros when the map is flat at zero."""
    strength = float(cam.max())
    return cam / strength if strength > 0 else np.zeros_like(cam)


def heatmap_rgb(levels01: CamMap, colormap: int = cv2.COLORMAP_JET) -> RgbImage:
    """A 0..1 map (already at the image's size) coloured: JET, 0 = blue, 1 = red."""
    levels = np.round(np.clip(levels01, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.asarray(cv2.cvtColor(cv2.applyColorMap(levels, colormap), cv2.COLOR_BGR2RGB), dtype=np.uint8)


def overlay(image: npt.NDArray[np.uint8], levels01: CamMap, alpha: float = 0.4) -> RgbImage:
    """The heatmap blended over the original, both at the original resolution."""
    if not 0.0 <= alpha <= 1.0:
        raise InvalidImageArray(f"alpha must be within 0..1, got {alpha}")
    base = as_rgb(image)
    if levels01.shape != base.shape[:2]:
        raise InvalidImageArray(f"map {levels01.shape} and image {base.shape[:2]} differ in size")
    return np.asarray(cv2.addWeighted(heatmap_rgb(levels01), alpha, base, 1.0 - alpha, 0.0), dtype=np.uint8)


def outline(image: npt.NDArray[np.uint8], region: npt.NDArray[np.bool_] | None) -> tuple[RgbImage, BoundingBox | None]:
    """The image with the region's outline and bounding box drawn; unchanged (RGB) without a region."""
    base = as_rgb(image).copy()
    return base, _draw_region(base, region, BOX_RGB, CONTOUR_RGB)


def outline_layer(size: tuple[int, int], region: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.uint8]:
    """The same outline and box on a transparent HxWx4 RGBA layer, for a viewer to toggle."""
    layer = np.zeros((*size, 4), dtype=np.uint8)
    _draw_region(layer, region, (*BOX_RGB, 255), (*CONTOUR_RGB, 255))
    return layer


def map_levels(levels01: CamMap) -> npt.NDArray[np.uint8]:
    """A 0..1 map as 8-bit grey (0..255): what a viewer colours and makes transparent itself."""
    return np.round(np.clip(levels01, 0.0, 1.0) * 255.0).astype(np.uint8)


def _draw_region(
    canvas: npt.NDArray[np.uint8],
    region: npt.NDArray[np.bool_] | None,
    box_colour: tuple[int, ...],
    contour_colour: tuple[int, ...],
) -> BoundingBox | None:
    if region is None or not region.any():
        return None
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    largest = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    thickness = max(1, round(min(canvas.shape[:2]) / 200))
    x, y, width, height = cv2.boundingRect(largest)
    cv2.rectangle(canvas, (x, y), (x + width - 1, y + height - 1), box_colour, thickness)
    cv2.drawContours(canvas, [largest], -1, contour_colour, thickness)  # the outline stays on top of the box
    return BoundingBox(x=int(x), y=int(y), width=int(width), height=int(height))


def as_rgb(image: npt.NDArray[np.uint8]) -> RgbImage:
    """Grey HxW promoted to HxWx3; RGB passed through."""
    pixels = _check_pixels(image)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        raise InvalidImageArray("expected grey or RGB pixels, got RGBA")
    if pixels.ndim == 2:
        return np.asarray(cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    return pixels


def _check_pixels(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    if image.dtype != np.uint8:
        raise InvalidImageArray(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or 0 in image.shape:
        raise InvalidImageArray(f"expected HxW, HxWx3 or HxWx4 pixels, got shape {image.shape}")
    return np.ascontiguousarray(image)
