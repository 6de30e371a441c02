"""multipart/related bodies (RFC 2046 §5.1, RFC 2387) as PS3.18 §8.6.1.2 uses them for STOW-RS.

The whole body is in memory (the route counts its bytes against ``max_upload_bytes``), so
parsing is a scan for delimiter lines. Decisions:

- Delimiters are ``CRLF--boundary``; a bare LF before or after one is accepted too, as
  hand-made bodies often have them. The line break before a delimiter belongs to it, so a
  part's content keeps every byte up to that line break (DICOM content may hold CR and LF).
- Text before the first delimiter (preamble) and after the closing one (epilogue) is ignored.
- A part without a Content-Type header has the root type named by the ``type`` parameter
  (RFC 2387 §3.1); RFC 2046's text/plain default would make no sense in a DICOM request.
- A body without a closing delimiter was cut off: it is refused whole (400), since its
  last part cannot be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

from service.errors import BadRequest, UnsupportedMediaType

DICOM_MEDIA_TYPE = "application/dicom"


class MalformedMultipart(BadRequest):
    code = "malformed_multipart"


class NotDicomMultipart(UnsupportedMediaType):
    """PS3.18 §10.5.1.2: STOW-RS here takes only multipart/related; type="application/dicom"."""


@dataclass(frozen=True)
class BodyPart:
    headers: dict[str, str]  # names lower-cased
    content: bytes

    @property
    def media_type(self) -> str | None:
        value = self.headers.get("content-type")
        return media_type_of(value) if value is not None else None


def media_type_of(content_type: str) -> str:
    """``type/subtype`` of a Content-Type value, lower-cased, without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


MAX_BOUNDARY = 200


def dicom_boundary(content_type: str | None) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` Content-Type; 415 for anything else."""
    header = Message()
    header["content-type"] = content_type or ""
    if media_type_of(content_type or "") != "multipart/related":
        raise NotDicomMultipart('Content-Type must be multipart/related; type="application/dicom"')
    root_type = _param(header, "type")
    if root_type is None or media_type_of(root_type) != DICOM_MEDIA_TYPE:
        raise NotDicomMultipart("the multipart/related type parameter must be application/dicom")
    boundary = _param(header, "boundary")
    # RFC 2046 §5.1.1 allows 1 to 70 characters, but real senders exceed it (Orthanc's DICOMweb
    # client sends two UUIDs: 73), so only an absurd length is refused.
    if not boundary or len(boundary) > MAX_BOUNDARY or not boundary.isascii():
        raise MalformedMultipart("Content-Type has no valid boundary parameter")
    return boundary


def _param(header: Message, name: str) -> str | None:
    value = header.get_param(name, header="content-type")
    if value is None or isinstance(value, str):
        return value
    return str(value[2])  # an RFC 2231 (charset, language, value) triple


def split_parts(body: bytes, boundary: str) -> list[BodyPart]:
    """The body parts between the first delimiter and the closing one, in order."""
    marker = b"--" + boundary.encode("ascii")
    found = _next_delimiter(body, marker, 0)
    if found is None:
        raise MalformedMultipart("the body has no boundary delimiter")
    parts: list[BodyPart] = []
    _, part_start, closing = found
    while not closing:
        found = _next_delimiter(body, marker, part_start)
        if found is None:
            raise MalformedMultipart("the body ends without its closing boundary delimiter")
        content_end, next_start, closing = found
        parts.append(_parse_part(body[part_start:content_end], len(parts)))
        part_start = next_start
    return parts


def _next_delimiter(body: bytes, marker: bytes, offset: int) -> tuple[int, int, bool] | None:
    """(end of the preceding content, start of the next part, is it the closing delimiter), or None."""
    at = body.find(marker, offset)
    while at != -1:
        at_line_start = at == offset == 0 or body[at - 1 : at] == b"\n"
        after = at + len(marker)
        if at_line_start:
            content_end = at - 1 if at > 0 else 0
            if content_end > 0 and body[content_end - 1 : content_end] == b"\r":
                content_end -= 1
            if body[after : after + 2] == b"--":
                return content_end, len(body), True
            line_end = _line_end(body, after)
            if line_end is not None:
                return content_end, line_end, False
        at = body.find(marker, at + 1)
    return None


def _line_end(body: bytes, index: int) -> int | None:
    """The index after the line break that ends a delimiter line (after optional transport padding)."""
    while body[index : index + 1] in (b" ", b"\t"):
        index += 1
    if body[index : index + 2] == b"\r\n":
        return index + 2
    if body[index : index + 1] == b"\n":
        return index + 1
    return None


def _parse_part(raw: bytes, index: int) -> BodyPart:
    if raw.startswith(b"\r\n") or raw.startswith(b"\n"):  # no headers: the blank line comes first
        return BodyPart({}, raw[2:] if raw.startswith(b"\r\n") else raw[1:])
    ends = [(raw.find(sep), sep) for sep in (b"\r\n\r\n", b"\n\n") if raw.find(sep) != -1]
    if not ends:
        raise MalformedMultipart(f"part {index} has no blank line after its headers")
    split_at, sep = min(ends)
    headers: dict[str, str] = {}
    for line in raw[:split_at].decode("latin-1").splitlines():
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MalformedMultipart(f"part {index} has a malformed header line")
        headers[name.strip().lower()] = value.strip()
    return BodyPart(headers, raw[split_at + len(sep) :])
