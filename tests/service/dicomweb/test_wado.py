"""WADO-RS (PS3.18 §10.4): byte-exact instances, metadata with BulkDataURI, frames, rendered images."""

from __future__ import annotations

import io
from email.message import Message

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import add_result_object, bearer, dicom_variant, mr_slice, stow_all
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from service.db.tables import Role
from service.dicomweb.multipart import split_parts
from service.settings import Settings

STUDY_A = "1.2.826.0.1.3680043.9101"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"

SERIES = f"{STUDY_A}.1"
INSTANCE = f"/dicomweb/studies/{STUDY_A}/series/{SERIES}/instances"


def parts(response: httpx.Response) -> list[tuple[str | None, bytes]]:
    header = Message()
    header["content-type"] = response.headers["content-type"]
    boundary = header.get_param("boundary")
    assert isinstance(boundary, str)
    return [(part.media_type, part.content) for part in split_parts(response.content, boundary)]


def get(client: TestClient, token: str, path: str, accept: str | None = None) -> httpx.Response:
    headers = {**bearer(token), **({"Accept": accept} if accept else {})}
    response: httpx.Response = client.get(path, headers=headers)
    return response


def stored_testdata(name: str, number: int) -> bytes:
    """A pydicom test file moved into STUDY_A's series (pixel data and encoding untouched)."""
    path = get_testdata_file(name)
    assert path is not None
    uids = {"StudyInstanceUID": STUDY_A, "SeriesInstanceUID": SERIES, "SOPInstanceUID": f"{SERIES}.{number}"}
    return dicom_variant(open(path, "rb").read(), PatientID="PAT-TEST-1", InstanceNumber=number, **uids)


@pytest.fixture()
def originals(client: TestClient, tokens: dict[Role, str]) -> list[bytes]:
    stored = [mr_slice(STUDY_A, SERIES, 1), mr_slice(STUDY_A, SERIES, 2)]
    stow_all(client, tokens[Role.ingest], *stored)
    return stored


def test_instances_round_trip_byte_for_byte(
    client: TestClient, tokens: dict[Role, str], originals: list[bytes]
) -> None:
    study = get(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}")
    assert study.status_code == 200
    assert study.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    assert parts(study) == [("application/dicom", data) for data in originals]
    one = get(
        client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.2", accept='multipart/related; type="application/dicom"'
    )
    assert parts(one) == [("application/dicom", originals[1])]
    series = get(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}/series/{SERIES}")
    assert len(parts(series)) == 2


