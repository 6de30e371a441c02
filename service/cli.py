"""The ``sightline`` console script: serve, dicom-listener, worker, beat, migrate, keys, models, demo, purge, blobs.

``worker`` and ``beat`` exec Celery by module path, so the gateway package never imports
``worker/`` (the arrow points one way: worker → service, never back).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from service.settings import get_settings

if TYPE_CHECKING:
    from models.evaluation import FolderPredictions
    from models.manifest import ModelManifest

CELERY_APP = "worker.app:celery_app"
_DURATION = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.logging_setup import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        log_config=None,  # keep our JSON logging
        access_log=False,  # uvicorn's would log query strings (patient_id filters); see service.access_log
        proxy_headers=True,
    )
    return 0


def _ae_title(text: str) -> str:
    """argparse type: a valid AE title (PS3.5 6.2)."""
    from service.settings import validate_ae_title

    try:
        return validate_ae_title(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dicom_listener(args: argparse.Namespace) -> int:
    from service.dicom.listener import serve
    from service.logging_setup import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    settings.ensure_dirs()
    if args.ae_title:
        settings = settings.model_copy(update={"dicom_ae_title": args.ae_title})
    serve(settings, args.host or settings.dicom_host, args.port or settings.dicom_port)
    return 0


def _celery(argv: list[str]) -> int:
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", CELERY_APP, *argv])


def _worker(args: argparse.Namespace) -> int:
    """The pool's children count the job metrics; the main process serves them all from a
    prometheus multiprocess directory (a fresh one unless ``PROMETHEUS_MULTIPROC_DIR`` is set).
    It must be in the environment before Celery imports prometheus_client, hence here."""
    if get_settings().worker_metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sightline-metrics-")
    return _celery(["worker", "-Q", "analysis", "--without-gossip", "--without-mingle", *args.celery_args])


def _beat(args: argparse.Namespace) -> int:
    return _celery(["beat", "--schedule", args.schedule, *args.celery_args])


def _migrate(args: argparse.Namespace) -> int:
    from service.db.migrate import downgrade, upgrade

    settings = get_settings()
    settings.ensure_dirs()
    if args.downgrade:
        downgrade(settings.database_url, args.downgrade)
    else:
        upgrade(settings.database_url, args.revision)
    return 0


def _duration(text: str) -> timedelta:
    """argparse type: a positive whole number of days, hours or minutes (``30d``, ``12h``, ``90m``)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 30d, 12h or 90m, got {text!r}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def _keys_create(args: argparse.Namespace) -> int:
    from service.auth.tokens import create_token
    from service.db.session import unit_of_work
    from service.db.tables import Role

    with unit_of_work(get_settings()) as db:
        token = create_token(db, role=Role(args.role), name=args.name, expires_in=args.expires_in)
    print(token)
    return 0


def _when(moment: datetime | None, empty: str = "-") -> str:
    from service.db.tables import as_utc

    return empty if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M")


def _keys_list(_: argparse.Namespace) -> int:
    """One row per token: never the secret (only its hash is stored), its 8-character prefix."""
    from service.auth.tokens import is_expired, list_tokens
    from service.db.session import session_factory
    from service.db.tables import utcnow

    with session_factory(get_settings())() as db:
        rows = list_tokens(db)
    now = utcnow()
    table = [("NAME", "ROLE", "PREFIX", "CREATED", "EXPIRES", "LAST USED", "REVOKED")]
    for row in rows:
        expires = _when(row.expires_at, "never") + (" (expired)" if is_expired(row, now) else "")
        table.append(
            (row.name, row.role.value, row.prefix, _when(row.created_at), expires, _when(row.last_used_at, "never"),
             _when(row.revoked_at))
        )  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from service.auth.tokens import revoke_token
    from service.db.session import unit_of_work

    with unit_of_work(get_settings()) as db:
        row = revoke_token(db, args.token)
        print(f"revoked {row.name} ({row.prefix}, {row.role.value})")
    return 0


