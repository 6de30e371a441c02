"""One instance stored on its own, as C-STORE and STOW-RS need: refusals are values, not raises."""

from __future__ import annotations

from helpers import dicom_variant, make_mr_dicom, mr_slice
from sqlalchemy import func, select

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance
from service.ingest.single import store_instance
from service.settings import Settings


def test_an_instance_is_stored_once_and_a_changed_resend_is_refused(settings: Settings) -> None:
    data = mr_slice("1.2.826.0.1.9001", "1.2.826.0.1.9001.1", 1)
    first, again = store_instance(settings, data), store_instance(settings, data)
    assert first.stored and first.status_code == 200 and first.entry is not None and not first.entry.duplicate
    assert again.stored and again.entry is not None and again.entry.duplicate
    changed = store_instance(settings, dicom_variant(data, PatientID="OTHER"))
    assert (changed.stored, changed.status_code, changed.code) == (False, 409, "instance_conflict")
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).select_from(Instance)) == 1
        assert db.scalar(select(func.count()).select_from(AnalysisJob)) == 1


def test_bad_instances_come_back_as_refusals_and_store_nothing(settings: Settings) -> None:
    truncated = store_instance(settings, make_mr_dicom()[:300])
    assert (truncated.stored, truncated.status_code, truncated.code) == (False, 422, "unreadable_dicom")
    empty = store_instance(settings, b"")
    assert (empty.status_code, empty.code) == (422, "empty_file")
    png = store_instance(settings, b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert not png.stored and png.status_code in (415, 422)
    with unit_of_work(settings) as db:
        assert db.scalar(select(func.count()).select_from(Instance)) == 0
    assert not [p for p in settings.storage_dir.rglob("*") if p.is_file()]
