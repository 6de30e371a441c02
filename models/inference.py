"""One classifier behind one ONNX Runtime session: probabilities and a CAM in a single call."""

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from models.cam import METHODS, normalise
from models.cam_ready import ACTIVATIONS, GRADIENTS, PROBABILITIES, TARGET_CLASS, cam_ready_path
from models.errors import ModelContractError, UnknownCamMethod
from models.manifest import ModelManifest, resolve_model_path
from models.preprocess import preprocess

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Explanation:
    """A prediction and its CAM; ``cam`` is float32 0..1 at the model input size (H x W)."""

    probabilities: dict[str, float]
    label: str
    tumour_score: float
    cam: FloatArray
    target_label: str
    timings_ms: dict[str, float]


class Classifier:
    """Loads the CAM-ready form of a manifest's model once and explains images with it."""

    def __init__(self, manifest: ModelManifest, *, cache_dir: Path, intra_op_threads: int | None = None):
        self.manifest = manifest
        self.model_path = resolve_model_path(manifest)
        self.model_sha256 = manifest.sha256  # cam_ready_path refuses a file with another hash
        cam_path = cam_ready_path(
            self.model_path,
            manifest.sha256,
            cache_dir,
            cam_layer=manifest.cam_layer,
            output_name=manifest.output_name,
            output_is_probability=manifest.output_is_probability,
        )
        self._options = ort.SessionOptions()
        if intra_op_threads is not None:
            self._options.intra_op_num_threads = intra_op_threads
        self._session = self._open(cam_path)
        self._plain_session: ort.InferenceSession | None = None

    def _open(self, path: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), sess_options=self._options, providers=["CPUExecutionProvider"])

    def explain(self, image: npt.NDArray[np.uint8], method: str = "gradcam", target: int | None = None) -> Explanation:
        """Classify ``image`` (uint8 HxW or HxWx3 RGB) and map the evidence for ``target``.

        ``target`` is a label index; ``None`` explains the predicted class.
        """
        cam_method = METHODS.get(method)
        if cam_method is None:
            raise UnknownCamMethod(f"unknown CAM method {method!r}; known: {sorted(METHODS)}")
        labels = self.manifest.labels
        if target is not None and not 0 <= target < len(labels):
            raise ModelContractError(f"target {target} is outside 0..{len(labels) - 1}")
        started = time.perf_counter()
        batch = preprocess(image, self.manifest)
        preprocessed = time.perf_counter()
        feeds = {self.manifest.input_name: batch, TARGET_CLASS: np.array([-1 if target is None else target])}
        probs, acts, grads = self._session.run([PROBABILITIES, ACTIVATIONS, GRADIENTS], feeds)
        inferred = time.perf_counter()
        cam = self._upsample(cam_method(acts[0], grads[0]))
        finished = time.perf_counter()
        probabilities = {label: float(p) for label, p in zip(labels, probs[0], strict=True)}
        predicted = labels[int(np.argmax(probs[0]))]
        return Explanation(
            probabilities=probabilities,
            label=predicted,
            tumour_score=self._tumour_score(probabilities),
            cam=cam,
            target_label=predicted if target is None else labels[target],
            timings_ms={
                "preprocess": (preprocessed - started) * 1000,
                "inference": (inferred - preprocessed) * 1000,
                "cam": (finished - inferred) * 1000,
            },
        )

    def _upsample(self, cam: FloatArray) -> FloatArray:
        """Bilinear resize of the raw map to the input size, then min-max to 0..1."""
        height, width = self.manifest.input_size
        resized = cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        return normalise(resized)

    def _tumour_score(self, probabilities: dict[str, float]) -> float:
        """1 - P(no tumour) when the model has a no-tumour class, else the summed tumour classes."""
        if self.manifest.no_tumour_label is not None:
            return 1.0 - probabilities[self.manifest.no_tumour_label]
        return sum(probabilities[label] for label in self.manifest.tumour_labels)

    def predict_plain(self, batch: FloatArray) -> FloatArray:
        """The original model's output for a preprocessed batch (benchmarks compare against it)."""
        if self._plain_session is None:
            self._plain_session = self._open(self.model_path)
        (output,) = self._plain_session.run([self.manifest.output_name], {self.manifest.input_name: batch})
        return np.asarray(output, dtype=np.float32)
