"""``sightline dicom-listener`` over real loopback associations: pynetdicom as the sender, then DCMTK."""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
import pytest
from helpers import BASIC_TEXT_SR, dicom_variant, make_mr_dicom, mr_slice, read_back, structured_report
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, MRImageStorage, RLELossless
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from sqlalchemy import func, select

from service.db.session import unit_of_work
from service.db.tables import AnalysisJob, Instance
from service.dicom import listener as listener_module
from service.dicom.contexts import VERIFICATION
from service.dicom.listener import NoDelayAssociationServer, make_listener
from service.dicom.statuses import EchoStatus, StoreStatus
from service.ingest.single import SingleStoreResult
from service.settings import Settings

CALLING_AE = "MODALITY"  # on the allow-list of conftest.py
DCMTK = shutil.which("echoscu") and shutil.which("storescu")


def associate(
    port: int, *, calling: str = CALLING_AE, syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)
) -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    for sop_class in (MRImageStorage, CTImageStorage, BASIC_TEXT_SR):
        ae.add_requested_context(sop_class, list(syntaxes))
    return ae.associate("127.0.0.1", port, ae_title="SIGHTLINE")


def store(port: int, *instances: bytes | Path, syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)) -> list[Dataset]:
    """C-STORE each instance on one association; the response datasets, in order."""
    assoc = associate(port, syntaxes=syntaxes)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(item if isinstance(item, Path) else read_back(item)) for item in instances]
    finally:
        assoc.release()


def counts(settings: Settings) -> tuple[int, int]:
    with unit_of_work(settings) as db:
        return (
            int(db.scalar(select(func.count()).select_from(Instance)) or 0),
            int(db.scalar(select(func.count()).select_from(AnalysisJob)) or 0),
        )


def blob_files(settings: Settings) -> list[Path]:
    return [path for path in settings.storage_dir.rglob("*") if path.is_file()]


