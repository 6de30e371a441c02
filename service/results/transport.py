"""Pushing DICOM files to one destination: C-STORE as an SCU (pynetdicom) or STOW-RS (httpx).

Each send answers one ``Outcome`` per object: delivered, worth retrying (the peer was
unreachable, busy or out of resources) or refused for good (the peer understood and said
no). Nothing here touches the database; ``service.results.deliver`` records the outcomes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from io import BytesIO

import httpx
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from service.settings import Destination

logger = logging.getLogger(__name__)

# PS3.4 Annex B.2.3: success and the warnings that still mean "stored".
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}
# Failures a later attempt may get past: out of resources (A7xx), and "processing failure".
_TRANSIENT_PREFIX = 0xA700
_PROCESSING_FAILURE = 0x0110
_RETRY_HTTP = {408, 425, 429}


@dataclass(frozen=True)
class Outgoing:
    """One object to send: its UIDs and its Part 10 bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    data: bytes


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retry: bool  # meaningful when not delivered
    status: str  # "0x0000", "HTTP 200", "unreachable" ...
    error: str | None = None


def send(destination: Destination, objects: list[Outgoing], *, calling_ae: str, timeout: float) -> list[Outcome]:
    if destination.kind == "dimse":
        return send_dimse(destination, objects, calling_ae=calling_ae, timeout=timeout)
    return send_stow(destination, objects, timeout=timeout)


def send_dimse(destination: Destination, objects: list[Outgoing], *, calling_ae: str, timeout: float) -> list[Outcome]:
    """One association for all objects; one presentation context per SOP class and transfer syntax."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in sorted({o.sop_class_uid for o in objects}):
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(destination.host or "", destination.port or 0, ae_title=destination.ae_title or "")
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "unreachable or aborted"
        return [Outcome(False, True, "no association", reason)] * len(objects)
    try:
        return [_store_one(assoc, item) for item in objects]
    finally:
        if assoc.is_established:
            assoc.release()


def _store_one(assoc: Association, item: Outgoing) -> Outcome:
    accepted = {context.abstract_syntax for context in assoc.accepted_contexts}
    if item.sop_class_uid not in accepted:  # refused at negotiation: this peer never stores the class
        return Outcome(False, False, "no context", "the destination does not accept this SOP class")
    dataset = pydicom.dcmread(BytesIO(item.data))
    status = assoc.send_c_store(dataset)
    if "Status" not in status:
        return Outcome(False, True, "no response", "the association ended without a C-STORE response")
    code = int(status.Status)
    text = f"0x{code:04X}"
    if code in _STORED:
        return Outcome(True, False, text)
    transient = code & 0xFF00 == _TRANSIENT_PREFIX or code == _PROCESSING_FAILURE
    return Outcome(False, transient, text, f"C-STORE failed with status {text}")


def send_stow(destination: Destination, objects: list[Outgoing], *, timeout: float) -> list[Outcome]:
    """One multipart/related request to ``{url}/studies`` for all objects (PS3.18 §10.5)."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + item.data + b"\r\n"
        for item in objects
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    if destination.token is not None:
        headers["Authorization"] = f"Bearer {destination.token.get_secret_value()}"
    url = (destination.url or "").rstrip("/") + "/studies"
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return [Outcome(False, True, "unreachable", type(exc).__name__)] * len(objects)
    return _stow_outcomes(response, objects)


def _stow_outcomes(response: httpx.Response, objects: list[Outgoing]) -> list[Outcome]:
    status = f"HTTP {response.status_code}"
    if response.status_code == 200:
        return [Outcome(True, False, status)] * len(objects)
    if response.status_code in (202, 409):
        failed = _failed_uids(response)
        return [
            Outcome(False, False, status, "refused in FailedSOPSequence")
            if item.sop_instance_uid in failed or not failed
            else Outcome(True, False, status)
            for item in objects
        ]
    retry = response.status_code >= 500 or response.status_code in _RETRY_HTTP
    return [Outcome(False, retry, status, f"STOW-RS answered {status}")] * len(objects)


def _failed_uids(response: httpx.Response) -> set[str]:
    """SOP Instance UIDs in the Store Instances Response's FailedSOPSequence (0008,1198)."""
    try:
        items = response.json().get("00081198", {}).get("Value", [])
        return {item["00081155"]["Value"][0] for item in items}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return set()
