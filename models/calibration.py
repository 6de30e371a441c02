"""Temperature scaling of a classifier's probabilities (Guo et al. 2017, "On Calibration of
Modern Neural Networks"): softmax(logits / T). A model that outputs probabilities has
logits log(p) up to a per-sample constant, which softmax ignores, so scaling needs no
change to the ONNX graph.
"""

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
_TINY = 1e-12


def apply_temperature(probabilities: npt.ArrayLike, temperature: float) -> FloatArray:
    """Calibrated probabilities, rows summing to 1; ``temperature`` 1 returns the input (renormalised)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _TINY, None)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return np.asarray(scaled / scaled.sum(axis=-1, keepdims=True), dtype=np.float64)
