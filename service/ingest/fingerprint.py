"""What makes a re-sent instance "the same": its identity attributes and its pixel data.

PS3.4 B.4.1.3 leaves a second C-STORE of a known SOP Instance UID to the SCP. Sightline
answers an identical re-send as a duplicate and refuses a different one (409
``instance_conflict``) rather than silently keeping either: a changed Patient ID or new
pixels under the same UID is a correction or an error that a person must resolve.

- identity: Patient ID, Issuer, Name, Birth Date, Sex and the Study/Series/SOP Class UIDs;
- content: the transfer syntax and the bytes of (7FE0,0010) Pixel Data as sent. A re-send
  in another transfer syntax (a PACS re-compressing losslessly) has other bytes, so when
  the hashes differ and the syntaxes differ the decoded frames are compared instead.
  Objects without pixels (SR, KOS, PR) hash their whole file.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

from models.errors import ModelLibraryError
from models.pixels import read_dicom

IDENTITY_KEYWORDS = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
)


def identity_sha256(values: dict[str, str | None]) -> str:
    """sha256 of the identity attributes as canonical JSON (absent and empty are the same)."""
    canonical = {key: (values.get(key) or "").strip() for key in sorted(values)}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def dicom_identity(ds: Dataset) -> str:
    return identity_sha256({key: _text(ds.get(key)) for key in IDENTITY_KEYWORDS})


def dicom_content(ds: Dataset, data: bytes) -> str:
    """Transfer syntax + Pixel Data bytes; the whole file for objects without pixels."""
    pixels = ds.get("PixelData")
    if not isinstance(pixels, bytes):
        return hashlib.sha256(data).hexdigest()
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    digest = hashlib.sha256(syntax.encode() + b"\0")
    digest.update(pixels)
    return digest.hexdigest()


def same_decoded_pixels(stored: bytes, incoming: Dataset) -> bool:
    """True when both objects decode to equal frames (all of them); any decode error is "not equal"."""
    try:
        first = pixel_array(read_dicom(stored))
        second = pixel_array(incoming)
    except (ModelLibraryError, ValueError, TypeError, RuntimeError, NotImplementedError, AttributeError, KeyError):
        return False
    return first.shape == second.shape and bool(np.array_equal(first, second))


def _text(value: object) -> str | None:
    return None if value is None else str(value).replace("\0", "").strip()
