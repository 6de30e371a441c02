"""Synthetic MR series for the benchmarks: one axial stack, a lesion on a few adjacent slices.

Every slice is one single-frame MR Image object (PS3.3 A.4) of the same study and series,
with its own SOP Instance UID, Instance Number and Image Plane module (C.7.6.2): the same
orientation on every slice and positions one slice spacing apart along the normal, so the
worker's anatomical ordering (``models.slice_geometry``) sees a real stack.
"""

from __future__ import annotations

import io
import math
from datetime import date

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from models.synthetic import Lesion, synthetic_slice

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # (0020,0037): rows along +x, columns along +y, normal +z
SLICE_SPACING_MM = 1.0
PIXEL_SPACING_MM = 0.9
LESION_HALF_DEPTH = 3  # the lesion shows on 2 * 3 - 1 = 5 adjacent slices
LESION_CENTRE = (0.36, 0.42)  # fraction of the width and height
LESION_RADIUS = 0.08  # fraction of the width, at the lesion's centre slice


def lesion_on(index: int, centre_slice: int) -> Lesion | None:
    """A sphere cut by slice ``index``: its radius shrinks with distance from the centre slice."""
    depth = abs(index - centre_slice)
    if depth >= LESION_HALF_DEPTH:
        return None
    radius = LESION_RADIUS * math.sqrt(1.0 - (depth / LESION_HALF_DEPTH) ** 2)
    return Lesion(LESION_CENTRE[0], LESION_CENTRE[1], radius)


def mr_series(
    study_uid: str,
    series_uid: str,
    slices: int,
    *,
    size: int = 256,
    seed: int = 0,
    series_number: int = 1,
    lesion_slice: int | None = None,
) -> list[bytes]:
    """``slices`` DICOM files of one series, in acquisition order (Instance Number 1..slices).

    The lesion sits around ``lesion_slice`` (default: 60 % of the way through the stack);
    pass ``-1`` for a series without a lesion.
    """
    if slices < 1:
        raise ValueError(f"slices must be at least 1, got {slices}")
    centre = round(slices * 0.6) if lesion_slice is None else lesion_slice
    return [
        _slice_file(
            study_uid,
            series_uid,
            index,
            size=size,
            seed=seed * 100_003 + index,
            series_number=series_number,
            lesion=lesion_on(index, centre),
        )
        for index in range(slices)
    ]


def _slice_file(
    study_uid: str, series_uid: str, index: int, *, size: int, seed: int, series_number: int, lesion: Lesion | None
) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName = "BENCH-0001", "SYNTHETIC^BENCH"
    ds.AccessionNumber = "BENCH0001"
    ds.StudyDate, ds.StudyTime = date(2026, 11, 1).strftime("%Y%m%d"), "101500"
    ds.Modality, ds.BodyPartExamined = "MR", "BRAIN"
    ds.StudyDescription = "SYNTHETIC BENCH - NOT A PATIENT"
    ds.SeriesDescription = f"SYNTHETIC AX T1 {series_number}"
    ds.SeriesNumber, ds.InstanceNumber = series_number, index + 1
    ds.ImageOrientationPatient = list(AXIAL)
    ds.ImagePositionPatient = [-size * PIXEL_SPACING_MM / 2, -size * PIXEL_SPACING_MM / 2, index * SLICE_SPACING_MM]
    ds.SliceLocation = index * SLICE_SPACING_MM
    ds.SliceThickness = ds.SpacingBetweenSlices = SLICE_SPACING_MM
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 800, 1600
    ds.PixelData = synthetic_slice(size, lesion=lesion, seed=seed).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
