"""DICOM and JPEG phantoms shared by the tests and the benchmarks (drawings, never patients)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from detect_tumor import TumorDetector
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from models.synthetic import Lesion, synthetic_slice

LABELS = ("glioma", "meningioma", "notumor", "pituitary")


def item(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(frames: np.ndarray, sop_class: str = MRImageStorage, bits: int = 16, **attrs: object) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "MR"
    ds.Rows, ds.Columns = frames.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = frames.astype(np.uint16 if bits == 16 else np.uint8).tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def training_style_jpeg(seed: int, lesion: Lesion | None) -> bytes:
    """A phantom exported the way the public sets were: full range to 0..255, 8-bit JPEG."""
    values = synthetic_slice(256, lesion=lesion, seed=seed).astype(np.float64)
    grey = np.rint((values - values.min()) / (values.max() - values.min()) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return encoded.tobytes()


def package_probabilities(jpeg: bytes) -> np.ndarray:
    """The model's own package on the JPEG (its percentages, back to fractions)."""
    result = TumorDetector().predict(jpeg)
    return np.array([result.probabilities[label] for label in LABELS]) / 100


def enhanced_volume(positions: list[float], lesion_frames: set[int], **attrs: object) -> bytes:
    """An Enhanced MR object whose frames are stored out of anatomical order."""
    frames = np.stack(
        [
            synthetic_slice(160, lesion=Lesion(0.4, 0.45, 0.12) if i in lesion_frames else None, seed=i)
            for i in range(len(positions))
        ]
    )
    shared = item(
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]),
        PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.9, 0.9], SliceThickness=5)]),
    )
    per_frame = [
        item(PlanePositionSequence=Sequence([item(ImagePositionPatient=[0, 0, position])])) for position in positions
    ]
    return dicom_bytes(
        frames,
        EnhancedMRImageStorage,
        NumberOfFrames=len(positions),
        SharedFunctionalGroupsSequence=Sequence([shared]),
        PerFrameFunctionalGroupsSequence=Sequence(per_frame),
        **attrs,
    )
