"""The published sanity and faithfulness numbers of each CAM method, shipped as package data.

``models/explanation_metrics.json`` is written by ``python -m training.explanation_report``
(see ``reports/explanations.md`` for how each number was measured and what it does not
mean): per method id (``models.manifest.CamMethodName``) and ``centre_prior`` (the
baseline map), the metrics ``pointing_game``, ``energy_pointing_game``, ``iou`` (phantom
CNN), ``deletion_auc``, ``insertion_auc``, ``randomisation_spearman`` (default model) and
``randomisation_spearman_phantom_cnn``; ``null`` where a number was not measured.
"""

import json
from pathlib import Path
from typing import get_args

from models.manifest import CamMethodName

PUBLISHED_PATH = Path(__file__).parent / "explanation_metrics.json"
CENTRE_PRIOR = "centre_prior"
KNOWN_ROWS = frozenset({*get_args(CamMethodName), CENTRE_PRIOR})

PublishedMetrics = dict[str, dict[str, float | None]]


def load_published(path: Path = PUBLISHED_PATH) -> PublishedMetrics:
    """The published table; an empty dict when the file is absent (no report has been run).

    A row for a method the engine does not know, or a value that is not a number or null,
    is an error in the file, never silently dropped.
    """
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object of methods, got {type(raw).__name__}")
    return {method: _row(path, method, metrics) for method, metrics in raw.items()}


def _row(path: Path, method: str, metrics: object) -> dict[str, float | None]:
    if method not in KNOWN_ROWS:
        raise ValueError(f"{path}: {method!r} is not a known CAM method; known: {sorted(KNOWN_ROWS)}")
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: {method!r} must map metric names to numbers")
    row: dict[str, float | None] = {}
    for name, value in metrics.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{path}: {method}.{name} must be a number or null, got {value!r}")
        row[str(name)] = None if value is None else float(value)
    return row
