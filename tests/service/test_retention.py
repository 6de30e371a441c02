"""Retention: ``sightline purge`` and ``sightline blobs sweep`` on a real SQLite database and blob store.

Blobs are content-addressed, so two studies can share one file: purging one of them must
leave the file the other still needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import String, func, select

from service.db.session import session_factory, unit_of_work
from service.db.tables import (
    AnalysisJob,
    AnalysisResult,
    Base,
    Instance,
    ResultKind,
    ResultObject,
    Series,
    Study,
    utcnow,
)
from service.retention import BLOB_COLUMNS, delete_blobs, observe, purge, sweep
from service.settings import Settings
from service.storage import BlobStore

OLD = timedelta(days=120)


def _store(settings: Settings) -> BlobStore:
    return BlobStore(settings.storage_dir)


def _age(store: BlobStore, key: str, by: timedelta) -> None:
    """Make a blob file look written ``by`` ago."""
    then = time.time() - by.total_seconds()
    os.utime(store.path_for(key), (then, then))


def make_study(settings: Settings, blobs: list[bytes], *, received_ago: timedelta) -> str:
    """A study with one instance of ``blobs[0]``; with more blobs, a result (blobs[1]) and an SR (blobs[2])."""
    store = _store(settings)
    keys = [store.put(data)[0] for data in blobs]
    for key in keys:  # files written when the study arrived
        _age(store, key, received_ago)
    uid = f"2.25.{uuid.uuid4().int}"
    with unit_of_work(settings) as db:
        study = Study(
            id=uuid.uuid4(), study_instance_uid=uid, received_at=utcnow() - received_ago,
            patient_name="RETENTION^PATIENT", patient_id="RET-0001",
        )  # fmt: skip
        series = Series(study=study, series_instance_uid=f"{uid}.1")
        instance = Instance(
            series=series, study_id=study.id, sop_instance_uid=f"{uid}.1.1", source_kind="dicom",
            blob_key=keys[0], blob_size=len(blobs[0]),
        )  # fmt: skip
        db.add_all([study, series, instance])
        db.flush()
        if len(keys) > 1:
            job = AnalysisJob(instance_id=instance.id)
            db.add(job)
            db.flush()
            db.add(_result(job, instance, keys[1]))
        if len(keys) > 2:
            db.add(_result_object(study, keys[2], len(blobs[2])))
    return uid


def _result_object(study: Study, key: str, size: int) -> ResultObject:
    uid = study.study_instance_uid
    return ResultObject(
        study_id=study.id, generation=1, kind=ResultKind.sr, sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
        sop_instance_uid=f"{uid}.9", series_instance_uid=f"{uid}.8", blob_key=key, blob_size=size,
    )  # fmt: skip


def _result(job: AnalysisJob, instance: Instance, key: str) -> AnalysisResult:
    return AnalysisResult(
        job_id=job.id, instance_id=instance.id, model_name="m", model_version="1", model_sha256="0" * 64,
        cam_method="gradcam", label="glioma", tumour_score=0.9, probabilities={"glioma": 0.9}, original_key=key,
        heatmap_key=key, overlay_key=key, contour_key=key, map_key=key, outline_key=key, timings_ms={},
    )  # fmt: skip


def _studies(settings: Settings) -> set[str]:
    with session_factory(settings)() as db:
        return set(db.scalars(select(Study.study_instance_uid)))


def _cutoff(days: int = 90) -> datetime:
    return utcnow() - timedelta(days=days)


def test_every_key_column_of_the_schema_is_known_to_retention() -> None:
    key_columns = {
        f"{table.name}.{column.name}"
        for table in Base.metadata.tables.values()
        for column in table.columns
        if column.name.endswith("_key") and isinstance(column.type, String)
    }
    assert key_columns == {f"{column.class_.__tablename__}.{column.key}" for column in BLOB_COLUMNS}


def test_purge_deletes_old_studies_and_their_unshared_blobs(settings: Settings) -> None:
    store = _store(settings)
    old = make_study(settings, [b"old image", b"old heatmap", b"old sr"], received_ago=OLD)
    recent = make_study(settings, [b"recent image"], received_ago=timedelta(days=1))
    studies, report = purge(store, session_factory(settings), cutoff=_cutoff(), dry_run=False)
    assert studies == 1 and _studies(settings) == {recent}
    assert report.deleted == 3 and report.bytes == len(b"old image" + b"old heatmap" + b"old sr")
    for data in (b"old image", b"old heatmap", b"old sr"):
        assert not store.exists(store.key_for(data))
    assert store.get(store.key_for(b"recent image")) == b"recent image"
    with session_factory(settings)() as db:  # the rows cascaded
        assert db.scalar(select(func.count()).select_from(Instance)) == 1
        assert db.scalar(select(func.count()).select_from(AnalysisResult)) == 0
        assert db.scalar(select(func.count()).select_from(ResultObject)) == 0
    assert old not in _studies(settings)


def test_purge_keeps_a_blob_another_study_still_uses(settings: Settings) -> None:
    store = _store(settings)
    make_study(settings, [b"same bytes", b"old only"], received_ago=OLD)
    kept = make_study(settings, [b"other image", b"same bytes"], received_ago=timedelta(days=2))
    studies, report = purge(store, session_factory(settings), cutoff=_cutoff(), dry_run=False)
    assert studies == 1 and _studies(settings) == {kept}
    assert report.deleted == 1 and not store.exists(store.key_for(b"old only"))
    assert store.get(store.key_for(b"same bytes")) == b"same bytes"  # the recent study's result needs it


def test_purge_leaves_a_file_stored_again_within_the_grace_to_the_sweeper(settings: Settings) -> None:
    """An ingest of the same bytes may be in flight (file touched, row not committed yet)."""
    store = _store(settings)
    make_study(settings, [b"old image", b"old heatmap"], received_ago=OLD)
    store.put(b"old image")  # re-stored just now by an upload whose transaction is still open
    studies, report = purge(store, session_factory(settings), cutoff=_cutoff(), dry_run=False)
    assert (studies, report.deleted, report.kept) == (1, 1, 1)
    assert store.exists(store.key_for(b"old image")) and not store.exists(store.key_for(b"old heatmap"))


def test_purge_dry_run_deletes_nothing(settings: Settings) -> None:
    store = _store(settings)
    old = make_study(settings, [b"old image", b"old heatmap"], received_ago=OLD)
    studies, report = purge(store, session_factory(settings), cutoff=_cutoff(), dry_run=True)
    assert (studies, report.deleted, report.bytes) == (1, 2, len(b"old image" + b"old heatmap"))
    assert _studies(settings) == {old}
    assert store.exists(store.key_for(b"old image")) and store.exists(store.key_for(b"old heatmap"))


def test_sweep_deletes_old_orphans_and_keeps_young_and_referenced_files(settings: Settings) -> None:
    store = _store(settings)
    make_study(settings, [b"referenced"], received_ago=timedelta(days=1))
    _age(store, store.key_for(b"referenced"), timedelta(days=3))
    old_orphan, _ = store.put(b"old orphan")
    _age(store, old_orphan, timedelta(hours=2))
    young_orphan, _ = store.put(b"in flight")  # as if a transaction still open had just written it
    report = sweep(store, session_factory(settings), grace=timedelta(hours=1), dry_run=False)
    assert (report.deleted, report.bytes) == (1, len(b"old orphan"))
    assert not store.exists(old_orphan)
    assert store.exists(young_orphan) and store.exists(store.key_for(b"referenced"))


def test_sweep_dry_run_deletes_nothing(settings: Settings) -> None:
    store = _store(settings)
    orphan, _ = store.put(b"old orphan")
    _age(store, orphan, timedelta(days=1))
    report = sweep(store, session_factory(settings), grace=timedelta(hours=1), dry_run=True)
    assert (report.deleted, report.bytes) == (1, len(b"old orphan")) and store.exists(orphan)


def test_a_blob_stored_again_after_it_was_judged_an_orphan_survives(settings: Settings) -> None:
    store = _store(settings)
    restored, _ = store.put(b"stored again by an ingest in flight")
    referenced_now, _ = store.put(b"committed meanwhile")
    orphan, _ = store.put(b"still an orphan")
    seen = observe(store, [restored, referenced_now, orphan])
    store.put(b"stored again by an ingest in flight")  # put touches the existing file
    make_study(settings, [b"committed meanwhile"], received_ago=timedelta(days=1))
    report = delete_blobs(store, session_factory(settings), seen, dry_run=False)
    assert (report.deleted, report.kept) == (1, 2)
    assert store.exists(restored) and store.exists(referenced_now) and not store.exists(orphan)
    assert sorted(p.name for p in store.root.rglob(".tomb-*")) == []  # no tomb left behind


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(SIGHTLINE_DATABASE_URL=settings.database_url, SIGHTLINE_STORAGE_DIR=str(settings.storage_dir))
    command = [sys.executable, "-m", "service.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_cli_purge_and_sweep_print_counts_and_bytes(settings: Settings) -> None:
    store = _store(settings)
    make_study(settings, [b"x" * 2048], received_ago=OLD)
    dry = _cli(settings, "purge", "--older-than", "90d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would purge 1 studies received before ")
    assert dry.stdout.endswith("UTC; would delete 1 unreferenced blobs (2.0 KiB)\n")
    done = _cli(settings, "purge", "--older-than", "90d")
    assert done.returncode == 0 and "purged 1 studies" in done.stdout and "deleted 1 unreferenced blobs" in done.stdout
    orphan, _ = store.put(b"orphan")
    _age(store, orphan, timedelta(hours=3))
    swept = _cli(settings, "blobs", "sweep", "--grace", "2h")
    assert swept.returncode == 0, swept.stderr
    assert swept.stdout == "deleted 1 unreferenced blobs older than 2:00:00 (6 B)\n"
    logs = done.stderr + swept.stderr
    assert '"message": "retention purge"' in logs and '"studies": 1' in logs and '"deleted": 1' in logs
    assert '"message": "blob sweep"' in logs
    assert "RETENTION" not in logs and "RET-0001" not in logs  # no patient data in the logs


@pytest.mark.integration
def test_purge_keeps_a_shared_blob_on_postgresql(pg_settings: Settings) -> None:
    store = _store(pg_settings)
    make_study(pg_settings, [b"pg shared", b"pg old only", b"pg old sr"], received_ago=OLD)
    kept = make_study(pg_settings, [b"pg recent", b"pg shared"], received_ago=timedelta(days=2))
    studies, report = purge(store, session_factory(pg_settings), cutoff=_cutoff(), dry_run=False)
    assert studies == 1 and _studies(pg_settings) == {kept} and report.deleted == 2
    assert store.get(store.key_for(b"pg shared")) == b"pg shared"
    assert not store.exists(store.key_for(b"pg old only")) and not store.exists(store.key_for(b"pg old sr"))
