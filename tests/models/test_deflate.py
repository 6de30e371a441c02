"""Deflated Explicit VR Little Endian (PS3.5 A.5) is inflated with a bound."""

from io import BytesIO

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from models.errors import DecompressionBomb, UnreadableDicom
from models.pixels import decode_dicom, read_dicom

MIB = 1 << 20


def deflated_mr_small(padding: int = 0) -> bytes:
    """MR_small.dcm rewritten deflated, optionally with ``padding`` zero bytes in a private OB."""
    path = get_testdata_file("MR_small.dcm")
    assert path is not None
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    if padding:
        ds.add_new(0x00091010, "OB", bytes(padding))
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_deflated_dataset_reads_and_decodes_like_the_original() -> None:
    path = get_testdata_file("MR_small.dcm")
    assert path is not None
    ds = read_dicom(deflated_mr_small())
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    with open(path, "rb") as fh:
        original = decode_dicom(read_dicom(fh.read()))
    assert np.array_equal(decode_dicom(ds).pixels, original.pixels)


def test_deflated_dataset_that_inflates_past_the_limit() -> None:
    data = deflated_mr_small(padding=4 * MIB)
    assert len(data) < 64 * 1024  # 4 MiB of zeros deflates to a few kB
    with pytest.raises(DecompressionBomb, match="inflates past the 1048576-byte limit"):
        read_dicom(data, max_inflated_bytes=MIB)


def test_inflation_limit_is_generous_by_default() -> None:
    assert read_dicom(deflated_mr_small(padding=4 * MIB))[0x00091010].VM == 1


def test_deflate_stream_that_is_cut_short() -> None:
    data = deflated_mr_small()
    with pytest.raises(UnreadableDicom, match="deflated dataset is truncated"):
        read_dicom(data[: len(data) - 200])
