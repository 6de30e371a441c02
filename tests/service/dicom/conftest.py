"""Real listeners on 127.0.0.1 (free ports), each served in a background thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from service.dicom.listener import make_listener
from service.settings import Settings

ALLOWED_CALLING_AETS = ["MODALITY", "STORESCU", "ECHOSCU"]  # the senders of test_listener.py
StartListener = Callable[[Settings], int]


@pytest.fixture()
def dicom_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"dicom_allowed_calling_aets": ALLOWED_CALLING_AETS})


@pytest.fixture()
def start_listener() -> Iterator[StartListener]:
    """Start a listener with these settings; its port. Every one is shut down after the test."""
    stops: list[Callable[[], None]] = []

    def start(settings: Settings) -> int:
        server = make_listener(settings, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        thread.start()
        stops.append(server.shutdown)
        return int(server.server_address[1])

    yield start
    for stop in stops:
        stop()


@pytest.fixture()
def listener_port(dicom_settings: Settings, start_listener: StartListener) -> int:
    return start_listener(dicom_settings)
