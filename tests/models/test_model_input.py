"""The model sees the stored grey levels by its own policy, not the display window."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from models.dicom_pixels import decode_dicom
from models.manifest import InputPolicy
from models.model_input import grey_model_picture, stretch
from models.slice_geometry import anatomical_order, frame_positions, pixel_spacing


def mr(values: np.ndarray, **attrs: object) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = values.astype(np.uint16).tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def test_full_range_ignores_the_stored_window() -> None:
    values = np.linspace(100, 1100, 64 * 64).reshape(64, 64)
    policy = InputPolicy(intensity="full_range", resize="area")
    pictures = [
        decode_dicom(mr(values, WindowCenter=center, WindowWidth=width), input_policy=policy)
        for center, width in ((600, 1000), (300, 200), (900, 50))
    ]
    assert not np.array_equal(pictures[0].pixels, pictures[1].pixels)  # the displays differ
    for picture in pictures[1:]:
        np.testing.assert_array_equal(picture.model_pixels, pictures[0].model_pixels)
    first = pictures[0]
    assert first.model_pixels.min() == 0 and first.model_pixels.max() == 255
    assert first.input_window == (600.0, 1000.0)


def test_stored_window_policy_is_the_display_and_monochrome1_is_inverted() -> None:
    values = np.tile(np.arange(64, dtype=np.float64) * 10, (64, 1))
    windowed = decode_dicom(
        mr(values, WindowCenter=300, WindowWidth=200), input_policy=InputPolicy(intensity="stored_window")
    )
    np.testing.assert_array_equal(windowed.model_pixels, windowed.pixels)
    assert windowed.input_window == windowed.window
    inverted = decode_dicom(mr(values, PhotometricInterpretation="MONOCHROME1"), input_policy=InputPolicy())
    assert inverted.model_pixels[0, 0] == 255 and inverted.model_pixels[0, -1] == 0  # bright = low values


def test_percentile_policy_clips_outliers() -> None:
    values = np.full((50, 50), 500.0, np.float32)
    values[10:40, 10:40] = 1000.0
    values[0, 0] = 60000.0  # one hot pixel
    picture = grey_model_picture(
        values, np.zeros((50, 50), np.uint8), None, InputPolicy(intensity="percentile"), invert=False
    )
    assert picture.pixels[20, 20] == 255 and picture.pixels[45, 45] == 0
    full = grey_model_picture(values, np.zeros((50, 50), np.uint8), None, InputPolicy(), invert=False)
    assert full.pixels[20, 20] < 10  # full range is squashed by the hot pixel: why percentile exists
    np.testing.assert_array_equal(stretch(values, 5.0, 5.0), np.zeros((50, 50), np.uint8))


def test_positions_along_the_normal_and_spacing() -> None:
    ds = mr(np.zeros((8, 8)), ImagePositionPatient=[0, 0, 12.5], ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    ds.PixelSpacing = [0.5, 0.7]
    assert frame_positions(ds, 1) == [12.5]
    assert pixel_spacing(ds) == (0.5, 0.7)
    sagittal = mr(np.zeros((8, 8)), ImagePositionPatient=[-30, 5, 7], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    assert frame_positions(sagittal, 1) == [30.0]  # normal = row x column = (-1, 0, 0)
    assert frame_positions(mr(np.zeros((8, 8))), 1) == [None]
    assert anatomical_order([3.0, -1.0, 2.0], [0, 1, 2]) == [1, 2, 0]
    assert anatomical_order([3.0, None, 2.0], [2, 0, 1]) == [1, 2, 0]  # any missing: fallback order
