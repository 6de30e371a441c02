"""model registry: deployments (active | shadow | retired) and the model of every job and slice.

- ``model_deployments``: one row per installed (name, version), its role, routing rules
  and who installed / promoted it (``service.registry``). No rows: the configured
  ``SIGHTLINE_MODEL_NAME`` is the active model, as before.
- ``analysis_jobs`` gain ``model_name``/``model_version``; one job per instance and model
  (``uq_analysis_jobs_instance_model`` replaces ``uq_analysis_jobs_instance_id``).
- ``slice_scores`` gain the same two columns, so a series is scored from one model's slices;
  their unique key becomes (instance, frame, model).

Backfill: a job takes the model of its result when it has one (results always recorded
it), else the configured model; a slice takes its result's model. Downgrade keeps only the
rows of the model readers see (the active deployment, else the configured model): the old
schema holds one job per instance.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 11:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from models.registry import get_manifest
from service.settings import get_settings

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

MODEL_COLUMNS = ("model_name", "model_version")
JOBS_FROM_RESULTS = (
    "UPDATE analysis_jobs SET {column} = (SELECT r.{column} FROM analysis_results r WHERE r.job_id = analysis_jobs.id)"
    " WHERE EXISTS (SELECT 1 FROM analysis_results r WHERE r.job_id = analysis_jobs.id)"
)
SLICES_FROM_RESULTS = (
    "UPDATE slice_scores SET {column} = (SELECT r.{column} FROM analysis_results r WHERE r.id = slice_scores.result_id)"
)


def _configured_model() -> tuple[str, str]:
    settings = get_settings()
    extra = [settings.model_manifest_dir] if settings.model_manifest_dir else []
    return settings.model_name, get_manifest(settings.model_name, extra).version


def upgrade() -> None:
    op.create_table(
        "model_deployments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column(
            "role",
            sa.Enum("active", "shadow", "retired", name="deployment_role", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("routing_rules", sa.JSON(), nullable=False),
        sa.Column("installed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("installed_by", sa.String(length=128), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_deployments")),
        sa.UniqueConstraint("model_name", "model_version", name="uq_model_deployments_model"),
    )
    name, version = _configured_model()
    for table in ("analysis_jobs", "slice_scores"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("model_name", sa.String(length=128), nullable=False, server_default=name))
            batch_op.add_column(
                sa.Column("model_version", sa.String(length=64), nullable=False, server_default=version)
            )
    for column in MODEL_COLUMNS:
        op.execute(JOBS_FROM_RESULTS.format(column=column))
        op.execute(SLICES_FROM_RESULTS.format(column=column))
    with op.batch_alter_table("analysis_jobs", schema=None) as batch_op:
        for column in MODEL_COLUMNS:
            batch_op.alter_column(column, server_default=None)
        batch_op.drop_constraint("uq_analysis_jobs_instance_id", type_="unique")
        batch_op.create_unique_constraint("uq_analysis_jobs_instance_model", ["instance_id", *MODEL_COLUMNS])
        batch_op.create_index("ix_analysis_jobs_instance_id", ["instance_id"], unique=False)
    with op.batch_alter_table("slice_scores", schema=None) as batch_op:
        for column in MODEL_COLUMNS:
            batch_op.alter_column(column, server_default=None)
        batch_op.drop_constraint("uq_slice_scores_instance_frame", type_="unique")
        batch_op.create_unique_constraint(
            "uq_slice_scores_instance_frame", ["instance_id", "frame_index", *MODEL_COLUMNS]
        )


def _reader_model() -> tuple[str, str]:
    row = (
        op.get_bind()
        .execute(sa.text("SELECT model_name, model_version FROM model_deployments WHERE role = 'active'"))
        .first()
    )
    return (row[0], row[1]) if row else _configured_model()


def downgrade() -> None:
    name, version = _reader_model()
    for table in ("slice_scores", "analysis_results", "analysis_jobs"):
        op.get_bind().execute(
            sa.text(f"DELETE FROM {table} WHERE model_name <> :name OR model_version <> :version"),
            {"name": name, "version": version},
        )
    with op.batch_alter_table("slice_scores", schema=None) as batch_op:
        batch_op.drop_constraint("uq_slice_scores_instance_frame", type_="unique")
        batch_op.create_unique_constraint("uq_slice_scores_instance_frame", ["instance_id", "frame_index"])
        for column in MODEL_COLUMNS:
            batch_op.drop_column(column)
    with op.batch_alter_table("analysis_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_analysis_jobs_instance_id")
        batch_op.drop_constraint("uq_analysis_jobs_instance_model", type_="unique")
        batch_op.create_unique_constraint("uq_analysis_jobs_instance_id", ["instance_id"])
        for column in MODEL_COLUMNS:
            batch_op.drop_column(column)
    op.drop_table("model_deployments")