def _size(count: int) -> str:
    """Bytes for people: 0 B, 12.3 KiB, 4.5 MiB, 6.7 GiB."""
    if count < 1024:
        return f"{count} B"
    exponent = min(int(math.log(count, 1024)), 3)
    return f"{count / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def _purge(args: argparse.Namespace) -> int:
    from service.db.session import session_factory
    from service.db.tables import utcnow
    from service.logging_setup import configure_logging
    from service.retention import purge
    from service.storage import BlobStore

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)  # the JSON record of what was deleted
    cutoff = utcnow() - args.older_than
    studies, report = purge(
        BlobStore(settings.storage_dir), session_factory(settings), cutoff=cutoff, dry_run=args.dry_run
    )
    verb = ("would purge", "would delete") if args.dry_run else ("purged", "deleted")
    print(
        f"{verb[0]} {studies} studies received before {cutoff:%Y-%m-%d %H:%M} UTC; "
        f"{verb[1]} {report.deleted} unreferenced blobs ({_size(report.bytes)})"
        + (f"; kept {report.kept} referenced again meanwhile" if report.kept else "")
    )
    return 0


def _blobs_sweep(args: argparse.Namespace) -> int:
    from service.db.session import session_factory
    from service.logging_setup import configure_logging
    from service.retention import sweep
    from service.storage import BlobStore

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)  # the JSON record of what was deleted
    report = sweep(BlobStore(settings.storage_dir), session_factory(settings), grace=args.grace, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {report.deleted} unreferenced blobs older than {args.grace} ({_size(report.bytes)})"
        + (f"; kept {report.kept} referenced again meanwhile" if report.kept else "")
    )
    return 0


def _models_list(_: argparse.Namespace) -> int:
    from models.registry import list_manifests

    settings = get_settings()
    extra = [settings.model_manifest_dir] if settings.model_manifest_dir else []
    for manifest in list_manifests(extra).values():
        marker = "*" if manifest.name == settings.model_name else " "
        print(f"{marker} {manifest.name} {manifest.version} sha256={manifest.sha256[:12]} labels={manifest.labels}")
    return 0


def _models_prepare(_: argparse.Namespace) -> int:
    """Build the CAM-ready model into the cache and check the model contract, so workers start
    without the one-off build and a broken model is refused before it scores anything."""
    from models.contract import check_model_contract
    from models.errors import ModelContractError
    from models.inference import Classifier
    from models.registry import get_manifest

    settings = get_settings()
    settings.ensure_dirs()
    extra = [settings.model_manifest_dir] if settings.model_manifest_dir else []
    try:
        classifier = Classifier(get_manifest(settings.model_name, extra), cache_dir=settings.model_cache_dir)
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


def _positive_float(text: str) -> float:
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
    predictions = predict_folder(
        files,
        lambda data: classifier.raw_probabilities(decode_image(data, max_pixels=settings.max_image_pixels).pixels),
        root=folder,
    )
    for skipped in predictions.skipped:
        print(f"skipped {skipped.index} {skipped.path}: {skipped.reason}", file=sys.stderr)
    if not predictions.paths:
        raise LabelledFolderError(f"no readable image in {folder}: all {len(files)} files were skipped")
    return manifest, predictions


def _models_evaluate(args: argparse.Namespace) -> int:
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


