"""multipart/related parsing for STOW-RS: boundaries, preamble and epilogue, line breaks, bare parts."""

from __future__ import annotations

import pytest

from service.dicomweb.multipart import MalformedMultipart, NotDicomMultipart, dicom_boundary, split_parts


def test_the_boundary_is_read_quoted_or_bare_and_the_root_type_must_be_dicom() -> None:
    quoted = 'multipart/related; type="application/dicom"; boundary="a b:c=d"'
    assert dicom_boundary(quoted) == "a b:c=d"
    assert dicom_boundary("Multipart/Related;boundary=xyz;type=application/dicom") == "xyz"
    with pytest.raises(NotDicomMultipart, match="multipart/related"):
        dicom_boundary("application/dicom")
    with pytest.raises(NotDicomMultipart, match="multipart/related"):
        dicom_boundary(None)
    with pytest.raises(NotDicomMultipart, match="type parameter"):
        dicom_boundary('multipart/related; type="application/dicom+json"; boundary=x')
    with pytest.raises(NotDicomMultipart, match="type parameter"):
        dicom_boundary("multipart/related; boundary=x")
    with pytest.raises(MalformedMultipart, match="boundary"):
        dicom_boundary('multipart/related; type="application/dicom"')
    with pytest.raises(MalformedMultipart, match="boundary"):
        dicom_boundary(f'multipart/related; type="application/dicom"; boundary={"x" * 201}')
    # Orthanc's DICOMweb client: two UUIDs, 73 characters, over RFC 2046's 70.
    orthanc = "8b2f0d43-3a5c-4d59-9a1f-2c1d7a0e6b11-1f3e5a7c-9b2d-4e6f-8a0c-2e4f6a8c0e21"
    assert dicom_boundary(f'multipart/related; type="application/dicom"; boundary={orthanc}') == orthanc


def test_preamble_and_epilogue_are_ignored_and_content_keeps_its_line_breaks() -> None:
    body = (
        b"this is the preamble\r\n--b1\r\nContent-Type: application/dicom\r\nX-Other:  spaced \r\n\r\n"
        b"one\r\n\r\nstill one\n\r\n--b1  \r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
        b"\r\n\r\n--b1-not-a-delimiter\r\n--b1--\r\nepilogue\r\n--b1\r\nignored\r\n"
    )
    first, second = split_parts(body, "b1")
    assert first.headers == {"content-type": "application/dicom", "x-other": "spaced"}
    assert first.content == b"one\r\n\r\nstill one\n"
    assert first.media_type == second.media_type == "application/dicom"
    assert second.content == b"--b1-not-a-delimiter"


def test_a_part_without_headers_and_bare_lf_line_breaks_are_accepted() -> None:
    parts = split_parts(b"--b\n\nbare\n--b\r\n\r\n\r\n--b--", "b")
    assert [(p.headers, p.media_type, p.content) for p in parts] == [({}, None, b"bare"), ({}, None, b"")]


def test_an_empty_multipart_body_has_no_parts() -> None:
    assert split_parts(b"--b--\r\n", "b") == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"no delimiter at all", "no boundary delimiter"),
        (b"--b\r\n\r\ncut off in the middle", "without its closing boundary"),
        (b"--b\r\nContent-Type: application/dicom\r\n--b--", "no blank line"),
        (b"--b\r\nno colon here\r\n\r\ndata\r\n--b--", "malformed header"),
        (b"x--b\r\n\r\ndata --b--", "no boundary delimiter"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(MalformedMultipart, match=message):
        split_parts(body, "b")
