"""UIDs for Sightline results: our own root or the UUID-derived 2.25 form (PS3.5 §9, §B.2).

Never pydicom's or highdicom's organisation roots: objects we create must not claim
to come from those organisations.
"""

import re
import uuid

from pydicom import Dataset
from pydicom.sequence import Sequence

_MAX_UID = 64
_MIN_SUFFIX = 12  # digits of randomness left after a configured root
_VALID_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
FOREIGN_ROOTS = ("1.2.826.0.1.3680043.8.498.", "1.2.826.0.1.3680043.10.511.")  # pydicom, highdicom


def new_uid(root: str | None = None) -> str:
    """``2.25.<uuid4 as decimal>`` when ``root`` is None, else ``root.<random digits>`` (≤ 64 chars)."""
    suffix = str(uuid.uuid4().int)
    if root is None:
        return f"2.25.{suffix}"
    if not _VALID_UID.fullmatch(root):
        raise ValueError(f"uid root {root!r} is not a valid UID root (digits and dots, no leading zeros)")
    room = _MAX_UID - len(root) - 1
    if room < _MIN_SUFFIX:
        raise ValueError(f"uid root {root!r} is too long: UIDs are at most {_MAX_UID} characters")
    return f"{root}.{suffix[:room]}"


def uids_in(dataset: Dataset) -> frozenset[str]:
    """Every UID value in ``dataset`` (nested too): those of a source must never be rewritten."""
    found: set[str] = set()
    for element in dataset.iterall():
        if element.VR == "UI" and element.value:
            found.update(str(v) for v in (element.value if element.VM > 1 else [element.value]))
    return frozenset(found)


def replace_foreign_uids(dataset: Dataset, root: str | None = None, keep: frozenset[str] = frozenset()) -> None:
    """Swap UIDs that a library generated under its own root (e.g. highdicom's) for ours, in place.

    UIDs in ``keep`` (the source's, which may well carry pydicom's root) stay as they are; the
    same foreign UID gets the same replacement everywhere, so references stay consistent.
    """
    mapping: dict[str, str] = {}

    def _swap(value: str) -> str:
        if value in keep or not value.startswith(FOREIGN_ROOTS):
            return value
        return mapping.setdefault(value, new_uid(root))

    def _walk(ds: Dataset) -> None:
        for element in ds:
            if element.VR == "SQ":
                items: Sequence = element.value
                for item in items:
                    _walk(item)
            elif element.VR == "UI" and element.value:
                if element.VM > 1:
                    element.value = [_swap(str(v)) for v in element.value]
                else:
                    element.value = _swap(str(element.value))

    _walk(dataset)
    if hasattr(dataset, "file_meta"):
        _walk(dataset.file_meta)
