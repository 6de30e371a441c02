"""Results as DICOM: a settled study gets an SR, a Secondary Capture, a presentation state and a
Parametric Map of the heatmap, pushed to each destination with retries and a delivery record,
and its turnaround recorded."""

from __future__ import annotations

import io
import shutil
import socket
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from helpers import StartListener, bearer, make_mr_dicom, make_settings, mr_slice, run_queued, structured_report, upload
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from pydicom.uid import ComprehensiveSRStorage as COMPREHENSIVE_SR
from pynetdicom import AE, evt
from sqlalchemy import delete, select, update

from models.inference import Classifier
from models.render import heatmap_rgb
from service.app import create_app
from service.db.session import unit_of_work
from service.db.tables import (
    AnalysisResult,
    Delivery,
    DeliveryStatus,
    Instance,
    ResultKind,
    ResultObject,
    Role,
    SliceScore,
    Study,
    utcnow,
)
from service.metrics import refresh_queue_gauges
from service.results.deliver import backoff, deliver_due
from service.results.publish import publish_due
from service.settings import Destination, Settings
from service.storage import BlobStore
from worker.series import sweep_quiet_series

STUDY = "1.2.826.0.1.3680043.8.498.77"
SERIES = f"{STUDY}.1"
FRAME_OF_REFERENCE = f"{STUDY}.2"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
GSPS_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"
PM_STORAGE = "1.2.840.10008.5.1.4.1.1.30"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def analyse_study(settings: Settings, tokens: dict[Role, str], classifier: Classifier) -> None:
    geometry = {"FrameOfReferenceUID": FRAME_OF_REFERENCE}
    slices = [mr_slice(STUDY, SERIES, n, lesion=n in (2, 3, 4), **geometry) for n in range(1, 6)]
    with TestClient(create_app(settings)) as client:
        upload(client, tokens[Role.ingest], *slices)
    run_queued(settings, classifier)
    sweep_quiet_series(settings)


def objects(settings: Settings) -> list[ResultObject]:
    with unit_of_work(settings) as db:
        rows = list(db.scalars(select(ResultObject).order_by(ResultObject.generation, ResultObject.kind)))
        db.expunge_all()
        return rows


def deliveries(settings: Settings) -> list[Delivery]:
    with unit_of_work(settings) as db:
        rows = list(db.scalars(select(Delivery).order_by(Delivery.destination)))
        db.expunge_all()
        return rows


def study_row(settings: Settings) -> Study:
    with unit_of_work(settings) as db:
        study = db.scalars(select(Study).where(Study.study_instance_uid == STUDY)).one()
        db.expunge(study)
        return study


def test_a_settled_study_gets_four_objects_served_by_the_api(
    settings: Settings, tokens: dict[Role, str], classifier: Classifier
) -> None:
    analyse_study(settings, tokens, classifier)
    made = objects(settings)
    assert sorted(o.kind for o in made) == sorted(ResultKind)
    assert {o.generation for o in made} == {1}
    study = study_row(settings)
    assert study.results_due_at is None and study.results_generation == 1
    # No destination configured: "stored at every destination" is true once stored here.
    assert study.turnaround_seconds is not None and study.turnaround_seconds >= 0

    with TestClient(create_app(settings)) as client:
        listing = client.get(f"/api/v1/studies/{STUDY}/results", headers=bearer(tokens[Role.reader])).json()
        assert listing["generation"] == 1 and len(listing["objects"]) == 4
        by_kind = {o["kind"]: o for o in listing["objects"]}
        sr_file = client.get(by_kind["sr"]["url"], headers=bearer(tokens[Role.reader]))
        assert sr_file.headers["content-type"] == "application/dicom"
        assert client.get(by_kind["sr"]["url"]).status_code == 401
        assert client.get(by_kind["sr"]["url"], headers=bearer(tokens[Role.ingest])).status_code == 403
        missing = client.get("/api/v1/result-objects/1.2.3.4", headers=bearer(tokens[Role.reader]))
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "result_object_not_found"

    sr = pydicom.dcmread(io.BytesIO(sr_file.content))
    assert sr.SOPClassUID in (COMPREHENSIVE_SR, "1.2.840.10008.5.1.4.1.1.88.34")  # Comprehensive (3D) SR
    assert sr.StudyInstanceUID == STUDY and sr.SOPInstanceUID.startswith("2.25.")
    with unit_of_work(settings) as db:
        key_sop = db.scalar(select(Instance.sop_instance_uid).join(Study, Study.key_instance_id == Instance.id))
    assert key_sop is not None and key_sop.encode() in sr_file.content  # the SR references the key slice
    assert {o.sop_class_uid for o in made} >= {SC_STORAGE, GSPS_STORAGE, PM_STORAGE}


def test_an_organisation_root_is_used_when_configured(
    settings: Settings, tokens: dict[Role, str], classifier: Classifier
) -> None:
    rooted = settings.model_copy(update={"uid_root": "1.2.999.1"})
    analyse_study(rooted, tokens, classifier)
    assert all(o.sop_instance_uid.startswith("1.2.999.1.") for o in objects(rooted))
    assert all(len(o.sop_instance_uid) <= 64 for o in objects(rooted))


