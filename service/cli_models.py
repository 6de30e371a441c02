"""``sightline models``: list, prepare (build + contract check), evaluate, calibrate, and the
registry: install, promote, retire and agreement (``service.registry``)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from service.settings import Settings, get_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import numpy.typing as npt
    from sqlalchemy.orm import Session

    from models.evaluation import FolderPredictions
    from models.manifest import ModelManifest
    from service.active_model import ModelKey


def models_list(_: argparse.Namespace) -> int:
    """Every installed manifest version; ``*`` marks the active one, ``role=`` its deployment
    role (``-``: not deployed). Without a reachable, migrated database the configured model is
    taken as active, so the listing works before ``sightline migrate``."""
    from models.registry import list_versions

    settings = get_settings()
    extra = [settings.model_manifest_dir] if settings.model_manifest_dir else []
    roles = _deployment_roles(settings)
    for (name, version), manifest in list_versions(extra).items():
        role = roles.get((name, version), "-")
        marker = "*" if role == "active" else " "
        print(f"{marker} {name} {version} sha256={manifest.sha256[:12]} labels={manifest.labels} role={role}")
    return 0


def _deployment_roles(settings: Settings) -> dict[tuple[str, str], str]:
    from sqlalchemy.exc import SQLAlchemyError

    from service.db.session import unit_of_work
    from service.registry.service import deployment_views

    try:
        with unit_of_work(settings) as db:
            views = deployment_views(db, settings)
    except SQLAlchemyError:
        from service.active_model import configured_model

        configured = configured_model(settings)
        return {(configured.name, configured.version): "active"}
    return {(view.model_name, view.model_version): view.role.value for view in views}


def _actor() -> str:
    """Who ran the command, for the audit trail: the operating-system user."""
    import getpass

    return f"cli:{getpass.getuser()}"


def _deployment_command(run: Callable[[Session, Settings, ModelKey], str], args: argparse.Namespace) -> int:
    """Run one registry change in one unit of work; refusals are one line on stderr, exit 1."""
    from models.errors import ModelLibraryError
    from service.active_model import ModelKey
    from service.db.session import unit_of_work
    from service.errors import SightlineError

    settings = get_settings()
    try:
        with unit_of_work(settings) as db:
            message = run(db, settings, ModelKey(args.name, args.version))
    except (SightlineError, ModelLibraryError) as exc:
        print(f"sightline: error: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


def models_install(args: argparse.Namespace) -> int:
    """Install NAME VERSION as active (only when no version is active yet) or ``--shadow``."""
    from service.registry.routing import parse_rules
    from service.registry.service import install

    def run(db: Session, settings: Settings, key: ModelKey) -> str:
        row = install(db, settings, key, shadow=args.shadow, rules=parse_rules(args.route), actor=_actor())
        return f"installed {key} as {row.role.value}; routing {row.routing_rules or 'everything in scope'}"

    return _deployment_command(run, args)


def models_promote(args: argparse.Namespace) -> int:
    """Make NAME VERSION active; the previous active version becomes a shadow."""
    from service.registry.service import promote

    def run(db: Session, settings: Settings, key: ModelKey) -> str:
        previous, retriaged = promote(db, settings, key, actor=_actor())
        return f"promoted {key} (was {previous}, now shadow); re-triaged {retriaged} studies from stored slices"

    return _deployment_command(run, args)


def models_retire(args: argparse.Namespace) -> int:
    """Stop scoring with NAME VERSION; its queued jobs are cancelled."""
    from service.registry.service import retire

    def run(db: Session, settings: Settings, key: ModelKey) -> str:
        return f"retired {key}; cancelled {retire(db, settings, key, actor=_actor())} queued jobs"

    return _deployment_command(run, args)


def models_agreement(_: argparse.Namespace) -> int:
    """Print the agreement report (``GET /api/v1/models/agreement``) as JSON."""
    from service.db.session import unit_of_work
    from service.registry.agreement import agreement_report

    settings = get_settings()
    with unit_of_work(settings) as db:
        report = agreement_report(db, settings)
    print(report.model_dump_json(indent=2))
    return 0


def models_prepare(_: argparse.Namespace) -> int:
    """Build the CAM-ready model into the cache and check the model contract, so workers start
    without the one-off build and a broken model is refused before it scores anything."""
    from models.contract import check_model_contract
    from models.errors import ModelContractError
    from models.inference import Classifier
    from models.registry import get_manifest_version
    from service.active_model import worker_model

    settings = get_settings()
    settings.ensure_dirs()
    extra = [settings.model_manifest_dir] if settings.model_manifest_dir else []
    try:
        model = worker_model(settings)  # the model this host's workers run
        classifier = Classifier(
            get_manifest_version(model.name, model.version, extra), cache_dir=settings.model_cache_dir
        )
        report = check_model_contract(classifier.manifest, classifier.model_path, classifier.cam_ready_path)
    except ModelContractError as exc:
        print(f"sightline: model refused: {exc}", file=sys.stderr)
        return 1
    print(f"{classifier.manifest.name} {classifier.manifest.version} ready in {settings.model_cache_dir}")
    print(f"  CAM-ready sha256 {report.cam_ready_sha256}; layer layout {report.cam_layer_layout}")
    print(
        f"  checks passed: {', '.join(report.checks)}; plain vs CAM-ready max diff {report.max_plain_cam_diff:.1e}, "
        f"gradient vs finite differences {report.gradient_relative_error:.1e} ({report.gradient_precision})"
    )
    return 0


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _folder_predictions(folder: Path, model_name: str | None) -> tuple[ModelManifest, FolderPredictions]:
    """Raw (uncalibrated) probabilities of every image in a labelled folder; skipped files go to stderr.

    The folder is checked before the model is loaded, so a misnamed class folder fails at once.
    """
    from models.evaluation import LabelledFolderError, labelled_files, predict_folder
    from models.inference import Classifier
    from models.pixels import decode_image
    from models.registry import get_manifest

    settings = get_settings()
    extra = [settings.model_manifest_dir] if settings.model_manifest_dir else []
    manifest = get_manifest(model_name or settings.model_name, extra)
    files = labelled_files(folder, manifest.labels)
    classifier = Classifier(manifest, cache_dir=settings.model_cache_dir)

    def model_input(data: bytes) -> npt.NDArray[np.uint8]:  # the worker's model input, not the display window
        image = decode_image(data, max_pixels=settings.max_image_pixels, input_policy=manifest.input_policy)
        return image.model_pixels

    predictions = predict_folder(files, lambda data: classifier.raw_probabilities(model_input(data)), root=folder)
    for skipped in predictions.skipped:
        print(f"skipped {skipped.index} {skipped.path}: {skipped.reason}", file=sys.stderr)
    if not predictions.paths:
        raise LabelledFolderError(f"no readable image in {folder}: all {len(files)} files were skipped")
    return manifest, predictions


def models_evaluate(args: argparse.Namespace) -> int:
    """Score a labelled folder; write evaluation.json, evaluation.md and reliability.png.

    ``--temperature`` defaults to the manifest's own, so the report describes what Sightline ships.
    """
    from models.errors import ModelLibraryError
    from models.evaluation import evaluate
    from models.evaluation_report import write_report

    try:
        manifest, predictions = _folder_predictions(args.folder, args.model)
    except ModelLibraryError as exc:
        print(f"sightline: error: {exc}", file=sys.stderr)
        return 1
    temperature = manifest.temperature if args.temperature is None else args.temperature
    report = evaluate(
        predictions.probabilities,
        predictions.labels,
        manifest.labels,
        temperature,
        model=f"{manifest.name} {manifest.version}",
        skipped=predictions.skipped,
    )
    written = write_report(report, args.out or Path("var", "evaluation", manifest.name))
    auc = "n/a" if report.macro_roc_auc is None else f"{report.macro_roc_auc:.4f}"
    print(f"evaluated {report.count} images with {report.model} ({len(report.skipped)} skipped)")
    print(f"accuracy {report.accuracy:.4f}  macro ROC-AUC {auc}")
    print(f"ECE before {report.ece_before:.4f}  after {report.ece_after:.4f}  (T={temperature:g})")
    print("wrote " + " ".join(str(path) for path in written))
    return 0


def models_calibrate(args: argparse.Namespace) -> int:
    """Fit the temperature on a labelled folder; print it with NLL and ECE uncalibrated and at it.

    The temperature is rounded to 4 decimals (its statistical error is far larger) and every
    number printed or written uses the rounded value.
    """
    from models.calibration import (
        apply_temperature,
        expected_calibration_error,
        fit_temperature,
        negative_log_likelihood,
        write_calibrated_manifest,
    )
    from models.errors import ModelLibraryError
    from models.manifest import load_manifest
    from models.registry import BUILTIN_MANIFEST_DIR

    try:
        manifest, predictions = _folder_predictions(args.folder, args.model)
    except ModelLibraryError as exc:
        print(f"sightline: error: {exc}", file=sys.stderr)
        return 1
    probabilities, labels = predictions.probabilities, predictions.labels
    temperature = round(fit_temperature(probabilities, labels), 4)
    nll = [negative_log_likelihood(probabilities, labels, t) for t in (1.0, temperature)]
    calibrated = apply_temperature(probabilities, temperature)
    ece = [expected_calibration_error(p, labels) for p in (probabilities, calibrated)]
    print(f"temperature {temperature:g} fitted on {labels.size} images with {manifest.name} {manifest.version}")
    print(f"NLL uncalibrated {nll[0]:.4f}  calibrated {nll[1]:.4f}")
    print(f"ECE uncalibrated {ece[0]:.4f}  calibrated {ece[1]:.4f}")
    if args.write_manifest is not None:
        settings = get_settings()
        folders = [BUILTIN_MANIFEST_DIR, *([settings.model_manifest_dir] if settings.model_manifest_dir else [])]
        source = next(p for f in folders for p in sorted(f.glob("*.json")) if load_manifest(p).name == manifest.name)
        write_calibrated_manifest(source, args.write_manifest, temperature)
        print(f"wrote {args.write_manifest} (a copy of {source} with temperature {temperature:g})")
    return 0
