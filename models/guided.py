"""Guided backpropagation and Guided Grad-CAM from input gradients computed in the graph.

The CAM-ready model built with ``input_gradients="guided"`` (``models.cam_ready``) also
outputs the gradient of the class score with respect to the model input, back-propagated
through every ReLU with Springenberg et al.'s (2015) guided rule (only positive gradients
through positive inputs), in the model input's layout. Guided Grad-CAM (Selvaraju et al.
2017, section 3.1) multiplies that pixel-level map by Grad-CAM upsampled to the input size.
"""

from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from models.cam import CamMap, normalise

FloatArray = npt.NDArray[np.float32]


def channels_last(input_gradients: FloatArray, layout: Literal["NHWC", "NCHW"]) -> FloatArray:
    """One sample's input gradients as H x W x C, the layout pytorch-grad-cam's
    ``GuidedBackpropReLUModel`` returns."""
    sample = input_gradients[0] if input_gradients.ndim == 4 else input_gradients
    return np.ascontiguousarray(sample.transpose(1, 2, 0) if layout == "NCHW" else sample, dtype=np.float32)


def upsample(cam: CamMap, size: tuple[int, int]) -> CamMap:
    """A CAM-layer map resized to (height, width) as pytorch-grad-cam's ``scale_cam_image`` does:
    min-max normalised, then OpenCV bilinear (half-pixel centres), then normalised again."""
    height, width = size
    resized = cv2.resize(normalise(cam), (width, height), interpolation=cv2.INTER_LINEAR)
    return normalise(resized)


def guided_grad_cam(guided_backprop: FloatArray, cam: CamMap) -> CamMap:
    """Selvaraju et al. 2017: guided backprop (H x W x C) times the upsampled Grad-CAM, reduced to
    one non-negative map by the largest absolute value over colour channels (Simonyan et al. 2014's
    saliency reduction), so the map stays 2-D and >= 0, at the model input's resolution.

    pytorch-grad-cam multiplies its normalised, resized Grad-CAM into the H x W x C gradients and
    leaves the channels signed; taking max |.| over channels of that product gives this map.
    """
    saliency = np.abs(guided_backprop).max(axis=-1)
    return np.asarray(saliency * upsample(cam, saliency.shape[:2]), dtype=np.float32)
