"""The labelled folder reader: refusals, the seeded stratified split and train/serve parity of tensors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from phantoms import dicom_bytes

from models.dicom_pixels import decode_dicom
from models.dicom_read import read_dicom
from models.evaluation import LabelledFolderError
from models.preprocess import preprocess
from models.raster import decode_raster
from models.synthetic import synthetic_slice
from tests.training.synthetic_folder import LABELS, picture, write_folder
from training.data import class_files, folder_labels, load_tensors, model_pictures, stratified_split
from training.manifest_writer import InputSpec, label_spec, preprocessing_manifest

SPEC = InputSpec(input_size=32)


def test_labels_come_from_sub_folders_sorted_lower_case_with_public_aliases(tmp_path: Path) -> None:
    for name in ("Pituitary", "no_tumor", "glioma_tumor", ".cache"):
        (tmp_path / name).mkdir()
    (tmp_path / "README.txt").write_text("not a class")
    assert folder_labels(tmp_path) == ["glioma", "notumor", "pituitary"]


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabelledFolderError, match="at least two class sub-folders"):
        class_files(tmp_path, folder_labels(tmp_path))


def test_class_folders_without_images_are_refused(tmp_path: Path) -> None:
    (tmp_path / "glioma").mkdir()
    (tmp_path / "notumor").mkdir()
    with pytest.raises(LabelledFolderError, match="holds no image files"):
        class_files(tmp_path, folder_labels(tmp_path))


def test_a_one_class_folder_is_refused(tmp_path: Path) -> None:
    write_folder(tmp_path, per_class=3, labels=("glioma",))
    with pytest.raises(LabelledFolderError, match=r"at least two class sub-folders, found \['glioma'\]"):
        class_files(tmp_path, folder_labels(tmp_path))


def test_a_class_with_one_image_is_refused_by_name(tmp_path: Path) -> None:
    write_folder(tmp_path, per_class=3, labels=("glioma", "pituitary"))
    for extra in ("001.png", "002.png"):
        (tmp_path / "pituitary" / extra).unlink()
    with pytest.raises(LabelledFolderError, match=r"too few in pituitary \(1\)"):
        class_files(tmp_path, folder_labels(tmp_path))


def test_a_path_that_is_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabelledFolderError, match="is not a folder"):
        folder_labels(tmp_path / "missing")


def test_split_is_stratified_disjoint_and_seeded(labelled_folder: Path) -> None:
    files = class_files(labelled_folder, LABELS)
    split = stratified_split(files, validation_fraction=0.25, seed=7)
    assert sorted(split.train + split.validation) == sorted(files)
    assert not set(split.train) & set(split.validation)
    assert np.bincount([label for _, label in split.validation]).tolist() == [3, 3, 3, 3]
    assert stratified_split(files, validation_fraction=0.25, seed=7) == split
    assert stratified_split(files, validation_fraction=0.25, seed=8).validation != split.validation


def test_split_keeps_one_file_on_each_side_of_a_two_file_class(tmp_path: Path) -> None:
    files = [(tmp_path / "a.png", 0), (tmp_path / "b.png", 0), *((tmp_path / f"{i}.png", 1) for i in range(10))]
    for fraction in (0.01, 0.99):
        split = stratified_split(files, validation_fraction=fraction, seed=0)
        assert [label for _, label in split.validation].count(0) == 1
        assert [label for _, label in split.train].count(0) == 1


def test_split_refuses_a_fraction_outside_0_1() -> None:
    with pytest.raises(ValueError, match="validation_fraction"):
        stratified_split([], validation_fraction=1.0, seed=0)


def test_tensors_are_what_the_classifier_feeds_for_a_png(labelled_folder: Path) -> None:
    manifest = preprocessing_manifest(SPEC, label_spec(LABELS))
    path = labelled_folder / "glioma" / "000.png"
    tensors, skipped = load_tensors([(path, 0)], manifest)
    served = preprocess(decode_raster(path.read_bytes()).model_pixels, manifest)  # models.analysis, raster branch
    assert skipped == []
    assert tensors.inputs.shape == (1, 1, 32, 32)
    np.testing.assert_array_equal(tensors.inputs, served)
    assert tensors.labels.tolist() == [0]


def test_an_rgb_jpeg_becomes_one_grey_channel(tmp_path: Path) -> None:
    grey = picture("glioma", 3)
    path = tmp_path / "colour.jpg"
    assert cv2.imwrite(str(path), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    (tensor,) = model_pictures(path.read_bytes(), preprocessing_manifest(SPEC, label_spec(LABELS)))
    assert tensor.shape == (64, 64, 3)
    tensors, _ = load_tensors([(path, 1)], preprocessing_manifest(SPEC, label_spec(LABELS)))
    assert tensors.inputs.shape == (1, 1, 32, 32)
    assert 0.9 < tensors.inputs.max() <= 1.0


def test_every_frame_of_a_dicom_object_is_a_sample_made_by_the_input_policy(tmp_path: Path) -> None:
    frames = np.stack([synthetic_slice(64, seed=seed) for seed in range(3)])
    path = tmp_path / "series.dcm"
    path.write_bytes(dicom_bytes(frames, NumberOfFrames=3, WindowCenter=300, WindowWidth=200))
    manifest = preprocessing_manifest(SPEC, label_spec(LABELS))
    tensors, _ = load_tensors([(path, 2)], manifest)
    policy_picture = decode_dicom(read_dicom(path.read_bytes()), index=1, input_policy=manifest.input_policy)
    assert tensors.labels.tolist() == [2, 2, 2]
    np.testing.assert_array_equal(tensors.inputs[1], preprocess(policy_picture.model_pixels, manifest)[0])
    assert not np.array_equal(policy_picture.model_pixels, policy_picture.pixels)  # not the display window


def test_unreadable_files_are_skipped_and_named(tmp_path: Path, labelled_folder: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    good = labelled_folder / "notumor" / "000.png"
    tensors, skipped = load_tensors([(broken, 0), (good, 2)], preprocessing_manifest(SPEC, label_spec(LABELS)))
    assert skipped == [broken]
    assert tensors.labels.tolist() == [2]


def test_nothing_decodable_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(LabelledFolderError, match="none of 1 files could be decoded"):
        load_tensors([(broken, 0)], preprocessing_manifest(SPEC, label_spec(LABELS)))
