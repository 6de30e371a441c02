"""Why an upload is refused. Messages name the file (by index) and the attribute, never patient data."""

from __future__ import annotations

from service.errors import Conflict, PayloadTooLarge, SightlineError, UnprocessableInput


class EmptyFile(UnprocessableInput):
    code = "empty_file"


class InvalidUid(UnprocessableInput):
    """A missing or malformed UID (PS3.5 §9.1: digits and dots, no leading zeros, at most 64)."""

    code = "invalid_uid"


class StudyPatientMismatch(Conflict):
    """The Study Instance UID is stored for another patient: merging would mix two patients."""

    code = "study_patient_mismatch"


class InstanceConflict(Conflict):
    """The SOP Instance UID is stored with other pixels or patient attributes: never replaced silently."""

    code = "instance_conflict"


class UploadTooLarge(PayloadTooLarge):
    code = "payload_too_large"


class RejectedFile(SightlineError):
    """One file of a request was refused: keeps the cause's status and code, names the file."""

    def __init__(self, message: str, *, status_code: int, code: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
