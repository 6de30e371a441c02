"""Listener settings and one running listener per test (``start_listener`` is in tests/conftest.py)."""

from __future__ import annotations

import pytest
from helpers import StartListener

from service.settings import Settings

ALLOWED_CALLING_AETS = ["MODALITY", "STORESCU", "ECHOSCU"]  # the senders of test_listener.py


@pytest.fixture()
def dicom_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"dicom_allowed_calling_aets": ALLOWED_CALLING_AETS})


@pytest.fixture()
def listener_port(dicom_settings: Settings, start_listener: StartListener) -> int:
    return start_listener(dicom_settings)
