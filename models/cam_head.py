"""The head of a classifier (CAM layer to class score) as its own model, to check gradients.

The CAM layer is internal, so the head is cut out of the graph with the CAM layer as an
input; then the score can be evaluated at A + h D. The gradient from the CAM-ready model
must match the central difference (f(A + h D) - f(A - h D)) / 2h along random directions
D = A * U, U ~ uniform(0, 1) elementwise: a relative step leaves zero activations at zero,
so ReLU zeros and max-pool windows of equal zeros never move, and the piecewise-linear
head is crossed at a kink only near a tie. The head runs in float64 when ONNX Runtime has
a float64 kernel for each of its ops (h = 1e-6, tolerance 1e-3; measured ~1e-7 on VGG16);
otherwise in float32 (h = 1e-3, tolerance 5e-2: one float32 evaluation is off by ~1e-6
of the score, and the larger step crosses more kinks; measured ~1e-4 on a global-pooling
head, ~2e-2 on VGG16 forced to float32), which still refuses a gradient off by a factor
of 2 (error 0.5). The score is the one ``models.cam_ready`` differentiates: the input of
a final Softmax, else the output itself.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from models.backward_context import attr
from models.cam_layout import Permutation
from models.cam_ready import GRADIENTS
from models.cam_targets import head_closure
from models.errors import ModelContractError

DIRECTIONS = 3
_FLOAT64_OPS = frozenset(
    {
        *("Relu", "Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "MaxPool", "Transpose", "Reshape", "Flatten"),
        *("Squeeze", "Unsqueeze", "Identity", "Dropout", "Shape", "Size", "Gather", "Slice", "Concat"),
        *("BatchNormalization", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Softmax", "Split", "Pad", "Expand"),
        *("ReduceMean", "ReduceMax", "ReduceSum"),
    }
)  # ONNX Runtime 1.2x CPU kernels, each checked by building a float64 session (tests/models/test_cam_contract.py);
# Conv, ConvTranspose, AveragePool, GlobalAveragePool, GlobalMaxPool, HardSigmoid, HardSwish, LSTM, GRU have none

FloatArray = npt.NDArray[np.floating]


@dataclass(frozen=True)
class Precision:
    """Step h (relative to each activation), tolerance on the relative error, rounding of one evaluation."""

    name: str
    dtype: type[np.floating]
    step: float
    tolerance: float
    rounding: float


FLOAT64 = Precision("float64", np.float64, step=1e-6, tolerance=1e-3, rounding=1e-12)
FLOAT32 = Precision("float32", np.float32, step=1e-3, tolerance=5e-2, rounding=1e-5)


def class_score(graph: onnx.GraphProto, output_name: str) -> str:
    """The tensor the CAM-ready gradients differentiate: the input of a final Softmax, else the output."""
    producer = next((node for node in graph.node if output_name in node.output), None)
    return producer.input[0] if producer is not None and producer.op_type == "Softmax" else output_name


@dataclass(frozen=True)
class CamHead:
    """The score as a function of the CAM layer, run by ONNX Runtime; activations are NCHW."""

    session: ort.InferenceSession
    cam_layer: str
    score: str
    permutation: Permutation  # the CAM layer's own layout: nchw.transpose(permutation)
    other_feeds: dict[str, npt.NDArray[np.generic]]
    precision: Precision

    @classmethod
    def cut(
        cls,
        model: onnx.ModelProto,
        cam_layer: str,
        score: str,
        permutation: Permutation,
        feeds: Mapping[str, npt.NDArray[np.generic]],
    ) -> "CamHead":
        """Cut the head out of ``model``; ``feeds`` serve model inputs the head reads besides the CAM layer."""
        head = head_model(model, cam_layer, score)
        precision = FLOAT64 if _to_float64(head) else FLOAT32
        session = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
        other_feeds = {info.name: feeds[info.name] for info in head.graph.input if info.name != cam_layer}
        return cls(session, cam_layer, score, permutation, other_feeds, precision)

    def scores(self, activations: FloatArray) -> FloatArray:
        """Class scores [N, K] (float64) at NCHW ``activations``."""
        layer = np.ascontiguousarray(activations.transpose(self.permutation), dtype=self.precision.dtype)
        (scores,) = self.session.run([self.score], {self.cam_layer: layer, **self.other_feeds})
        return np.asarray(scores, dtype=np.float64)

    def check_gradients(
        self, activations: FloatArray, gradients: FloatArray, target: int, rng: np.random.Generator
    ) -> float:
        """Largest relative error of sum(gradients * D) against the central difference; refuse past tolerance."""
        base = activations.astype(np.float64)
        step, errors = self.precision.step, []
        for _ in range(DIRECTIONS):
            direction = base * rng.uniform(0.0, 1.0, base.shape)
            up, down = (float(self.scores(base + sign * step * direction)[0, target]) for sign in (1.0, -1.0))
            numeric = (up - down) / (2.0 * step)
            analytic = float(np.sum(gradients.astype(np.float64) * direction))
            noise = self.precision.rounding * max(abs(up), abs(down), 1.0) / step
            scale = max(abs(numeric), abs(analytic), noise / self.precision.tolerance)
            errors.append(abs(numeric - analytic) / scale)
        worst = float(np.max(errors))  # NaN propagates and fails below
        if not worst <= self.precision.tolerance:
            raise ModelContractError(
                f"the CAM-ready {GRADIENTS!r} of class {target} disagree with finite differences of "
                f"{self.score!r} over cam_layer {self.cam_layer!r}: relative error {worst:.3g} "
                f"(tolerance {self.precision.tolerance}, {self.precision.name})"
            )
        return worst


def head_model(model: onnx.ModelProto, cam_layer: str, score: str) -> onnx.ModelProto:
    """The nodes ``score`` needs, walking back until the CAM layer, which becomes an input."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes = head_closure(graph.node, cam_layer, score)
    used = {name for node in nodes for name in node.input}
    inputs = [info for info in graph.input if info.name in used and info.name not in initializers]
    head = helper.make_graph(
        nodes,
        "cam_head",
        [helper.make_tensor_value_info(cam_layer, TensorProto.FLOAT, None), *inputs],
        [helper.make_tensor_value_info(score, TensorProto.FLOAT, None)],
        [initializers[name] for name in sorted(used & initializers.keys())],
    )
    return helper.make_model(head, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _to_float64(head: onnx.ModelProto) -> bool:
    """Turn the head's float32 tensors into float64 in place, when every op has a float64 CPU kernel."""
    graph = head.graph
    if len(graph.input) != 1 or not all(_has_float64_kernel(node) for node in graph.node):
        return False
    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[index].CopyFrom(_float64_tensor(init))
    for info in (*graph.input, *graph.output):
        info.type.tensor_type.elem_type = TensorProto.DOUBLE
    return True


def _float64_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _has_float64_kernel(node: onnx.NodeProto) -> bool:
    """Float constants and casts to float32 would pin float32 in the middle of a float64 head."""
    if node.op_type == "Cast":
        return attr(node, "to", TensorProto.FLOAT) != TensorProto.FLOAT
    if node.op_type == "Constant":
        value = attr(node, "value", None)
        return isinstance(value, onnx.TensorProto) and value.data_type != TensorProto.FLOAT
    return node.op_type in _FLOAT64_OPS
