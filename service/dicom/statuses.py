"""Named DIMSE statuses: never a bare hex literal in a handler.

Storage statuses are PS3.4 Table B.2-1 (Annex B.2.3); the general ones are PS3.7 Annex C,
which C-STORE may also return (PS3.7 9.1.1.1.9); C-ECHO's success is PS3.7 9.1.5.1.4.
"""

from __future__ import annotations

from enum import IntEnum


class EchoStatus(IntEnum):
    """C-ECHO (Verification, PS3.4 Annex A)."""

    SUCCESS = 0x0000


class StoreStatus(IntEnum):
    """C-STORE (Storage Service Class, PS3.4 Annex B.2.3)."""

    SUCCESS = 0x0000
    # PS3.7 C.5.6: "the SOP Instance UID is already registered": here, with other content.
    DUPLICATE_SOP_INSTANCE = 0x0111
    # PS3.4 B.2.3 A7xx: the instance could not be stored now (database, disk, size limit).
    OUT_OF_RESOURCES = 0xA700
    # PS3.4 B.2.3 A9xx: the data set is not an instance of the SOP Class of the request.
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # PS3.4 B.2.3 Cxxx: the data set cannot be read or is inconsistent.
    CANNOT_UNDERSTAND = 0xC000