def test_unreachable_destination_is_retried_with_backoff_then_marked_failed(
    settings: Settings, tokens: dict[Role, str], classifier: Classifier
) -> None:
    down = Destination(name="pacs", kind="dimse", ae_title="PACS", host="127.0.0.1", port=closed_port())
    web = Destination(name="web", kind="stow", url=f"http://127.0.0.1:{closed_port()}/dicom-web")
    pushing = settings.model_copy(
        update={"result_destinations": [down, web], "delivery_max_attempts": 2, "delivery_backoff_seconds": 60.0}
    )
    analyse_study(pushing, tokens, classifier)  # the sweep publishes and makes the first attempt
    first = deliveries(pushing)
    assert len(first) == 8 and {d.destination for d in first} == {"pacs", "web"}
    assert all(d.status is DeliveryStatus.pending and d.attempts == 1 for d in first)
    assert {d.last_status for d in first} == {"no association", "unreachable"}
    assert study_row(pushing).turnaround_seconds is None  # not delivered anywhere yet

    assert deliver_due(pushing) == 0  # backing off: nothing is due yet
    with unit_of_work(pushing) as db:
        db.execute(update(Delivery).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    assert deliver_due(pushing) == 8
    assert all(d.status is DeliveryStatus.failed and d.attempts == 2 for d in deliveries(pushing))

    with TestClient(create_app(pushing)) as client:
        requeue = client.post(f"/api/v1/studies/{STUDY}/results/redeliver", headers=bearer(tokens[Role.admin]))
        assert requeue.json() == {"requeued": 8}
        assert (
            client.post(f"/api/v1/studies/{STUDY}/results/redeliver", headers=bearer(tokens[Role.reader])).status_code
            == 403
        )
        listing = client.get(f"/api/v1/studies/{STUDY}/results", headers=bearer(tokens[Role.reader])).json()
    assert {d["status"] for o in listing["objects"] for d in o["deliveries"]} == {"pending"}


def test_objects_reach_a_real_c_store_scp_and_the_turnaround_is_recorded(
    settings: Settings,
    tokens: dict[Role, str],
    classifier: Classifier,
    tmp_path: Path,
    sqlite_template: Path,
    start_listener: StartListener,
) -> None:

    (tmp_path / "pacs").mkdir()
    shutil.copy(sqlite_template, tmp_path / "pacs" / "sightline.db")
    pacs_settings = make_settings(tmp_path / "pacs")
    pacs_port = start_listener(pacs_settings)  # another Sightline's listener, with its own database, as the PACS
    pacs = Destination(name="pacs", kind="dimse", ae_title="SIGHTLINE", host="127.0.0.1", port=pacs_port)
    pushing = settings.model_copy(update={"result_destinations": [pacs]})
    analyse_study(pushing, tokens, classifier)

    sent = deliveries(pushing)
    assert [(d.status, d.last_status) for d in sent] == [(DeliveryStatus.delivered, "0x0000")] * 4
    with unit_of_work(pacs_settings) as db:
        received = set(db.scalars(select(Instance.sop_instance_uid)))
    assert received == {o.sop_instance_uid for o in objects(pushing)}
    study = study_row(pushing)
    assert study.results_delivered_at is not None and study.turnaround_seconds is not None

    with TestClient(create_app(pushing)) as client:
        refresh_queue_gauges(pushing)
        metrics = client.get("/metrics").text
    assert "sightline_study_turnaround_seconds_count 1.0" in metrics


def test_a_late_instance_makes_a_new_generation_and_supersedes_pending_deliveries(
    settings: Settings, tokens: dict[Role, str], classifier: Classifier
) -> None:
    down = Destination(name="pacs", kind="dimse", ae_title="PACS", host="127.0.0.1", port=closed_port())
    pushing = settings.model_copy(update={"result_destinations": [down], "delivery_backoff_seconds": 600.0})
    analyse_study(pushing, tokens, classifier)
    with TestClient(create_app(pushing)) as client:
        upload(client, tokens[Role.ingest], mr_slice(STUDY, SERIES, 6, FrameOfReferenceUID=FRAME_OF_REFERENCE))
    run_queued(pushing, classifier)
    sweep_quiet_series(pushing)

    made = objects(pushing)
    assert [o.generation for o in made].count(2) == 4 and study_row(pushing).results_generation == 2
    old = {o.id for o in made if o.generation == 1}
    for delivery in deliveries(pushing):
        if delivery.result_object_id in old:
            assert delivery.status is DeliveryStatus.failed
            assert delivery.last_error == "superseded by result generation 2"
        else:
            assert delivery.status is DeliveryStatus.pending


def test_the_parametric_map_matches_the_overlay_map_of_the_key_frame(
    settings: Settings, tokens: dict[Role, str], classifier: Classifier
) -> None:
    analyse_study(settings, tokens, classifier)
    pm_row = next(o for o in objects(settings) if o.kind is ResultKind.pm)
    assert pm_row.sop_class_uid == PM_STORAGE
    with unit_of_work(settings) as db:
        key = db.scalars(select(Instance).join(Study, Study.key_instance_id == Instance.id)).one()
        result = db.scalars(select(AnalysisResult).where(AnalysisResult.instance_id == key.id)).one()
        heatmap = BlobStore(settings.storage_dir).get(result.heatmap_key)
        pm = pydicom.dcmread(io.BytesIO(BlobStore(settings.storage_dir).get(pm_row.blob_key)))
    assert pm.SeriesNumber == 9904 and pm.SeriesDescription == "Sightline AI heatmap (research use)"
    assert pm.FrameOfReferenceUID == FRAME_OF_REFERENCE
    source = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert source.ReferencedSOPInstanceUID == key.sop_instance_uid
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    relevance = pm.pixel_array * float(mapping.RealWorldValueSlope)
    assert relevance.max() == pytest.approx(1.0)  # normalised to its maximum, as the heatmap is
    # The stored heatmap PNG is the same map coloured by JET: recolour the PM and compare.
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(heatmap, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    recoloured = heatmap_rgb(relevance.astype(np.float32))
    assert np.abs(recoloured.astype(int) - expected.astype(int)).max() <= 8  # one 8-bit level of the map


def test_without_a_stored_map_only_the_parametric_map_is_skipped(
    settings: Settings, tokens: dict[Role, str], classifier: Classifier
) -> None:
    analyse_study(settings, tokens, classifier)
    with unit_of_work(settings) as db:  # a result from before raw maps were stored per frame
        db.execute(delete(SliceScore))
        db.execute(update(Study).values(results_due_at=utcnow()))
    assert publish_due(settings) == 1
    second = [o.kind for o in objects(settings) if o.generation == 2]
    assert sorted(second) == [ResultKind.pr, ResultKind.sc, ResultKind.sr]


def test_a_study_without_an_applicable_dicom_key_image_gets_no_objects(
    settings: Settings, tokens: dict[Role, str], classifier: Classifier
) -> None:
    with TestClient(create_app(settings)) as client:
        upload(client, tokens[Role.ingest], structured_report(STUDY))
    assert publish_due(settings) == 0
    assert objects(settings) == []


def test_backoff_doubles_up_to_the_maximum(settings: Settings) -> None:
    tuned = settings.model_copy(update={"delivery_backoff_seconds": 5.0, "delivery_backoff_max_seconds": 30.0})
    assert [backoff(tuned, n).total_seconds() for n in (1, 2, 3, 4, 5)] == [5.0, 10.0, 20.0, 30.0, 30.0]


@pytest.mark.parametrize(
    "destination",
    [
        {"name": "x", "kind": "dimse", "host": "h", "port": 104},
        {"name": "x", "kind": "stow", "url": "ftp://pacs"},
        {"name": "bad name", "kind": "stow", "url": "http://pacs"},
    ],
)
def test_incomplete_destinations_are_refused_at_start(settings: Settings, destination: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="destination"):
        Settings(result_destinations=[destination])  # type: ignore[list-item]


def test_a_destination_refusing_one_sop_class_gets_the_others(
    settings: Settings, tokens: dict[Role, str], classifier: Classifier
) -> None:
    """A PACS that never negotiates Parametric Map storage (pynetdicom's own SCP here): the PM
    fails at once, without retries, and the SR, SC and PR are still delivered."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    scp = AE(ae_title="OLDPACS")
    for sop_class in (
        Comprehensive3DSRStorage,
        SecondaryCaptureImageStorage,
        GrayscaleSoftcopyPresentationStateStorage,
    ):
        scp.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        port = int(server.server_address[1])
        old = Destination(name="old", kind="dimse", ae_title="OLDPACS", host="127.0.0.1", port=port)
        analyse_study(settings.model_copy(update={"result_destinations": [old]}), tokens, classifier)
    finally:
        server.shutdown()
    kinds = {o.id: o.kind for o in objects(settings)}
    outcome = {kinds[d.result_object_id]: (d.status, d.attempts, d.last_status) for d in deliveries(settings)}
    assert outcome.pop(ResultKind.pm) == (DeliveryStatus.failed, 1, "no context")
    assert set(outcome.values()) == {(DeliveryStatus.delivered, 1, "0x0000")}
    assert len(received) == 3


def test_a_key_image_without_a_plane_gets_every_object_but_the_map(
    settings: Settings, tokens: dict[Role, str], classifier: Classifier
) -> None:
    """No Image Position/Orientation: the PM has no plane to lie on; the others do not need one,
    and publishing never blocks on it (it used to raise inside highdicom on every sweep)."""
    with TestClient(create_app(settings)) as client:
        upload(client, tokens[Role.ingest], make_mr_dicom(lesion=(60, 60, 20), seed=5))
    run_queued(settings, classifier)
    sweep_quiet_series(settings)
    assert sorted(o.kind for o in objects(settings)) == [ResultKind.pr, ResultKind.sc, ResultKind.sr]
    with unit_of_work(settings) as db:
        assert db.scalar(select(Study.results_due_at)) is None
