"""Every way a DICOM upload can fail to become pixels raises one named, specific error."""

import random
import struct

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from models.errors import (
    DecompressionBomb,
    ImageDecodeError,
    InconsistentPixelData,
    NoPixelData,
    UnreadableDicom,
    UnsupportedTransferSyntax,
)
from models.pixels import decode_dicom, read_dicom


def file_bytes(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as fh:
        return fh.read()


def mr_small() -> Dataset:
    return read_dicom(file_bytes("MR_small.dcm"))


def test_empty_input() -> None:
    with pytest.raises(UnreadableDicom, match="empty input"):
        read_dicom(b"")


def test_random_bytes() -> None:
    noise = random.Random(7).randbytes(4096)
    with pytest.raises(UnreadableDicom, match=r"not a DICOM dataset|not a readable DICOM file"):
        read_dicom(noise)


@pytest.mark.parametrize("size", [140, 300])
def test_file_meta_without_a_dataset(size: int) -> None:
    with pytest.raises(UnreadableDicom, match="no data elements after the File Meta Information"):
        read_dicom(file_bytes("MR_small.dcm")[:size])


def test_truncated_header() -> None:
    with pytest.raises(UnreadableDicom, match=r"truncated: element \(0020,0037\) declares 42 bytes, 12 present"):
        read_dicom(file_bytes("MR_small.dcm")[:1200])


def test_truncated_before_any_pixel_data_byte() -> None:
    with pytest.raises(InconsistentPixelData, match=r"Pixel Data is 0 bytes .* needs 8192: truncated"):
        decode_dicom(read_dicom(file_bytes("MR_small.dcm")[:1500]))


def test_truncated_pixel_data() -> None:
    with pytest.raises(InconsistentPixelData, match=r"8130 bytes .* needs 8192: truncated"):
        decode_dicom(read_dicom(file_bytes("MR_truncated.dcm")))


def test_dataset_without_pixel_data() -> None:
    with pytest.raises(NoPixelData, match=r"no \(7FE0,0010\) Pixel Data"):
        decode_dicom(read_dicom(file_bytes("rtplan.dcm")))


def test_rows_that_overstate_the_pixel_data() -> None:
    ds = mr_small()
    ds.Rows = 1024
    with pytest.raises(InconsistentPixelData, match="8192 bytes but the Image Pixel module needs 131072"):
        decode_dicom(ds)


@pytest.mark.parametrize(("keyword", "value"), [("Rows", 32), ("BitsAllocated", 8), ("Columns", 16)])
def test_dimensions_that_understate_the_pixel_data(keyword: str, value: int) -> None:
    ds = mr_small()
    setattr(ds, keyword, value)
    if keyword == "BitsAllocated":
        ds.BitsStored, ds.HighBit = 8, 7
    with pytest.raises(InconsistentPixelData, match="understate"):
        decode_dicom(ds)


def test_samples_per_pixel_that_contradict_the_photometric_interpretation() -> None:
    ds = mr_small()
    ds.SamplesPerPixel = 3
    with pytest.raises(InconsistentPixelData, match=r"Samples per Pixel is 3 but MONOCHROME2 needs 1"):
        decode_dicom(ds)


def test_unknown_photometric_interpretation() -> None:
    ds = mr_small()
    ds.PhotometricInterpretation = "HSV"
    with pytest.raises(InconsistentPixelData, match="'HSV' is unsupported"):
        decode_dicom(ds)


def test_missing_rows() -> None:
    ds = mr_small()
    del ds.Rows
    with pytest.raises(InconsistentPixelData, match=r"\(0028,0010\) Rows is missing"):
        decode_dicom(ds)


def test_absurd_frame_size_is_a_bomb_before_any_length_check() -> None:
    ds = mr_small()
    ds.Rows, ds.Columns = 10_000, 10_000
    with pytest.raises(DecompressionBomb, match="10000x10000 frame exceeds the 64000000-pixel limit"):
        decode_dicom(ds)


def test_pixel_budget_is_configurable() -> None:
    assert decode_dicom(mr_small(), max_pixels=64 * 64).pixels.shape == (64, 64)
    with pytest.raises(DecompressionBomb, match="64x64 frame exceeds the 4095-pixel limit"):
        decode_dicom(mr_small(), max_pixels=64 * 64 - 1)


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.100", "1.2.3.4"])
def test_transfer_syntax_without_a_decoder(uid: str) -> None:
    ds = mr_small()
    ds.file_meta.TransferSyntaxUID = UID(uid)
    with pytest.raises(UnsupportedTransferSyntax, match="no pixel decoder for transfer syntax"):
        decode_dicom(ds)


def test_dataset_without_transfer_syntax() -> None:
    ds = mr_small()
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(UnsupportedTransferSyntax, match=r"no \(0002,0010\) Transfer Syntax UID"):
        decode_dicom(ds)


@pytest.mark.parametrize(
    ("name", "plugin_error"),
    [
        ("JPEG-lossy.dcm", "misplaced marker segment"),  # a known-bad 12-bit JPEG
    ],
)
def test_compressed_data_no_plugin_can_decode(name: str, plugin_error: str) -> None:
    with pytest.raises(InconsistentPixelData, match=f"could not be decoded: .*{plugin_error}"):
        decode_dicom(read_dicom(file_bytes(name)))


def test_corrupt_jpeg_2000_header_is_refused_before_decoding() -> None:
    """A sequence delimiter inside the codestream lands in SIZ, which then declares 3.7e9 x 1024."""
    with pytest.raises(DecompressionBomb, match="compressed frame declares 3722445056x1024 pixels"):
        decode_dicom(read_dicom(file_bytes("JPEG2000-embedded-sequence-delimiter.dcm")))


def test_multi_valued_transfer_syntax() -> None:
    """(0002,0010) has VM 1; 'a\\b' parses to a MultiValue that pydicom's decoders cannot take."""
    explicit_le = b"1.2.840.10008.1.2.1\x00"
    data = file_bytes("MR_small.dcm").replace(explicit_le, b"1.2.840.10008.1.2\\1\x00", 1)
    with pytest.raises(UnsupportedTransferSyntax, match=r"\(0002,0010\) Transfer Syntax UID is not a single UID"):
        decode_dicom(read_dicom(data))


def test_number_of_frames_that_is_not_an_integer() -> None:
    with pytest.raises(InconsistentPixelData, match="Number of Frames is not an integer"):
        decode_dicom(read_dicom(file_bytes("badVR.dcm")))


def test_encapsulated_frames_that_do_not_exist() -> None:
    ds = read_dicom(file_bytes("MR_small_RLE.dcm"))
    ds.NumberOfFrames = 40
    with pytest.raises(InconsistentPixelData, match="could not be decoded"):
        decode_dicom(ds)


def test_error_messages_carry_no_patient_data() -> None:
    ds = mr_small()
    ds.Rows = 1024
    with pytest.raises(InconsistentPixelData) as info:
        decode_dicom(ds)
    assert str(ds.PatientName) not in str(info.value) and str(ds.PatientID) not in str(info.value)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["MR_small.dcm", "SC_rgb_rle_2frame.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_damaged_files_raise_only_decode_errors(name: str) -> None:
    """Truncations and byte flips anywhere: decoded, or refused with an ImageDecodeError."""
    original = file_bytes(name)
    rng = random.Random(name)
    samples = [original[: rng.randrange(len(original))] for _ in range(60)]
    for _ in range(120):
        damaged = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        samples.append(bytes(damaged))
    for sample in samples:
        try:
            decode_dicom(read_dicom(sample))
        except ImageDecodeError:
            continue


def test_rle_segments_that_overrun_the_frame_do_not_reach_the_rust_decoder() -> None:
    """pylibjpeg-rle panics (a BaseException) on this; pydicom's own RLE decoder copes."""
    ds = read_dicom(file_bytes("MR_small_RLE.dcm"))
    segment = bytes([0x81, 0x07]) * 40  # 40 replicate runs of 128 bytes: 5120 > 4096 per segment
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))  # PS3.5 G.5 RLE header
    ds.PixelData = encapsulate([header + segment + segment])
    image = decode_dicom(ds)
    assert image.pixels.shape == (64, 64) and (image.pixels == 255).all()  # 0x0707 is above the window


def test_rescale_slope_that_is_not_a_number() -> None:
    ds = mr_small()
    ds.RescaleSlope, ds.RescaleIntercept = [1, 2], 0
    with pytest.raises(InconsistentPixelData, match="modality LUT / rescale values are unusable"):
        decode_dicom(ds)