def _models_calibrate(args: argparse.Namespace) -> int:
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


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(samples=args.samples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sightline", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=_serve)

    listener = sub.add_parser("dicom-listener", help="run the DICOM C-STORE/C-ECHO listener (pynetdicom)")
    listener.add_argument("--host", help="address to bind (default SIGHTLINE_DICOM_HOST)")
    listener.add_argument("--port", type=int, help="port (default SIGHTLINE_DICOM_PORT)")
    listener.add_argument("--ae-title", type=_ae_title, help="called AE title (default SIGHTLINE_DICOM_AE_TITLE)")
    listener.set_defaults(func=_dicom_listener)

    worker = sub.add_parser("worker", help="run a Celery analysis worker (extra args go to celery)")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER)
    worker.set_defaults(func=_worker)

    beat = sub.add_parser("beat", help="run Celery beat: the reconciler and the series sweep, run in-process")
    beat.add_argument("--schedule", default="./var/celerybeat-schedule")
    beat.add_argument("celery_args", nargs=argparse.REMAINDER)
    beat.set_defaults(func=_beat)

    migrate = sub.add_parser("migrate", help="apply database migrations (alembic upgrade)")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION instead")
    migrate.set_defaults(func=_migrate)

    keys = sub.add_parser("keys", help="API tokens").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument("--role", required=True, choices=["ingest", "reader", "admin"])
    create.add_argument("--name", default="cli")
    create.add_argument("--expires-in", type=_duration, metavar="DURATION", help="e.g. 30d, 12h, 90m (default: never)")
    create.set_defaults(func=_keys_create)
    keys.add_parser("list", help="list tokens (name, role, prefix, dates; never the secret)").set_defaults(
        func=_keys_list
    )
    revoke = keys.add_parser("revoke", help="revoke the one token with this name or prefix")
    revoke.add_argument("token", metavar="NAME_OR_PREFIX")
    revoke.set_defaults(func=_keys_revoke)

    models = sub.add_parser("models", help="registered models").add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="list registered model manifests").set_defaults(func=_models_list)
    models.add_parser("prepare", help="build the CAM-ready model into the cache").set_defaults(func=_models_prepare)
    evaluate = models.add_parser("evaluate", help="metrics and reliability of a model on a labelled image folder")
    evaluate.add_argument("folder", type=Path, help="one sub-folder per label (glioma/, notumor/, ...)")
    evaluate.add_argument("--out", type=Path, help="report folder (default ./var/evaluation/MODEL)")
    evaluate.add_argument("--model", help="model name (default: the configured one)")
    evaluate.add_argument("--temperature", type=_positive_float, help="default: the manifest's")
    evaluate.set_defaults(func=_models_evaluate)
    calibrate = models.add_parser("calibrate", help="fit the temperature (Guo et al. 2017) on a labelled folder")
    calibrate.add_argument("folder", type=Path, help="one sub-folder per label (glioma/, notumor/, ...)")
    calibrate.add_argument("--model", help="model name (default: the configured one)")
    calibrate.add_argument("--write-manifest", type=Path, metavar="PATH", help="write the manifest with it to PATH")
    calibrate.set_defaults(func=_models_calibrate)

    demo = sub.add_parser("demo", help="run API + worker + reconciler on embedded defaults with sample studies")
    demo.add_argument("--samples", type=int, default=4)
    demo.set_defaults(func=_demo)

    purge = sub.add_parser("purge", help="delete studies received before a cutoff, then their unreferenced blobs")
    purge.add_argument("--older-than", type=_duration, required=True, metavar="DURATION", help="e.g. 90d")
    purge.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    purge.set_defaults(func=_purge)
    blobs = sub.add_parser("blobs", help="the blob store").add_subparsers(dest="blobs_command", required=True)
    sweep = blobs.add_parser("sweep", help="delete blob files no row references (orphans)")
    sweep.add_argument("--grace", type=_duration, default=timedelta(hours=1), metavar="DURATION", help="default 1h")
    sweep.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    sweep.set_defaults(func=_blobs_sweep)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sightline")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _explain(exc: BaseException) -> list[str] | None:
    """One line per problem, naming it and the fix, for the errors an operator can fix; else None."""
    from pydantic import ValidationError
    from sqlalchemy.exc import DBAPIError

    from service.auth.tokens import AmbiguousToken, TokenNotFound

    if isinstance(exc, ValidationError):
        return [_setting_error(error["loc"], error["msg"]) for error in exc.errors()]
    if isinstance(exc, TokenNotFound | AmbiguousToken):
        return [str(exc.args[0])]
    if isinstance(exc, DBAPIError):
        return [_database_error(str(exc.orig or exc))]
    return None


def _setting_error(loc: tuple[int | str, ...], message: str) -> str:
    """``SIGHTLINE_PORT: Input should be less than 65536`` (the value is not repeated: it may be a secret)."""
    name = f"SIGHTLINE_{str(loc[0]).upper()}" if loc else "settings"
    where = "".join(f"[{part}]" for part in loc[1:])
    return f"{name}{where}: {message.removeprefix('Value error, ')}"


def _database_error(message: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(get_settings().database_url)
    shown = url.render_as_string(hide_password=True)
    text = message.lower()
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return f"the database at {shown} has no schema; run `sightline migrate`"
    if "no such column" in text or ("column" in text and "does not exist" in text):
        return f"the database at {shown} has an older schema; run `sightline migrate`"
    if "unable to open database file" in text:
        return f"database not found: {shown} (its folder does not exist); run `sightline migrate`"
    if "database" in text and "does not exist" in text:
        return f"database not found: {shown}; create it (createdb) and run `sightline migrate`"
    if url.get_backend_name() == "postgresql":
        reason = message.strip().splitlines()[0].rsplit(": ", 1)[-1]
        where = f"{url.host or 'localhost'}:{url.port or 5432}"
        return f"cannot reach PostgreSQL at {where} ({reason}); is PostgreSQL running?"
    return f"database error at {shown}: {message.strip().splitlines()[0]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # options meant for Celery (e.g. ``worker --concurrency=4``) pass through
        if args.command not in ("worker", "beat"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.celery_args = [*extra, *args.celery_args]
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:
        lines = _explain(exc)
        if lines is None:
            raise
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
