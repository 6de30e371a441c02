"""Instances already stored: found by SOP Instance UID and answered as duplicates, and a
re-send checked to be the same instance (identity and pixels, see ``fingerprint``)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Select, select
from sqlalchemy.orm import Session

from models.pixels import read_dicom
from service.active_model import ModelKey
from service.db.tables import AnalysisJob, Instance, Study
from service.ingest.errors import InstanceConflict
from service.ingest.fingerprint import same_decoded_pixels
from service.ingest.reading import ParsedFile
from service.ingest.schemas import UploadedInstance
from service.storage import BlobStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fingerprint:
    """What a stored instance is compared on when its SOP Instance UID is sent again."""

    identity_sha256: str | None
    content_sha256: str | None
    transfer_syntax_uid: str | None
    blob_key: str


@dataclass(frozen=True)
class Stored:
    """What one file became: new or existing rows."""

    entry: UploadedInstance
    study_id: uuid.UUID
    source_kind: str
    fingerprint: Fingerprint | None = None
    jobs: tuple[tuple[uuid.UUID, str], ...] = ()  # new jobs (id, queue): one per routed model


def find_instances(db: Session, sop_instance_uids: Sequence[str], model: ModelKey | None = None) -> dict[str, Stored]:
    """The stored instances among these SOP Instance UIDs, in one query (see ``find_instance``)."""
    found: dict[str, Stored] = {}
    uids = sorted(set(sop_instance_uids))
    for row in db.execute(_instance_query(model).where(Instance.sop_instance_uid.in_(uids))):
        found[row.sop_instance_uid] = _as_duplicate(row)
    return found


def find_instance(db: Session, sop_instance_uid: str, model: ModelKey | None = None) -> Stored | None:
    """The stored instance with this SOP Instance UID, answered as a duplicate with ``model``'s
    job (the active model's; ``None``: the first job made for it)."""
    row = db.execute(_instance_query(model).where(Instance.sop_instance_uid == sop_instance_uid)).first()
    return None if row is None else _as_duplicate(row)


def _instance_query(model: ModelKey | None) -> Select[*tuple[Any, ...]]:
    job = select(AnalysisJob.id).where(AnalysisJob.instance_id == Instance.id)
    if model is not None:
        job = job.where(AnalysisJob.model_name == model.name, AnalysisJob.model_version == model.version)
    job_id = job.order_by(AnalysisJob.created_at, AnalysisJob.id).limit(1).scalar_subquery()
    return (
        select(Instance.id, Instance.study_id, Instance.source_kind, Instance.blob_key, Instance.not_applicable_reason,
               Instance.identity_sha256, Instance.content_sha256, Instance.transfer_syntax_uid,
               Instance.sop_instance_uid, Study.study_instance_uid, job_id.label("job_id"))
        .join(Study, Study.id == Instance.study_id)
    )  # fmt: skip


def _as_duplicate(row: Row[Any]) -> Stored:
    entry = UploadedInstance(
        sop_instance_uid=row.sop_instance_uid,
        study_instance_uid=row.study_instance_uid,
        instance_id=row.id,
        job_id=row.job_id,
        duplicate=True,
        not_applicable_reason=row.not_applicable_reason,
    )
    fingerprint = Fingerprint(row.identity_sha256, row.content_sha256, row.transfer_syntax_uid, row.blob_key)
    return Stored(entry, row.study_id, row.source_kind, fingerprint)


def check_same_instance(existing: Stored, parsed: ParsedFile, store: BlobStore) -> None:
    """A re-send must be the instance already stored: same identity, same pixels (see fingerprint)."""
    stored, meta = existing.fingerprint, parsed.meta
    if stored is None or stored.identity_sha256 is None or stored.content_sha256 is None:
        return  # stored before fingerprints were kept: nothing to compare against
    if stored.identity_sha256 != meta.identity_sha256:
        raise InstanceConflict(
            "(0008,0018) SOP Instance UID is already stored with other patient or study attributes; "
            "nothing was changed (correct it at the source and send it with a new SOP Instance UID)"
        )
    if stored.content_sha256 == meta.content_sha256:
        return
    recoded = meta.source_kind == "dicom" and stored.transfer_syntax_uid != meta.transfer_syntax_uid
    if recoded and same_decoded_pixels(_stored_bytes(store, stored.blob_key), read_dicom(parsed.data)):
        return  # the same pixels in another transfer syntax
    raise InstanceConflict(
        "(0008,0018) SOP Instance UID is already stored with other pixel data; nothing was changed "
        "(send the new image with a new SOP Instance UID)"
    )


def _stored_bytes(store: BlobStore, key: str) -> bytes:
    """The stored file, or nothing when it is gone (then nothing can prove the pixels equal)."""
    try:
        return store.get(key)
    except FileNotFoundError:
        logger.error("stored file of a re-sent instance is missing")
        return b""
