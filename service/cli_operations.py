"""``sightline keys``, ``purge`` and ``blobs sweep``: API tokens and retention, for operators."""

from __future__ import annotations

import argparse
import math
import re
from datetime import datetime, timedelta

from service.settings import get_settings

_DURATION = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def duration(text: str) -> timedelta:
    """argparse type: a positive whole number of days, hours or minutes (``30d``, ``12h``, ``90m``)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration such as 30d, 12h or 90m, got {text!r}")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def keys_create(args: argparse.Namespace) -> int:
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


def keys_list(_: argparse.Namespace) -> int:
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


def keys_revoke(args: argparse.Namespace) -> int:
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


def purge(args: argparse.Namespace) -> int:
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


def blobs_sweep(args: argparse.Namespace) -> int:
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
