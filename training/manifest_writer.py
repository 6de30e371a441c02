"""The Sightline manifest of a trained model, built from the same input spec training used.

Training preprocesses every picture with ``models.preprocess.preprocess`` and a manifest made
by ``preprocessing_manifest``; the shipped manifest comes from ``build_manifest`` with the
same ``InputSpec``. Both go through ``_input_fields``, so the tensor a model was trained on
and the tensor Sightline feeds it are made by one function from one set of fields.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from models.errors import InvalidManifest
from models.manifest import CamMethodName, ModelManifest, Scope, file_sha256, load_manifest

ResizeFilter = Literal["pil_bicubic", "area", "bilinear"]
Intensity = Literal["full_range", "percentile", "stored_window"]
PIXEL_SCALE = 1.0 / 255.0
# Fields of the preprocessing-only manifest that no ONNX file exists for yet: never written to disk.
_UNEXPORTED = {"input_name": "input", "output_name": "logits", "onnx_path": "unexported.onnx", "sha256": "0" * 64}


@dataclass(frozen=True)
class InputSpec:
    """How a stored picture becomes the model input (see ``models.manifest.InputPolicy``)."""

    input_size: int
    channels: Literal[1, 3] = 1
    resize: ResizeFilter = "area"
    intensity: Intensity = "full_range"


@dataclass(frozen=True)
class LabelSpec:
    """Class labels in output order, which of them are tumours and the "no tumour" class."""

    labels: tuple[str, ...]
    tumour_labels: tuple[str, ...]
    no_tumour_label: str | None


def label_spec(
    labels: Sequence[str], tumour_labels: Sequence[str] = (), no_tumour_label: str | None = None
) -> LabelSpec:
    """Every label but the no-tumour one is a tumour unless ``tumour_labels`` says otherwise.

    A ``no_tumour_label`` that is not among ``labels`` is dropped: the default ("notumor")
    only applies to folders that have such a class.
    """
    no_tumour = no_tumour_label if no_tumour_label in labels else None
    tumours = tuple(tumour_labels) or tuple(label for label in labels if label != no_tumour)
    return LabelSpec(tuple(labels), tumours, no_tumour)


def _input_fields(spec: InputSpec) -> dict[str, Any]:
    """The manifest fields ``models.preprocess`` reads: layout, size, channels, scale, policy."""
    return {
        "input_layout": "NCHW",
        "input_size": (spec.input_size, spec.input_size),
        "channel_order": "L" if spec.channels == 1 else "RGB",
        "scale": PIXEL_SCALE,
        "mean": None,
        "std": None,
        "center_crop": None,
        "input_policy": {"intensity": spec.intensity, "resize": spec.resize},
    }


def _label_fields(labels: LabelSpec) -> dict[str, Any]:
    return {
        "labels": list(labels.labels),
        "tumour_labels": list(labels.tumour_labels),
        "no_tumour_label": labels.no_tumour_label,
    }


def preprocessing_manifest(
    spec: InputSpec, labels: LabelSpec, *, name: str = "training", version: str = "0"
) -> ModelManifest:
    """A manifest for ``models.preprocess`` while no ONNX file exists yet (placeholder file fields).

    Built before training starts, so a bad name or label set is refused before any time is spent.
    """
    fields = {"name": name, "version": version, "output_is_probability": False, **_UNEXPORTED}
    return _validated({**fields, **_label_fields(labels), **_input_fields(spec)}, f"model {name!r}")


def _validated(fields: dict[str, Any], what: str) -> ModelManifest:
    try:
        return ModelManifest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidManifest(f"{what}: {exc}") from exc


class ExportedFile(Protocol):
    """What the ONNX export produced (``training.architectures.ExportedModel``): the file and
    the tensor names the manifest must name. A protocol, so this module needs no torch."""

    @property
    def path(self) -> Path: ...
    @property
    def input_name(self) -> str: ...
    @property
    def output_name(self) -> str: ...
    @property
    def cam_layer(self) -> str: ...


def build_manifest(
    *,
    name: str,
    version: str,
    spec: InputSpec,
    labels: LabelSpec,
    exported: ExportedFile,
    manifest_dir: Path,
    temperature: float,
    cam_method: CamMethodName = "gradcam",
) -> ModelManifest:
    """The manifest of an exported model: logits out (``output_is_probability`` False), the sha256
    of the file as written, and ``onnx_path`` relative to ``manifest_dir`` so the folder can move."""
    fields = {
        "name": name,
        "version": version,
        "input_name": exported.input_name,
        "output_name": exported.output_name,
        "output_is_probability": False,
        "cam_layer": exported.cam_layer,
        "cam_method": cam_method,
        "temperature": temperature,
        # Trained on exported pictures of MR slices: rasters are what it was made for.
        "scope": Scope(modalities=["MR"], raster_images=True),
        "onnx_path": _relative_onnx_path(exported.path, manifest_dir),
        "sha256": file_sha256(exported.path),
    }
    return _validated({**fields, **_label_fields(labels), **_input_fields(spec)}, f"model {name!r}")


def _relative_onnx_path(onnx_file: Path, manifest_dir: Path) -> str:
    """``onnx_path`` relative to the manifest's folder, so the folder can be moved or mounted elsewhere."""
    try:
        return onnx_file.resolve().relative_to(manifest_dir.resolve()).as_posix()
    except ValueError:
        raise InvalidManifest(f"ONNX file {onnx_file} is not inside the manifest folder {manifest_dir}") from None


def write_manifest(manifest: ModelManifest, path: Path) -> ModelManifest:
    """Write ``manifest`` as JSON and read it back through ``load_manifest``, as Sightline will."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return load_manifest(path)
