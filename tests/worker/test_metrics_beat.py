"""The beat's in-process maintenance: each run counted by outcome, a run still going when its
entry falls due again is skipped (not stacked), an error never escapes to the scheduler."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from service.queue import RECONCILE_TASK
from service.settings import Settings, get_settings
from worker import beat
from worker.app import celery_app


def runs(task: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("sightline_maintenance_runs_total", {"task": task, "outcome": outcome}) or 0.0


@pytest.fixture()
def scheduler(tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[beat.LocalScheduler]:
    monkeypatch.setenv("SIGHTLINE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("SIGHTLINE_BROKER_URL", settings.broker_url)
    get_settings.cache_clear()
    yield beat.LocalScheduler(app=celery_app, schedule_filename=str(tmp_path / "schedule"))
    get_settings.cache_clear()


def test_the_reconciler_runs_in_process_and_is_counted(scheduler: beat.LocalScheduler) -> None:
    ok, last = (
        runs(RECONCILE_TASK, "ok"),
        REGISTRY.get_sample_value("sightline_maintenance_last_success_timestamp_seconds", {"task": RECONCILE_TASK}),
    )
    thread = scheduler.start_run(RECONCILE_TASK)
    assert thread is not None
    thread.join(30)
    assert runs(RECONCILE_TASK, "ok") == ok + 1
    stamp = REGISTRY.get_sample_value("sightline_maintenance_last_success_timestamp_seconds", {"task": RECONCILE_TASK})
    assert stamp is not None and stamp != last


def test_an_overlapping_run_is_skipped_and_an_error_is_counted(
    scheduler: beat.LocalScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def slow_then_broken(_: Settings) -> None:
        release.wait(30)
        raise RuntimeError("database went away")

    monkeypatch.setitem(beat.MAINTENANCE, RECONCILE_TASK, slow_then_broken)
    skipped, errors = runs(RECONCILE_TASK, "skipped"), runs(RECONCILE_TASK, "error")
    first = scheduler.start_run(RECONCILE_TASK)
    assert first is not None
    assert scheduler.start_run(RECONCILE_TASK) is None
    assert runs(RECONCILE_TASK, "skipped") == skipped + 1
    release.set()
    first.join(30)
    assert runs(RECONCILE_TASK, "error") == errors + 1
    assert scheduler.start_run("sightline.unknown") is None


def test_the_schedule_sends_nothing_and_never_expires() -> None:
    assert celery_app.conf.beat_scheduler == "worker.beat:LocalScheduler"
    for entry in celery_app.conf.beat_schedule.values():
        assert entry["task"] in beat.MAINTENANCE
        assert "options" not in entry  # no queue, no expiry
