"""One classifier behind one ONNX Runtime session: probabilities and a CAM in a single call."""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from models.calibration import apply_temperature
from models.cam import METHODS
from models.cam_ready import ACTIVATIONS, GRADIENTS, PROBABILITIES, TARGET_CLASS, TUMOUR_TARGET, cam_ready_path
from models.errors import ModelContractError, UnknownCamMethod
from models.manifest import ModelManifest, file_sha256, resolve_model_path
from models.preprocess import preprocess

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Explanation:
    """A prediction and the map of the evidence for one tumour class.

    ``raw_probabilities`` are the model's own output; ``probabilities`` are temperature
    scaled by the manifest (the calibrated numbers every score is made from). ``cam`` is
    the method's raw map at the CAM layer's resolution (float32, >= 0, not normalised):
    it is resized once, straight to the original geometry, when it is drawn. ``strength``
    is its maximum, in the method's own units.
    """

    raw_probabilities: dict[str, float]
    probabilities: dict[str, float]
    label: str
    tumour_score: float
    target_label: str
    cam_method: str
    cam: FloatArray
    strength: float
    timings_ms: dict[str, float]


class Classifier:
    """Loads the CAM-ready form of a manifest's model once and explains images with it."""

    def __init__(self, manifest: ModelManifest, *, cache_dir: Path, intra_op_threads: int | None = None):
        self.manifest = manifest
        self.model_path = resolve_model_path(manifest)
        self.model_sha256 = manifest.sha256  # cam_ready_path refuses a file with another hash
        self._tumour_indices = [manifest.labels.index(label) for label in manifest.tumour_labels]
        self.cam_ready_path = cam_ready_path(
            self.model_path,
            manifest.sha256,
            cache_dir,
            cam_layer=manifest.cam_layer,
            output_name=manifest.output_name,
            output_is_probability=manifest.output_is_probability,
            tumour_classes=self._tumour_indices,
        )
        self.cam_ready_sha256 = file_sha256(self.cam_ready_path)
        self._options = ort.SessionOptions()
        if intra_op_threads is not None:
            self._options.intra_op_num_threads = intra_op_threads
        self._session = self._open(self.cam_ready_path)
        self._plain_session: ort.InferenceSession | None = None

    def _open(self, path: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), sess_options=self._options, providers=["CPUExecutionProvider"])

    def explain(
        self, image: npt.NDArray[np.uint8], method: str | None = None, target: int | None = None
    ) -> Explanation:
        """Classify ``image`` (uint8 HxW or HxWx3 RGB, the model input picture) and map the
        evidence for ``target`` (a label index); ``None`` explains the most likely tumour
        class, never "no tumour": the map answers "where would a tumour be?"."""
        method = method or self.manifest.cam_method
        cam_method = METHODS.get(method)
        if cam_method is None:
            raise UnknownCamMethod(f"unknown CAM method {method!r}; known: {sorted(METHODS)}")
        labels = self.manifest.labels
        if target is not None and not 0 <= target < len(labels):
            raise ModelContractError(f"target {target} is outside 0..{len(labels) - 1}")
        started = time.perf_counter()
        batch = preprocess(image, self.manifest)
        preprocessed = time.perf_counter()
        chosen = TUMOUR_TARGET if target is None else target
        feeds = {self.manifest.input_name: batch, TARGET_CLASS: np.array([chosen], dtype=np.int64)}
        probs, acts, grads = self._session.run([PROBABILITIES, ACTIVATIONS, GRADIENTS], feeds)
        raw = np.asarray(probs[0], dtype=np.float32)
        target = self._tumour_indices[int(np.argmax(raw[self._tumour_indices]))] if target is None else target
        inferred = time.perf_counter()
        cam = np.ascontiguousarray(cam_method(acts[0], grads[0]), dtype=np.float32)
        finished = time.perf_counter()
        calibrated = apply_temperature(raw, self.manifest.temperature)
        probabilities = {label: float(p) for label, p in zip(labels, calibrated, strict=True)}
        return Explanation(
            raw_probabilities={label: float(p) for label, p in zip(labels, raw, strict=True)},
            probabilities=probabilities,
            label=labels[int(np.argmax(calibrated))],
            tumour_score=self._tumour_score(probabilities),
            target_label=labels[target],
            cam_method=method,
            cam=cam,
            strength=float(cam.max()),
            timings_ms={
                "preprocess": (preprocessed - started) * 1000,
                "inference": (inferred - preprocessed) * 1000,
                "cam": (finished - inferred) * 1000,
            },
        )

    def raw_probabilities(self, image: npt.NDArray[np.uint8]) -> FloatArray:
        """The model's own (uncalibrated) probabilities for one model-input picture: what
        evaluation and calibration are fitted on."""
        return np.asarray(self.predict_plain(preprocess(image, self.manifest))[0], dtype=np.float32)

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
