"""One classifier behind ONNX Runtime: probabilities and a CAM, in a single call for the gradient methods.

The gradient and activation methods (``models.cam.METHODS``) read one run of the CAM-ready
model; the forward-only ones (``models.cam_forward``) add batched runs of the whole model
or its head; Guided Grad-CAM (``models.guided``) reads a second CAM-ready form that also
returns input gradients. Extra sessions are built on first use and kept.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from models.calibration import apply_temperature
from models.cam import CAM_METHODS, METHODS, CamMap, grad_cam
from models.cam_forward import (
    DEFAULT_BATCH_SIZE,
    ForwardModels,
    ablated_batches,
    ablation_cam,
    masked_inputs,
    score_cam,
)
from models.cam_ready import (
    ACTIVATIONS,
    GRADIENTS,
    INPUT_GRADIENTS,
    PROBABILITIES,
    TARGET_CLASS,
    TUMOUR_TARGET,
    InputGradients,
    cam_ready_path,
)
from models.errors import ModelContractError, UnknownCamMethod
from models.guided import channels_last, guided_grad_cam
from models.manifest import ModelManifest, file_sha256, resolve_model_path
from models.preprocess import preprocess

FloatArray = npt.NDArray[np.float32]
ONE_ROW_KINDS = ("activation", "forward")  # their maps need the activations only once for all targets


@dataclass(frozen=True)
class Explanation:
    """A prediction and the map of the evidence for one class.

    ``raw_probabilities`` are the model's own output; ``probabilities`` are temperature
    scaled by the manifest (the calibrated numbers every score is made from). ``cam`` is
    the method's raw map (2-D float32, >= 0, not normalised): at the CAM layer's resolution
    for every method except Guided Grad-CAM, which is at the model input's resolution
    (pixel-level); either is resized once, straight to the original geometry, when it is
    drawn. ``strength`` is its maximum, in the method's own units.
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


@dataclass(frozen=True)
class _Run:
    """One CAM-ready run: row i answers target i (or all targets, for the one-row kinds)."""

    raw: FloatArray
    activations: FloatArray
    gradients: FloatArray
    input_gradients: FloatArray | None


