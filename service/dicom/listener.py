"""The DICOM listener: a Storage SCP and Verification SCP for PACS and modalities (pynetdicom).

Each association runs in its own thread (pynetdicom's ``ThreadedAssociationServer``); each
C-STORE is stored by ``service.ingest.single.store_instance``, the same ingest code as the
upload API, as its own unit of work, and answered only after that commit (PS3.4 B.2.2).

Status mapping of a C-STORE (PS3.4 Table B.2-1, PS3.7 Annex C):

======================================================  ==========================================
what happened                                           status
======================================================  ==========================================
stored, or the same instance was already stored         0x0000 Success
database unavailable (503) or over the size limit (413) 0xA700 Refused: Out of Resources
Dataset's SOP Class UID is not the request's            0xA900 Data Set does not match SOP Class
same SOP Instance UID already stored with other content 0x0111 Duplicate SOP Instance (PS3.7 C.5.6)
no SOP UIDs, SOP Instance UID not the request's,       0xC000 Cannot understand
unreadable, inconsistent, unsupported, study of another
patient, or any unexpected error in the handler
======================================================  ==========================================

PS3.4 B.2.3 has no "conflict" status; Duplicate SOP Instance is the general failure status that
C-STORE may return (PS3.7 9.1.1.1.9) and says exactly what went wrong, whereas A7xx would
invite the sender to retry an instance that will never be accepted. Every failure carries an
Error Comment (0000,0902) with the ingest error code and message, which never hold patient data.
"""

from __future__ import annotations

import logging
import signal
import socket
import socketserver
from collections.abc import Callable
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from service.dicom.contexts import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from service.dicom.statuses import EchoStatus, StoreStatus
from service.ingest.single import SingleStoreResult, store_instance
from service.settings import Settings

logger = logging.getLogger(__name__)
ERROR_COMMENT_LENGTH = 64  # (0000,0902) Error Comment is LO: at most 64 characters
Handler = Callable[..., Dataset]
DimseStatus = EchoStatus | StoreStatus


class NoDelayAssociationServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on every accepted socket; pynetdicom has no socket-option hook.

    DIMSE sends small PDUs (a C-STORE-RSP is about 200 bytes) and waits for the answer, so
    Nagle's algorithm would add its delay to every instance of a transfer.
    """

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client_socket, address = super().get_request()
        client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client_socket, address

    def shutdown(self) -> None:
        """Stop accepting and close the socket; this server is not in the AE's own server list."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def status_dataset(status: DimseStatus, comment: str | None = None) -> Dataset:
    """A handler's answer: the status and, for a failure, an Error Comment (LO, no backslash)."""
    answer = Dataset()
    answer.Status = int(status)
    if comment:
        printable = "".join(char if " " <= char <= "~" and char != "\\" else " " for char in comment)
        answer.ErrorComment = printable[:ERROR_COMMENT_LENGTH]
    return answer


def failures_become_statuses(handler: Handler) -> Handler:
    """The one place that turns a handler's exception into a DIMSE failure, so nothing kills an association.

    Only the exception's type is logged: its message could quote the data set.
    """

    def guarded(event: Event, *args: Any) -> Dataset:
        try:
            return handler(event, *args)
        except Exception as exc:  # a handler must answer, whatever went wrong
            logger.error("DIMSE handler %s failed: %s", handler.__name__, type(exc).__name__)
            return status_dataset(StoreStatus.CANNOT_UNDERSTAND, "the data set could not be processed")

    guarded.__name__ = handler.__name__
    return guarded


def handle_echo(event: Event) -> Dataset:
    """C-ECHO (PS3.4 Annex A): the peer checks that we are there."""
    logger.info("C-ECHO from %s", event.assoc.requestor.ae_title)
    return status_dataset(EchoStatus.SUCCESS)


def handle_store(event: Event, settings: Settings) -> Dataset:
    """C-STORE (PS3.4 B.2.2): answer only after the instance is durably stored, or say why not."""
    request = cast(C_STORE, event.request)
    dataset = event.dataset
    if "SOPClassUID" not in dataset or "SOPInstanceUID" not in dataset:
        return status_dataset(StoreStatus.CANNOT_UNDERSTAND, "no SOP Class UID or SOP Instance UID in the data set")
    if dataset.SOPClassUID != request.AffectedSOPClassUID:
        return status_dataset(
            StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID differs from the Affected SOP Class UID"
        )
    if dataset.SOPInstanceUID != request.AffectedSOPInstanceUID:
        return status_dataset(
            StoreStatus.CANNOT_UNDERSTAND, "SOP Instance UID differs from the Affected SOP Instance UID"
        )
    # The bytes as received (file meta from the request): nothing is re-encoded before storing.
    result = store_instance(settings, event.encoded_dataset())
    status = store_status(result)
    logger.info(
        "C-STORE %s from %s: %s%s",
        request.AffectedSOPInstanceUID,
        event.assoc.requestor.ae_title,
        status.name,
        f" ({result.code})" if result.code else "",
    )
    comment = None if result.stored else f"{result.code}: {result.message}"
    return status_dataset(status, comment)


def store_status(result: SingleStoreResult) -> StoreStatus:
    """The C-STORE status of an ingest result (see the module's table)."""
    if result.stored:
        return StoreStatus.SUCCESS
    if result.status_code in (413, 503):
        return StoreStatus.OUT_OF_RESOURCES
    if result.code == "instance_conflict":
        return StoreStatus.DUPLICATE_SOP_INSTANCE
    return StoreStatus.CANNOT_UNDERSTAND


def build_ae(settings: Settings) -> AE:
    """The application entity: AE title, association limit, calling-AE allow-list, contexts."""
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.maximum_associations = settings.dicom_max_associations
    # pynetdicom rejects any other calling AE title with A-ASSOCIATE-RJ; an empty list accepts all.
    ae.require_calling_aet = settings.dicom_allowed_calling_aets
    ae.add_supported_context(VERIFICATION)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    return ae


def make_listener(settings: Settings, host: str, port: int) -> NoDelayAssociationServer:
    """A bound, not yet serving listener; call ``serve_forever()`` (in a thread, or not) and ``shutdown()``."""
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_C_ECHO, failures_become_statuses(handle_echo)),
        (evt.EVT_C_STORE, failures_become_statuses(handle_store), [settings]),
    ]
    server = cast(
        NoDelayAssociationServer,
        ae.make_server((host, port), evt_handlers=handlers, server_class=NoDelayAssociationServer),
    )
    if not settings.dicom_allowed_calling_aets:
        logger.warning("SIGHTLINE_DICOM_ALLOWED_CALLING_AETS is empty: any calling AE title may store instances")
    logger.info(
        "DICOM listener %s on %s:%d (at most %d associations)",
        settings.dicom_ae_title,
        host,
        server.server_address[1],
        settings.dicom_max_associations,
    )
    return server


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM; associations in progress finish (their threads are joined)."""
    server = make_listener(settings, host, port)

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("DICOM listener stopping")
    finally:
        server.server_close()
