"""The ``sightline`` console script: serve, worker, beat, migrate, keys, models, demo.

``worker`` and ``beat`` exec Celery by module path, so the gateway package never imports
``worker/`` (the arrow points one way: worker → service, never back).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from service.settings import get_settings

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


def _celery(argv: list[str]) -> int:
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", CELERY_APP, *argv])


def _worker(args: argparse.Namespace) -> int:
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


def _keys_create(args: argparse.Namespace) -> int:
    from service.auth.tokens import create_token
    from service.db.session import unit_of_work
    from service.db.tables import Role

    with unit_of_work(get_settings()) as db:
        token = create_token(db, role=Role(args.role), name=args.name)
    print(token)
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
    """Build the CAM-ready model into the cache now, so workers start without the one-off build."""
    from models.inference import Classifier
    from models.registry import get_manifest

    settings = get_settings()
    settings.ensure_dirs()
    extra = [settings.model_manifest_dir] if settings.model_manifest_dir else []
    classifier = Classifier(get_manifest(settings.model_name, extra), cache_dir=settings.model_cache_dir)
    print(f"{classifier.manifest.name} {classifier.manifest.version} ready in {settings.model_cache_dir}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(samples=args.samples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sightline", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=_serve)

    worker = sub.add_parser("worker", help="run a Celery analysis worker (extra args go to celery)")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER)
    worker.set_defaults(func=_worker)

    beat = sub.add_parser("beat", help="run Celery beat: the reconciler of stuck jobs")
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
    create.set_defaults(func=_keys_create)

    models = sub.add_parser("models", help="registered models").add_subparsers(dest="models_command", required=True)
    models.add_parser("list", help="list registered model manifests").set_defaults(func=_models_list)
    models.add_parser("prepare", help="build the CAM-ready model into the cache").set_defaults(func=_models_prepare)

    demo = sub.add_parser("demo", help="run API + worker + reconciler on embedded defaults with sample studies")
    demo.add_argument("--samples", type=int, default=4)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # options meant for Celery (e.g. ``worker --concurrency=4``) pass through
        if args.command not in ("worker", "beat"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.celery_args = [*extra, *args.celery_args]
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    raise SystemExit(main())
