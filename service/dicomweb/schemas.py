"""STOW-RS Failure Reason values and how a refused instance maps to one."""

from __future__ import annotations

from enum import IntEnum


class FailureReason(IntEnum):
    """Failure Reason (0008,1197): PS3.18 Annex I, Table I.2-2 "Store Instances Response Failure Reason Values".

    The table has no code for a Study Instance UID that differs from the one in the request
    URL, and allows additional codes; ours is 0xC409 in the "Cannot understand" range, the
    value dcm4chee-arc uses for the same case, so existing STOW clients recognise it.
    """

    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    PROCESSING_FAILURE = 0x0110
    STUDY_INSTANCE_UID_MISMATCH = 0xC409


# Refusal codes of ``store_instance`` (and of the multipart layer) that need a specific reason;
# any other refusal is mapped by its status in ``failure_reason``.
_BY_CODE: dict[str, FailureReason] = {
    "unreadable_dicom": FailureReason.CANNOT_UNDERSTAND,
    "empty_file": FailureReason.CANNOT_UNDERSTAND,
    "unsupported_media_type": FailureReason.CANNOT_UNDERSTAND,
    "unsupported_transfer_syntax": FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
    "database_unavailable": FailureReason.OUT_OF_RESOURCES,
    "decompression_bomb": FailureReason.OUT_OF_RESOURCES,
    "payload_too_large": FailureReason.OUT_OF_RESOURCES,
}
_BY_STATUS: dict[int, FailureReason] = {
    413: FailureReason.OUT_OF_RESOURCES,
    415: FailureReason.CANNOT_UNDERSTAND,
    422: FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,  # readable, but missing or inconsistent attributes
    503: FailureReason.OUT_OF_RESOURCES,
}


def failure_reason(status_code: int, code: str | None) -> FailureReason:
    """The single most appropriate reason (Table I.2-2) for a refusal; conflicts are processing failures."""
    by_code = _BY_CODE.get(code) if code is not None else None
    return by_code or _BY_STATUS.get(status_code, FailureReason.PROCESSING_FAILURE)