def test_result_objects_are_retrievable(
    client: TestClient, settings: Settings, tokens: dict[Role, str], originals: list[bytes]
) -> None:
    series_uid, sop_uid, data = add_result_object(settings, STUDY_A)
    response = get(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}/series/{series_uid}/instances/{sop_uid}")
    assert parts(response) == [("application/dicom", data)]
    assert len(parts(get(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}"))) == 3
    meta = get(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}/series/{series_uid}/metadata").json()
    assert meta[0]["00080060"]["Value"] == ["SR"] and "7FE00010" not in meta[0]


def test_metadata_has_bulk_data_uri_not_pixels(
    client: TestClient, tokens: dict[Role, str], originals: list[bytes]
) -> None:
    response = get(client, tokens[Role.reader], f"/dicomweb/studies/{STUDY_A}/metadata")
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom+json"
    first = response.json()[0]
    assert first["00080018"]["Value"] == [f"{SERIES}.1"]
    assert first["00100010"]["Value"] == [{"Alphabetic": "Test^Patient"}]
    assert first["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{INSTANCE}/{SERIES}.1/frames/1"}
    assert first["00083002"]["Value"] == ["1.2.840.10008.1.2.1"]
    assert not any("InlineBinary" in element for element in first.values())


def test_frames_of_native_multiframe(client: TestClient, tokens: dict[Role, str]) -> None:
    frames = np.arange(3 * 128 * 128, dtype=np.uint16).reshape(3, 128, 128) % 4096
    data = dicom_variant(mr_slice(STUDY_A, SERIES, 1), NumberOfFrames=3, PixelData=frames.tobytes())
    stow_all(client, tokens[Role.ingest], data)
    response = get(client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.1/frames/3,1")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith('multipart/related; type="application/octet-stream"')
    assert parts(response) == [
        ("application/octet-stream", frames[2].tobytes()),
        ("application/octet-stream", frames[0].tobytes()),
    ]
    assert get(client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.1/frames/4").status_code == 404
    assert get(client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.1/frames/0,x").status_code == 400


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_frames_decode_like_pydicom(client: TestClient, tokens: dict[Role, str], name: str) -> None:
    data = stored_testdata(name, 5)
    stow_all(client, tokens[Role.ingest], data)
    expected = dcmread(io.BytesIO(data)).pixel_array
    count = int(dcmread(io.BytesIO(data)).get("NumberOfFrames") or 1)
    numbers = ",".join(str(n) for n in range(1, count + 1))
    response = get(client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.5/frames/{numbers}")
    assert response.status_code == 200, response.text
    frames = expected if count > 1 else expected[np.newaxis]
    assert [content for _, content in parts(response)] == [frame.tobytes() for frame in frames]


def test_frames_of_rle_multiframe(client: TestClient, tokens: dict[Role, str]) -> None:
    frames = (np.arange(3 * 128 * 128, dtype=np.uint16).reshape(3, 128, 128) * 7) % 4096
    ds = dcmread(io.BytesIO(dicom_variant(mr_slice(STUDY_A, SERIES, 1), NumberOfFrames=3, PixelData=frames.tobytes())))
    ds.compress(RLELossless, generate_instance_uid=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    stow_all(client, tokens[Role.ingest], out.getvalue())
    response = get(client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.1/frames/2,3")
    assert response.status_code == 200, response.text
    assert [content for _, content in parts(response)] == [frames[1].tobytes(), frames[2].tobytes()]


def test_encapsulated_frames_as_stored_with_transfer_syntax_star(client: TestClient, tokens: dict[Role, str]) -> None:
    stow_all(client, tokens[Role.ingest], stored_testdata("MR_small_RLE.dcm", 5))
    accept = 'multipart/related; type="image/dicom-rle"; transfer-syntax=*'
    response = get(client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.5/frames/1", accept=accept)
    assert response.status_code == 200
    [(media, content)] = parts(response)
    assert media == "image/dicom-rle" and content[:4] == (2).to_bytes(4, "little")  # RLE header: 2 segments


def test_rendered_png_and_jpeg(client: TestClient, tokens: dict[Role, str], originals: list[bytes]) -> None:
    png = get(client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.1/rendered")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape == (128, 128) and image.max() > image.min()
    jpeg = get(client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.1/frames/1/rendered", accept="image/jpeg")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(jpeg.content, np.uint8), cv2.IMREAD_UNCHANGED).shape == (128, 128)
    assert get(client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.1/rendered", accept="image/gif").status_code == 406
    assert get(client, tokens[Role.reader], f"{INSTANCE}/{SERIES}.1/frames/2/rendered").status_code == 404


@pytest.mark.usefixtures("originals")
def test_errors_and_auth(client: TestClient, tokens: dict[Role, str]) -> None:
    study = f"/dicomweb/studies/{STUDY_A}"
    assert client.get(study).status_code == 401
    assert get(client, tokens[Role.ingest], study).status_code == 403
    missing = get(client, tokens[Role.reader], "/dicomweb/studies/1.2.3.4/metadata")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "dicom_object_not_found"
    assert get(client, tokens[Role.reader], f"{INSTANCE}/9.9.9").status_code == 404
    assert get(client, tokens[Role.reader], "/dicomweb/studies/1.2.x/metadata").status_code == 422
    assert get(client, tokens[Role.reader], "/dicomweb/studies/" + "1." * 40 + "1").status_code == 422
    assert get(client, tokens[Role.reader], study, accept="application/json").status_code == 406
