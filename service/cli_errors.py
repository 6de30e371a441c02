"""The errors an operator can fix, said in one line naming the problem and the fix (no traceback)."""

from __future__ import annotations

from service.settings import get_settings


def explain(exc: BaseException) -> list[str] | None:
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
