"""The ``sightline`` console script: serve, dicom-listener, worker, beat, migrate, keys, models, demo, purge, blobs.

``worker`` and ``beat`` exec Celery by module path, so the gateway package never imports
``worker/`` (the arrow points one way: worker → service, never back).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from service import cli_errors, cli_models, cli_operations
from service.cli_operations import duration
from service.settings import get_settings

if TYPE_CHECKING:
    pass

CELERY_APP = "worker.app:celery_app"


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
    It must be in the environment before Celery imports prometheus_client, hence here.
    The worker consumes the queue of its model (``SIGHTLINE_WORKER_MODEL``, ``service.queue.analysis_queue``)."""
    from service.active_model import worker_model
    from service.queue import analysis_queue

    settings = get_settings()
    queue = analysis_queue(worker_model(settings), settings)
    if settings.worker_metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sightline-metrics-")
    return _celery(["worker", "-Q", queue, "--without-gossip", "--without-mingle", *args.celery_args])


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
    create.add_argument("--expires-in", type=duration, metavar="DURATION", help="e.g. 30d, 12h, 90m (default: never)")
    create.set_defaults(func=cli_operations.keys_create)
    keys.add_parser("list", help="list tokens (name, role, prefix, dates; never the secret)").set_defaults(
        func=cli_operations.keys_list
    )
    revoke = keys.add_parser("revoke", help="revoke the one token with this name or prefix")
    revoke.add_argument("token", metavar="NAME_OR_PREFIX")
    revoke.set_defaults(func=cli_operations.keys_revoke)

    models = sub.add_parser("models", help="registered models").add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="installed model versions and their roles").set_defaults(func=cli_models.models_list)
    install = models.add_parser("install", help="deploy a model version (active if none is, else --shadow)")
    install.add_argument("name")
    install.add_argument("version")
    install.add_argument("--shadow", action="store_true", help="score and store, never show to readers")
    route_help = "modality, body_part, series_description or sop_class_uid; a glob, or re:REGEX"
    install.add_argument("--route", action="append", default=[], metavar="ATTRIBUTE=PATTERN", help=route_help)
    install.set_defaults(func=cli_models.models_install)
    changes = {"promote": "make a version active (the active one becomes shadow)", "retire": "stop scoring a version"}
    for verb, text in changes.items():
        change = models.add_parser(verb, help=text)
        change.add_argument("name")
        change.add_argument("version")
        change.set_defaults(func=getattr(cli_models, f"models_{verb}"))
    models.add_parser("agreement", help="shadow vs active and reader agreement (JSON)").set_defaults(
        func=cli_models.models_agreement
    )
    models.add_parser("prepare", help="build the CAM-ready model into the cache").set_defaults(
        func=cli_models.models_prepare
    )
    evaluate = models.add_parser("evaluate", help="metrics and reliability of a model on a labelled image folder")
    evaluate.add_argument("folder", type=Path, help="one sub-folder per label (glioma/, notumor/, ...)")
    evaluate.add_argument("--out", type=Path, help="report folder (default ./var/evaluation/MODEL)")
    evaluate.add_argument("--model", help="model name (default: the configured one)")
    evaluate.add_argument("--temperature", type=cli_models.positive_float, help="default: the manifest's")
    evaluate.set_defaults(func=cli_models.models_evaluate)
    calibrate = models.add_parser("calibrate", help="fit the temperature (Guo et al. 2017) on a labelled folder")
    calibrate.add_argument("folder", type=Path, help="one sub-folder per label (glioma/, notumor/, ...)")
    calibrate.add_argument("--model", help="model name (default: the configured one)")
    calibrate.add_argument("--write-manifest", type=Path, metavar="PATH", help="write the manifest with it to PATH")
    calibrate.set_defaults(func=cli_models.models_calibrate)

    demo = sub.add_parser("demo", help="run API + worker + reconciler on embedded defaults with sample studies")
    demo.add_argument("--samples", type=int, default=4)
    demo.set_defaults(func=_demo)

    purge = sub.add_parser("purge", help="delete studies received before a cutoff, then their unreferenced blobs")
    purge.add_argument("--older-than", type=duration, required=True, metavar="DURATION", help="e.g. 90d")
    purge.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    purge.set_defaults(func=cli_operations.purge)
    blobs = sub.add_parser("blobs", help="the blob store").add_subparsers(dest="blobs_command", required=True)
    sweep = blobs.add_parser("sweep", help="delete blob files no row references (orphans)")
    sweep.add_argument("--grace", type=duration, default=timedelta(hours=1), metavar="DURATION", help="default 1h")
    sweep.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    sweep.set_defaults(func=cli_operations.blobs_sweep)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sightline")
    except PackageNotFoundError:
        return "unknown (not installed)"


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
        lines = cli_errors.explain(exc)
        if lines is None:
            raise
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
