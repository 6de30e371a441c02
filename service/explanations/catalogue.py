"""The methods a reader may ask for, and their published metrics, from the model library.

Both come from modules other engineers are adding to ``models``: the catalogue from
``models.cam`` (``method_catalogue()`` or ``CAM_METHODS``), the metrics from
``models.explanation_metrics.load_published()``. While either is absent the answer says so:
the ids of ``models.manifest.CamMethodName`` with ``catalogue: "manifest"``, and
``metrics: null`` with a note, never an empty-looking success.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any, get_args

import models.cam
from models.manifest import CamMethodName
from service.explanations.schemas import MethodCatalogue, MethodInfo

logger = logging.getLogger(__name__)

METRICS_MODULE = "models.explanation_metrics"
METHOD_IDS: tuple[str, ...] = get_args(CamMethodName)


def method_catalogue() -> MethodCatalogue:
    methods, source = _methods()
    metrics, note = published_metrics()
    return MethodCatalogue(methods=methods, catalogue=source, metrics=metrics, metrics_note=note)


def _methods() -> tuple[list[MethodInfo], str]:
    found = getattr(models.cam, "method_catalogue", None) or getattr(models.cam, "CAM_METHODS", None)
    entries = found() if callable(found) else found
    if not entries:
        return [
            MethodInfo(id=name, title=name, paper=None, kind=None, description=None) for name in METHOD_IDS
        ], "manifest"
    return [_method_info(key, entry) for key, entry in _keyed(entries)], "models.cam"


def _keyed(entries: Mapping[str, Any] | Iterable[Any]) -> list[tuple[str | None, Any]]:
    if isinstance(entries, Mapping):
        return list(entries.items())
    return [(None, entry) for entry in entries]


def _method_info(key: str | None, entry: Any) -> MethodInfo:
    def field(*names: str) -> Any:
        for name in names:
            value = entry.get(name) if isinstance(entry, Mapping) else getattr(entry, name, None)
            if value is not None:
                return value
        return None

    method_id = str(key or field("id", "name", "method"))
    title, paper, kind = field("title", "name"), field("paper", "citation", "reference"), field("kind", "family")
    description = field("description")
    return MethodInfo(
        id=method_id,
        title=str(title or method_id),
        paper=str(paper) if paper is not None else None,
        kind=str(getattr(kind, "value", kind)) if kind is not None else None,
        description=str(description) if description is not None else None,
    )


def published_metrics() -> tuple[Any, str | None]:
    """``load_published()``'s answer as JSON-ready data, or null and why."""
    try:
        module = importlib.import_module(METRICS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != METRICS_MODULE:
            raise
        logger.warning(
            "no explanation metrics module; metrics answered as null", extra={"metrics_module": METRICS_MODULE}
        )
        return None, f"{METRICS_MODULE} is not installed: no metrics are published"
    metrics = _jsonable(module.load_published())
    if not metrics:  # None, or an empty table: no report has been run
        return None, "no explanation metrics have been published yet"
    return metrics, None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
