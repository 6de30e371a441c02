"""One Classifier per worker process, built on first use and kept for the process's life.

The model is ``SIGHTLINE_WORKER_MODEL`` (name@version), else the configured model at its
highest installed version (``service.active_model.worker_model``): one model per worker.
"""

from __future__ import annotations

from pathlib import Path

from models.contract_process import check_in_subprocess
from models.inference import Classifier
from models.registry import get_manifest_version
from service.active_model import worker_model
from service.settings import Settings

_ClassifierKey = tuple[str, str | None, str | None, Path | None, Path, int]
_LOADED: dict[_ClassifierKey, Classifier] = {}


def load_classifier(settings: Settings) -> Classifier:
    """Build the configured model (the library caches its CAM-ready form on disk)."""
    extra_dirs = [settings.model_manifest_dir] if settings.model_manifest_dir else []
    model = worker_model(settings)
    manifest = get_manifest_version(model.name, model.version, extra_dirs)
    if settings.cam_method is not None:  # the operator overrides the manifest's method
        manifest = manifest.model_copy(update={"cam_method": settings.cam_method})
    threads = settings.onnx_threads or None
    classifier = Classifier(manifest, cache_dir=settings.model_cache_dir, intra_op_threads=threads)
    # Refuse a broken model at start; checked in a subprocess, whose extra sessions' memory
    # would otherwise stay in every worker process's heap.
    check_in_subprocess(manifest, classifier.model_path, classifier.cam_ready_path)
    return classifier


def worker_classifier(settings: Settings) -> Classifier:
    """The process-wide classifier for ``settings``: loaded once, then reused by every job.

    Works for every pool: prefork children warm it in ``worker_process_init``, the solo
    pool in the same signal, and a task that finds it cold loads it here.
    """
    key = (
        settings.model_name,
        settings.model_version,
        settings.worker_model,
        settings.model_manifest_dir,
        settings.model_cache_dir,
        settings.onnx_threads,
    )
    classifier = _LOADED.get(key)
    if classifier is None:
        classifier = _LOADED[key] = load_classifier(settings)
    return classifier