def test_c_echo_succeeds(listener_port: int) -> None:
    assoc = associate(listener_port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == EchoStatus.SUCCESS
    assoc.release()


def test_a_calling_ae_title_off_the_allow_list_is_rejected_at_association(listener_port: int) -> None:
    assoc = associate(listener_port, calling="STRANGER")
    assert assoc.is_rejected and not assoc.is_established


def test_any_calling_ae_title_is_accepted_when_the_allow_list_is_empty(settings: Settings) -> None:
    server = make_listener(settings, "127.0.0.1", 0)
    assert isinstance(server, NoDelayAssociationServer) and server.ae.require_calling_aet == []
    server.server_close()


def test_accepted_sockets_get_tcp_nodelay(dicom_settings: Settings) -> None:
    server = make_listener(dicom_settings, "127.0.0.1", 0)
    try:
        client = socket.create_connection(server.server_address)
        accepted, _ = server.get_request()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        accepted.close()
        client.close()
    finally:
        server.server_close()


def test_an_mr_instance_is_stored_once_and_a_resend_succeeds_without_a_duplicate(
    listener_port: int, dicom_settings: Settings
) -> None:
    data = mr_slice("1.2.826.0.1.8001", "1.2.826.0.1.8001.1", 1)
    first, again = store(listener_port, data, data)
    assert (first.Status, again.Status) == (StoreStatus.SUCCESS, StoreStatus.SUCCESS)
    assert counts(dicom_settings) == (1, 1)
    with unit_of_work(dicom_settings) as db:
        row = db.scalars(select(Instance)).one()
        assert (row.sop_instance_uid, row.sop_class_uid) == ("1.2.826.0.1.8001.1.1", MRImageStorage)
        assert row.transfer_syntax_uid == ExplicitVRLittleEndian and row.not_applicable_reason is None


def test_an_rle_compressed_instance_is_stored_as_received(listener_port: int, dicom_settings: Settings) -> None:
    ds = read_back(mr_slice("1.2.826.0.1.8002", "1.2.826.0.1.8002.1", 1))
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    (response,) = store(listener_port, _encode(ds), syntaxes=(RLELossless,))
    assert response.Status == StoreStatus.SUCCESS
    assert counts(dicom_settings) == (1, 1)
    with unit_of_work(dicom_settings) as db:
        assert db.scalars(select(Instance.transfer_syntax_uid)).one() == RLELossless


def test_an_object_without_pixels_is_stored_as_not_applicable(listener_port: int, dicom_settings: Settings) -> None:
    study = "1.2.826.0.1.8003"
    report = structured_report(study)
    (response,) = store(listener_port, report)
    assert response.Status == StoreStatus.SUCCESS
    assert counts(dicom_settings) == (1, 0)
    with unit_of_work(dicom_settings) as db:
        reason = db.scalars(select(Instance.not_applicable_reason)).one()
        assert reason is not None and "no pixel data" in reason


@pytest.fixture()
def send_files_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file's bytes with its file meta as the request, without decoding it (as storescu does)."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)


@pytest.mark.usefixtures("send_files_unread")
def test_a_data_set_of_another_sop_class_than_the_request_is_refused(
    listener_port: int, dicom_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "ct-in-mr.dcm"  # file meta (and so the request) says MR, the data set says CT
    path.write_bytes(_lying_file(make_mr_dicom(), SOPClassUID=CTImageStorage))
    (response,) = store(listener_port, path)
    assert response.Status == StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "SOP Class UID" in response.ErrorComment
    assert counts(dicom_settings) == (0, 0) and blob_files(dicom_settings) == []


@pytest.mark.usefixtures("send_files_unread")
def test_a_data_set_of_another_instance_than_the_request_is_refused(
    listener_port: int, dicom_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "other-uid.dcm"
    path.write_bytes(_lying_file(make_mr_dicom(sop_uid="1.2.826.0.1.8004.1"), SOPInstanceUID="1.2.826.0.1.8004.2"))
    (response,) = store(listener_port, path)
    assert response.Status == StoreStatus.CANNOT_UNDERSTAND
    assert "SOP Instance UID" in response.ErrorComment
    assert counts(dicom_settings) == (0, 0)


def test_malformed_pixel_data_is_refused_with_a_reason_and_nothing_is_stored(
    listener_port: int, dicom_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    lying = dicom_variant(make_mr_dicom(patient_name="Secret^Name", patient_id="PID-SECRET"), Rows=512)  # 128 x 128
    good = mr_slice("1.2.826.0.1.8005", "1.2.826.0.1.8005.1", 1)
    with caplog.at_level(logging.DEBUG):
        refused, stored = store(listener_port, lying, good)  # the association survives the bad instance
    assert "C-STORE" in caplog.text and "Secret" not in caplog.text and "PID-SECRET" not in caplog.text
    assert refused.Status == StoreStatus.CANNOT_UNDERSTAND
    assert refused.ErrorComment.startswith("inconsistent_pixel_data: Pixel Data is 32768 bytes")
    assert len(refused.ErrorComment) <= 64 and "Secret" not in refused.ErrorComment
    assert stored.Status == StoreStatus.SUCCESS
    assert counts(dicom_settings) == (1, 1) and len(blob_files(dicom_settings)) == 1


def test_the_same_sop_instance_uid_with_other_pixels_is_a_duplicate_sop_instance(
    listener_port: int, dicom_settings: Settings
) -> None:
    data = mr_slice("1.2.826.0.1.8006", "1.2.826.0.1.8006.1", 1)
    pixels = np.frombuffer(read_back(data).PixelData, dtype=np.uint16)
    changed = dicom_variant(data, PixelData=(pixels[::-1]).tobytes())
    first, conflict = store(listener_port, data, changed)
    assert (first.Status, conflict.Status) == (StoreStatus.SUCCESS, StoreStatus.DUPLICATE_SOP_INSTANCE)
    assert conflict.ErrorComment.startswith("instance_conflict")
    assert counts(dicom_settings) == (1, 1)


def test_a_study_stored_for_another_patient_cannot_be_understood(listener_port: int, dicom_settings: Settings) -> None:
    study = "1.2.826.0.1.8008"
    first = mr_slice(study, f"{study}.1", 1)
    other_patient = mr_slice(study, f"{study}.1", 2, PatientID="PAT-OTHER")
    stored, refused = store(listener_port, first, other_patient)
    assert (stored.Status, refused.Status) == (StoreStatus.SUCCESS, StoreStatus.CANNOT_UNDERSTAND)
    assert refused.ErrorComment.startswith("study_patient_mismatch") and "PAT-" not in refused.ErrorComment
    assert counts(dicom_settings) == (1, 1)


def test_a_database_outage_is_out_of_resources(listener_port: int, dicom_settings: Settings) -> None:
    Path(dicom_settings.database_url.split("sqlite:///", 1)[1]).unlink()  # tables gone: OperationalError
    (response,) = store(listener_port, mr_slice("1.2.826.0.1.8007", "1.2.826.0.1.8007.1", 1))
    assert response.Status == StoreStatus.OUT_OF_RESOURCES
    assert response.ErrorComment.startswith("database_unavailable")
    assert blob_files(dicom_settings) == []


def test_an_image_over_the_pixel_limit_is_out_of_resources(
    dicom_settings: Settings, start_listener: Callable[[Settings], int]
) -> None:
    port = start_listener(dicom_settings.model_copy(update={"max_image_pixels": 100}))
    (response,) = store(port, make_mr_dicom())
    assert response.Status == StoreStatus.OUT_OF_RESOURCES
    assert response.ErrorComment == "decompression_bomb: 128x128 frame exceeds the 100-pixel limit"
    assert counts(dicom_settings) == (0, 0) and blob_files(dicom_settings) == []


@pytest.mark.usefixtures("send_files_unread")
def test_a_data_set_without_sop_uids_cannot_be_understood(
    listener_port: int, dicom_settings: Settings, tmp_path: Path
) -> None:
    data = make_mr_dicom()
    path = tmp_path / "garbage.dcm"
    path.write_bytes(data)
    _, offset = split_dataset(path)
    path.write_bytes(data[:offset] + b"\xff" * 200)  # valid file meta, then no data set
    (response,) = store(listener_port, path)
    assert response.Status == StoreStatus.CANNOT_UNDERSTAND
    assert response.ErrorComment == "no SOP Class UID or SOP Instance UID in the data set"
    assert counts(dicom_settings) == (0, 0)


def test_an_error_in_the_handler_is_a_failure_status_and_the_association_survives(
    listener_port: int, dicom_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(settings: Settings, data: bytes, **_: object) -> SingleStoreResult:
        raise RuntimeError("Secret^Name")  # a bug whose message quotes the data set

    monkeypatch.setattr(listener_module, "store_instance", broken)
    with caplog.at_level(logging.INFO):
        assoc = associate(listener_port)
        response = assoc.send_c_store(read_back(make_mr_dicom()))
        echo = assoc.send_c_echo()
        assoc.release()
    assert response.Status == StoreStatus.CANNOT_UNDERSTAND
    assert response.ErrorComment == "the data set could not be processed"
    assert echo.Status == EchoStatus.SUCCESS
    assert "RuntimeError" in caplog.text and "Secret" not in caplog.text


def test_associations_beyond_the_limit_are_rejected(
    dicom_settings: Settings, start_listener: Callable[[Settings], int]
) -> None:
    port = start_listener(dicom_settings.model_copy(update={"dicom_max_associations": 1}))
    first = associate(port)
    assert first.is_established
    second = associate(port)
    assert second.is_rejected
    first.release()


def test_parallel_associations_all_store_their_instances(listener_port: int, dicom_settings: Settings) -> None:
    def send_series(index: int) -> list[int]:
        study = f"1.2.826.0.1.81{index}"
        return [r.Status for r in store(listener_port, *(mr_slice(study, f"{study}.1", n) for n in range(1, 5)))]

    with ThreadPoolExecutor(max_workers=5) as pool:
        statuses = list(pool.map(send_series, range(5)))
    assert statuses == [[StoreStatus.SUCCESS] * 4] * 5
    assert counts(dicom_settings) == (20, 20)


def test_the_cli_serves_with_overrides_and_stops_on_sigterm(settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGHTLINE_")}
    env.update(SIGHTLINE_DATABASE_URL=settings.database_url, SIGHTLINE_BROKER_URL=settings.broker_url)
    env.update(SIGHTLINE_STORAGE_DIR=str(settings.storage_dir), SIGHTLINE_DICOM_ALLOWED_CALLING_AETS='["MODALITY"]')
    command = [sys.executable, "-m", "service.cli", "dicom-listener", "--port", str(port), "--ae-title", "TRIAGE"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ae = AE(ae_title=CALLING_AE)
            ae.add_requested_context(VERIFICATION)
            assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
            if assoc.is_established:
                assert assoc.send_c_echo().Status == EchoStatus.SUCCESS
                assoc.release()
                break
            time.sleep(0.5)
        else:
            pytest.fail("the listener did not answer within 60 s")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "TRIAGE" in output and "stopping" in output


def test_the_cli_refuses_an_invalid_ae_title() -> None:
    command = [sys.executable, "-m", "service.cli", "dicom-listener", "--ae-title", "A\\B"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "without a backslash" in result.stderr


def _lying_file(data: bytes, **changes: str) -> bytes:
    """The data set changed but the file meta (which storescu and pynetdicom send as the request) kept."""
    ds = read_back(data)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


def _encode(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _require_dcmtk() -> None:
    if not DCMTK:
        if os.environ.get("CI"):
            pytest.fail("CI must run the DCMTK tests: install Debian's dcmtk (.ci/run does)")
        pytest.skip("no echoscu/storescu on this machine (apt-get install dcmtk)")


def _dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


def test_dcmtk_echoscu_gets_an_answer(listener_port: int) -> None:
    _require_dcmtk()
    result = _dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "SIGHTLINE", "127.0.0.1", str(listener_port))
    assert result.returncode == 0, result.stderr
    refused = _dcmtk("echoscu", "-aet", "STRANGER", "-aec", "SIGHTLINE", "127.0.0.1", str(listener_port))
    assert refused.returncode != 0 and "Rejected" in refused.stdout + refused.stderr


def test_dcmtk_storescu_stores_plain_and_jpeg_ls_files(
    listener_port: int, dicom_settings: Settings, tmp_path: Path
) -> None:
    _require_dcmtk()
    plain = tmp_path / "plain.dcm"
    plain.write_bytes(mr_slice("1.2.826.0.1.8201", "1.2.826.0.1.8201.1", 1))
    ds = read_back(mr_slice("1.2.826.0.1.8201", "1.2.826.0.1.8201.1", 2))
    ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls", generate_instance_uid=False)
    compressed = tmp_path / "jpeg-ls.dcm"
    compressed.write_bytes(_encode(ds))
    port = str(listener_port)
    sent = _dcmtk("storescu", "-aet", "STORESCU", "-aec", "SIGHTLINE", "127.0.0.1", port, str(plain))
    assert sent.returncode == 0, sent.stderr
    sent = _dcmtk("storescu", "-xt", "-aet", "STORESCU", "-aec", "SIGHTLINE", "127.0.0.1", port, str(compressed))
    assert sent.returncode == 0, sent.stderr
    assert counts(dicom_settings) == (2, 2)
    with unit_of_work(dicom_settings) as db:
        assert set(db.scalars(select(Instance.transfer_syntax_uid))) == {ExplicitVRLittleEndian, JPEGLSLossless}


@pytest.mark.parametrize("title", ["", "    ", "SEVENTEEN_CHARS_X", "A\\B", "TRIAGE\n"])
def test_settings_refuse_an_invalid_ae_title_naming_the_variable(title: str) -> None:
    with pytest.raises(ValidationError, match="SIGHTLINE_DICOM_AE_TITLE"):
        Settings(_env_file=None, dicom_ae_title=title)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="SIGHTLINE_DICOM_ALLOWED_CALLING_AETS"):
        Settings(_env_file=None, dicom_allowed_calling_aets=["PACS", title])  # type: ignore[call-arg]


def test_settings_drop_the_insignificant_spaces_of_ae_titles() -> None:
    settings = Settings(_env_file=None, dicom_ae_title=" TRIAGE ", dicom_allowed_calling_aets=["PACS  "])  # type: ignore[call-arg]
    assert (settings.dicom_ae_title, settings.dicom_allowed_calling_aets) == ("TRIAGE", ["PACS"])