class Classifier:
    """Loads the CAM-ready form of a manifest's model once and explains images with it."""

    def __init__(
        self,
        manifest: ModelManifest,
        *,
        cache_dir: Path,
        intra_op_threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        if batch_size < 1:
            raise ModelContractError(f"batch_size must be at least 1, got {batch_size}")
        self.manifest = manifest
        self.model_path = resolve_model_path(manifest)
        self.model_sha256 = manifest.sha256  # cam_ready_path refuses a file with another hash
        self.batch_size = batch_size  # masked inputs (Score-CAM) or ablated activations per forward run
        self._cache_dir = cache_dir
        self._tumour_indices = [manifest.labels.index(label) for label in manifest.tumour_labels]
        self.cam_ready_path = self._cam_ready()
        self.cam_ready_sha256 = file_sha256(self.cam_ready_path)
        self._options = ort.SessionOptions()
        if intra_op_threads is not None:
            self._options.intra_op_num_threads = intra_op_threads
        self._session = self._open(self.cam_ready_path)
        self._plain_session: ort.InferenceSession | None = None
        self._guided_session: ort.InferenceSession | None = None
        self._multi_session: ort.InferenceSession | None = None
        self._forward = ForwardModels(
            self.model_path, cam_layer=manifest.cam_layer, output_name=manifest.output_name, options=self._options
        )

    def _cam_ready(self, *, input_gradients: InputGradients = "none", multi_target: bool = False) -> Path:
        return cam_ready_path(
            self.model_path,
            self.manifest.sha256,
            self._cache_dir,
            cam_layer=self.manifest.cam_layer,
            output_name=self.manifest.output_name,
            output_is_probability=self.manifest.output_is_probability,
            tumour_classes=self._tumour_indices,
            input_gradients=input_gradients,
            multi_target=multi_target,
        )

    def _open(self, path: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), sess_options=self._options, providers=["CPUExecutionProvider"])

    def explain(
        self, image: npt.NDArray[np.uint8], method: str | None = None, target: int | None = None
    ) -> Explanation:
        """Classify ``image`` (uint8 HxW or HxWx3 RGB, the model input picture) and map the
        evidence for ``target`` (a label index); ``None`` explains the most likely tumour
        class, never "no tumour": the map answers "where would a tumour be?"."""
        return self.explain_classes(image, method, [target])[0]

    def explain_classes(
        self, image: npt.NDArray[np.uint8], method: str | None = None, targets: Sequence[int | None] = (None,)
    ) -> list[Explanation]:
        """One explanation per target (label index, or ``None`` as in ``explain``), from one
        preprocessing and one CAM-ready run: the multi-target form for the gradient methods,
        the image repeated once per target for Guided Grad-CAM, and one row for all targets
        for Eigen-CAM, Score-CAM and Ablation-CAM (their forward runs give every class's
        score at once)."""
        method = self._checked(method or self.manifest.cam_method, targets)
        started = time.perf_counter()
        batch = preprocess(image, self.manifest)
        preprocessed = time.perf_counter()
        one_row = CAM_METHODS[method].kind in ONE_ROW_KINDS
        run = self._run(batch, targets[:1] if one_row else targets, guided=method == "guidedgradcam")
        resolved = [self._resolve(target, run.raw) for target in targets]
        inferred = time.perf_counter()
        cams = self._maps(method, batch, run, resolved)
        finished = time.perf_counter()
        timings = {
            "preprocess": (preprocessed - started) * 1000,
            "inference": (inferred - preprocessed) * 1000,
            "cam": (finished - inferred) * 1000,
        }
        return [
            self._explanation(run.raw, method, target, cam, timings) for target, cam in zip(resolved, cams, strict=True)
        ]

    def guided_backprop(self, image: npt.NDArray[np.uint8], target: int | None = None) -> FloatArray:
        """Springenberg et al. 2015: the guided input gradients of ``target``'s score (``None``: the
        most likely tumour class), H x W x C at the model input's resolution, signed."""
        self._checked("guidedgradcam", [target])
        run = self._run(preprocess(image, self.manifest), [target], guided=True)
        if run.input_gradients is None:
            raise ModelContractError("the guided CAM-ready model returned no input_gradients")
        return channels_last(run.input_gradients, self.manifest.input_layout)

    def _checked(self, method: str, targets: Sequence[int | None]) -> str:
        if method not in CAM_METHODS:
            raise UnknownCamMethod(f"unknown CAM method {method!r}; known: {sorted(CAM_METHODS)}")
        if not targets:
            raise ModelContractError("targets is empty; give at least one label index or None")
        labels = self.manifest.labels
        for target in targets:
            if target is not None and not 0 <= target < len(labels):
                raise ModelContractError(f"target {target} is outside 0..{len(labels) - 1}")
        return method

    def _run(self, batch: FloatArray, targets: Sequence[int | None], *, guided: bool) -> _Run:
        """One target: the CAM-ready run of ``explain`` as ever. Several: the multi-target form
        (target_class [1, T], gradients [1, T, C, H, W]), or for the guided form, which has no
        multi-target variant, the image repeated once per target."""
        chosen = np.array([TUMOUR_TARGET if target is None else target for target in targets], dtype=np.int64)
        names = [PROBABILITIES, ACTIVATIONS, GRADIENTS]
        if guided:
            inputs = batch if len(chosen) == 1 else np.repeat(batch, len(chosen), axis=0)
            feeds = {self.manifest.input_name: inputs, TARGET_CLASS: chosen}
            probs, acts, grads, input_grads = self._guided().run([*names, INPUT_GRADIENTS], feeds)
            return _Run(np.asarray(probs[0], dtype=np.float32), acts, grads, input_grads)
        if len(chosen) == 1:
            probs, acts, grads = self._session.run(names, {self.manifest.input_name: batch, TARGET_CLASS: chosen})
            return _Run(np.asarray(probs[0], dtype=np.float32), acts, grads, None)
        feeds = {self.manifest.input_name: batch, TARGET_CLASS: chosen[np.newaxis]}
        probs, acts, grads = self._multi().run(names, feeds)
        rows = np.broadcast_to(acts[0], (len(chosen), *acts.shape[1:]))
        return _Run(np.asarray(probs[0], dtype=np.float32), rows, grads[0], None)

    def _resolve(self, target: int | None, raw: FloatArray) -> int:
        """The label index a ``None`` target stands for: the most likely tumour class (as the graph's -2)."""
        return self._tumour_indices[int(np.argmax(raw[self._tumour_indices]))] if target is None else target

    def _maps(self, method: str, batch: FloatArray, run: _Run, targets: list[int]) -> list[CamMap]:
        acts, grads = run.activations, run.gradients
        if method == "scorecam":
            return self._score_cams(batch, acts[0], targets)
        if method == "ablationcam":
            return self._ablation_cams(acts[0], targets)
        if method == "guidedgradcam":
            return self._guided_cams(run, len(targets))
        rows = [0] * len(targets) if CAM_METHODS[method].kind in ONE_ROW_KINDS else range(len(targets))
        return [np.ascontiguousarray(METHODS[method](acts[row], grads[row]), dtype=np.float32) for row in rows]

    def _guided_cams(self, run: _Run, count: int) -> list[CamMap]:
        """Guided Grad-CAM per row: the guided input gradients times that row's upsampled Grad-CAM."""
        if run.input_gradients is None:
            raise ModelContractError("the guided CAM-ready model returned no input_gradients")
        layout, acts, grads = self.manifest.input_layout, run.activations, run.gradients
        return [
            guided_grad_cam(channels_last(run.input_gradients[row], layout), grad_cam(acts[row], grads[row]))
            for row in range(count)
        ]

    def _score_cams(self, batch: FloatArray, acts: FloatArray, targets: list[int]) -> list[CamMap]:
        """Score-CAM: one batched pass over the masked inputs gives every class's scores."""
        channel_axis = 3 if self.manifest.input_layout == "NHWC" else 1
        chunks = masked_inputs(batch, acts, channel_axis=channel_axis, batch_size=self.batch_size)
        scores = self._forward.masked_scores((self.manifest.input_name, chunk) for chunk in chunks)
        return [score_cam(acts, scores[:, target]) for target in targets]

    def _ablation_cams(self, acts: FloatArray, targets: list[int]) -> list[CamMap]:
        """Ablation-CAM: the head alone, on the activations and on each channel-ablated copy."""
        original = self._forward.head_scores(iter([acts[np.newaxis]]))[0]
        ablated = self._forward.head_scores(ablated_batches(acts, self.batch_size))
        return [ablation_cam(acts, float(original[target]), ablated[:, target]) for target in targets]

    def _guided(self) -> ort.InferenceSession:
        """The CAM-ready form that also returns guided input gradients, built and opened on first use."""
        if self._guided_session is None:
            self._guided_session = self._open(self._cam_ready(input_gradients="guided"))
        return self._guided_session

    def _multi(self) -> ort.InferenceSession:
        """The multi-target CAM-ready form (one trunk pass, one head backward per target), on first use."""
        if self._multi_session is None:
            self._multi_session = self._open(self._cam_ready(multi_target=True))
        return self._multi_session

    def _explanation(
        self, raw: FloatArray, method: str, target: int, cam: CamMap, timings: dict[str, float]
    ) -> Explanation:
        labels = self.manifest.labels
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
            timings_ms=dict(timings),
        )

    def raw_probabilities(self, image: npt.NDArray[np.uint8]) -> FloatArray:
        """The model's own (uncalibrated) probabilities for one model-input picture: what
        evaluation and calibration are fitted on. A model that outputs logits
        (``output_is_probability`` false) is soft-maxed, as the CAM-ready form does."""
        output = self.predict_plain(preprocess(image, self.manifest))[0]
        if self.manifest.output_is_probability:
            return np.asarray(output, dtype=np.float32)
        shifted = np.exp(output.astype(np.float64) - output.max())
        return np.asarray(shifted / shifted.sum(), dtype=np.float32)

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
