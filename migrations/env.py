"""Alembic environment: the URL comes from Sightline's settings unless the caller set one."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from service.db.tables import Base
from service.settings import get_settings

MIGRATION_LOCK_KEY = 0x5167_4C69  # any constant shared by every migrator of this database
config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
config.set_main_option("sqlalchemy.url", url)


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=url.startswith("sqlite"),  # SQLite needs batch mode for ALTERs
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Two API pods starting at once both run `sightline migrate` (an init container):
                # the second waits here, then finds the schema already at head.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
