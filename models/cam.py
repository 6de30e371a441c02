"""Class activation maps from activations and gradients, in plain NumPy.

Inputs are one sample's CAM-layer activations and the gradients of the target score with
respect to them, both C x H x W (a leading batch axis also works: reductions use the last
three axes). Each method is a few lines named for its paper; adding one is one function
and one ``METHODS`` line.
"""

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Activations = npt.NDArray[np.float32]
Gradients = npt.NDArray[np.float32]
CamMap = npt.NDArray[np.float32]
CamMethod = Callable[[Activations, Gradients], CamMap]


def grad_cam(acts: Activations, grads: Gradients) -> CamMap:
    """Selvaraju et al. 2017: channel weights = spatial mean of the gradients, ReLU of the sum."""
    weights = grads.mean(axis=(-2, -1), keepdims=True)
    return np.asarray(np.maximum((weights * acts).sum(axis=-3), 0.0), dtype=np.float32)


def hires_cam(acts: Activations, grads: Gradients) -> CamMap:
    """Draelos & Carin 2020 (HiResCAM): elementwise gradients x activations, summed over channels."""
    return np.asarray(np.maximum((grads * acts).sum(axis=-3), 0.0), dtype=np.float32)


def normalise(cam: npt.ArrayLike) -> CamMap:
    """Min-max scale to 0..1; a constant map (e.g. all zero) becomes all zero."""
    values = np.asarray(cam, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high - low <= np.finfo(np.float32).eps * max(abs(high), 1.0):
        return np.zeros_like(values)
    return np.asarray((values - low) / (high - low), dtype=np.float32)


METHODS: dict[str, CamMethod] = {"gradcam": grad_cam, "hirescam": hires_cam}
