"""Class activation maps from activations and gradients, in plain NumPy, and the method catalogue.

Inputs are one sample's CAM-layer activations and the gradients of the target score with
respect to them, both C x H x W (a leading batch axis also works: reductions use the last
three axes). Each method is a few lines named for its paper; adding one is one function
and one ``METHODS`` line. The formulas follow pytorch-grad-cam 1.5 (Gildenblat et al.),
which the reference tests compare against; where Sightline differs, the docstring says so.
Forward-only methods live in ``models.cam_forward``, the guided ones in ``models.guided``.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Activations = npt.NDArray[np.float32]
Gradients = npt.NDArray[np.float32]
CamMap = npt.NDArray[np.float32]
CamMethod = Callable[[Activations, Gradients], CamMap]
MethodKind = Literal["gradient", "activation", "forward", "guided"]
_SPATIAL = (-2, -1)


def _weighted_sum(weights: npt.NDArray[np.floating], acts: Activations) -> CamMap:
    """ReLU of sum_c w_c A_c: every channel-weight method ends here."""
    cam = (weights[..., np.newaxis, np.newaxis] * acts).sum(axis=-3)
    return np.asarray(np.maximum(cam, 0.0), dtype=np.float32)


def grad_cam(acts: Activations, grads: Gradients) -> CamMap:
    """Selvaraju et al. 2017: channel weights = spatial mean of the gradients, ReLU of the sum."""
    return _weighted_sum(grads.mean(axis=_SPATIAL), acts)


def hires_cam(acts: Activations, grads: Gradients) -> CamMap:
    """Draelos & Carin 2020 (HiResCAM): elementwise gradients x activations, summed over channels."""
    return np.asarray(np.maximum((grads * acts).sum(axis=-3), 0.0), dtype=np.float32)


def grad_cam_plus_plus(acts: Activations, grads: Gradients) -> CamMap:
    """Chattopadhyay et al. 2018 (Grad-CAM++), eq. 19 in its closed form for an exponential score:
    alpha = g^2 / (2 g^2 + sum(A) g^3), zero where g = 0; weights = sum(alpha * ReLU(g))."""
    squared = grads**2
    sum_acts = acts.sum(axis=_SPATIAL, keepdims=True)
    alpha = squared / (2.0 * squared + sum_acts * squared * grads + 1e-6)
    alpha = np.where(grads != 0.0, alpha, 0.0)
    return _weighted_sum((np.maximum(grads, 0.0) * alpha).sum(axis=_SPATIAL), acts)


def xgrad_cam(acts: Activations, grads: Gradients) -> CamMap:
    """Fu et al. 2020 (XGrad-CAM): weights = sum(g * A) / sum(A) per channel, from its axioms."""
    sum_acts = acts.sum(axis=_SPATIAL, keepdims=True)
    return _weighted_sum((grads * acts / (sum_acts + 1e-7)).sum(axis=_SPATIAL), acts)


def layer_cam(acts: Activations, grads: Gradients) -> CamMap:
    """Jiang et al. 2021 (LayerCAM): each position weighted by its own positive gradient."""
    return np.asarray(np.maximum((np.maximum(grads, 0.0) * acts).sum(axis=-3), 0.0), dtype=np.float32)


def eigen_cam(acts: Activations, grads: Gradients | None = None) -> CamMap:
    """Muhammad & Yeasin 2020 (Eigen-CAM): the activations projected on their first principal
    component (positions as samples, channels centred), ReLU; no gradients, so one map for all classes.

    A singular vector's sign is arbitrary: pytorch-grad-cam keeps whatever LAPACK returns,
    Sightline orients the component so that the projection correlates positively with the
    centred channel sum (equivalently, the singular vector's entries sum to >= 0); the map
    equals pytorch-grad-cam's whenever LAPACK's sign already satisfies that, else it is the
    ReLU of the negated projection.
    """
    if acts.ndim == 4:
        return np.stack([eigen_cam(sample) for sample in acts])
    channels = acts.shape[0]
    positions = np.nan_to_num(acts.reshape(channels, -1).T.astype(np.float32))
    centred = positions - positions.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    component = vt[0] if vt[0].sum() >= 0.0 else -vt[0]
    projection = (centred @ component).reshape(acts.shape[1:])
    return np.asarray(np.maximum(projection, 0.0), dtype=np.float32)


def normalise(cam: npt.ArrayLike) -> CamMap:
    """Min-max scale to 0..1; a constant map (e.g. all zero) becomes all zero."""
    values = np.asarray(cam, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high - low <= np.finfo(np.float32).eps * max(abs(high), 1.0):
        return np.zeros_like(values)
    return np.asarray((values - low) / (high - low), dtype=np.float32)


METHODS: dict[str, CamMethod] = {
    "gradcam": grad_cam,
    "hirescam": hires_cam,
    "gradcampp": grad_cam_plus_plus,
    "xgradcam": xgrad_cam,
    "layercam": layer_cam,
    "eigencam": eigen_cam,
}


@dataclass(frozen=True)
class CamMethodInfo:
    """What the API tells a reader about a method: its paper and what its map means."""

    id: str
    title: str
    paper: str
    kind: MethodKind
    description: str


CAM_METHODS: dict[str, CamMethodInfo] = {
    info.id: info
    for info in (
        CamMethodInfo(
            "gradcam",
            "Grad-CAM",
            "Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization, "
            "ICCV 2017",
            "gradient",
            "Channels weighted by their mean gradient; coarse, class-discriminative.",
        ),
        CamMethodInfo(
            "hirescam",
            "HiResCAM",
            "Draelos & Carin, Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional "
            "neural networks, arXiv:2011.08891, 2020",
            "gradient",
            "Gradients times activations at every position; faithful to the score for a linear head.",
        ),
        CamMethodInfo(
            "gradcampp",
            "Grad-CAM++",
            "Chattopadhyay et al., Grad-CAM++: Improved Visual Explanations for Deep Convolutional Networks, WACV 2018",
            "gradient",
            "Positive gradients weighted per position; better at several instances of a class.",
        ),
        CamMethodInfo(
            "xgradcam",
            "XGrad-CAM",
            "Fu et al., Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs, BMVC 2020",
            "gradient",
            "Channels weighted by activation-normalised gradients, from sensitivity and conservation axioms.",
        ),
        CamMethodInfo(
            "layercam",
            "LayerCAM",
            "Jiang et al., LayerCAM: Exploring Hierarchical Class Activation Maps for Localization, IEEE TIP 30, 2021",
            "gradient",
            "Each activation weighted by its own positive gradient; finer detail than Grad-CAM.",
        ),
        CamMethodInfo(
            "eigencam",
            "Eigen-CAM",
            "Muhammad & Yeasin, Eigen-CAM: Class Activation Map using Principal Components, IJCNN 2020",
            "activation",
            "First principal component of the activations; no gradients, the same map for every class.",
        ),
        CamMethodInfo(
            "scorecam",
            "Score-CAM",
            "Wang et al., Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks, "
            "CVPR Workshops 2020",
            "forward",
            "Channels weighted by the class score of the input masked by each channel; one pass per channel.",
        ),
        CamMethodInfo(
            "ablationcam",
            "Ablation-CAM",
            "Desai & Ramaswamy, Ablation-CAM: Visual Explanations for Deep Convolutional Network via "
            "Gradient-free Localization, WACV 2020",
            "forward",
            "Channels weighted by the drop of the class score when each one is zeroed; head passes only.",
        ),
        CamMethodInfo(
            "guidedgradcam",
            "Guided Grad-CAM",
            "Selvaraju et al., ICCV 2017, with guided backpropagation of Springenberg et al., Striving for "
            "Simplicity: The All Convolutional Net, ICLR Workshops 2015",
            "guided",
            "Guided-backpropagation input gradients times the upsampled Grad-CAM; pixel-level, at input size.",
        ),
    )
}


def method_catalogue() -> list[dict[str, str]]:
    """Every method the engine offers, as plain dicts for the API (in ``CamMethodName`` order)."""
    return [asdict(info) for info in CAM_METHODS.values()]
