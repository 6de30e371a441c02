"""study-level triage: per-slice scores, series completeness and scores, applicability,
instance fingerprints, and how each result was made (input policy, windows, CAM target)

Existing series are taken as complete (completed_at = last_instance_at = the migration
time); existing results keep their instance-level score and get no slice rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 05:45:55.392603
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slice_scores",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("result_id", sa.Uuid(), nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("series_id", sa.Uuid(), nullable=False),
        sa.Column("frame_index", sa.Integer(), nullable=False),
        sa.Column("position", sa.Float(), nullable=True),
        sa.Column("tumour_score", sa.Float(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("target_label", sa.String(length=64), nullable=False),
        sa.Column("cam_strength", sa.Float(), nullable=False),
        sa.Column("cam", sa.LargeBinary(), nullable=False),
        sa.Column("cam_rows", sa.Integer(), nullable=False),
        sa.Column("cam_columns", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["instances.id"], name=op.f("fk_slice_scores_instance_id_instances"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["analysis_results.id"],
            name=op.f("fk_slice_scores_result_id_analysis_results"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["series_id"], ["series.id"], name=op.f("fk_slice_scores_series_id_series"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slice_scores")),
        sa.UniqueConstraint("instance_id", "frame_index", name="uq_slice_scores_instance_frame"),
    )
    with op.batch_alter_table("slice_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_slice_scores_series_id"), ["series_id"], unique=False)

    with op.batch_alter_table("analysis_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cam_ready_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("input_policy", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("resize_filter", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("input_window", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("display_window", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("temperature", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("key_frame", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("target_label", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("cam_strength", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("region_reason", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("region_area_mm2", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("box_width_mm", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("box_height_mm", sa.Float(), nullable=True))

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_applicable_reason", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("identity_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))
        batch_op.alter_column("rows", existing_type=sa.INTEGER(), nullable=True)
        batch_op.alter_column("columns", existing_type=sa.INTEGER(), nullable=True)

    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_instance_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())
        )
        batch_op.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("series_score", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("predicted_label", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("scored_slices", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("key_instance_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("key_frame", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_series_key_instance_id_instances"),
            "instances",
            ["key_instance_id"],
            ["id"],
            ondelete="SET NULL",
            use_alter=True,
        )
    op.create_index(
        "ix_series_open_last_instance_at",
        "series",
        ["last_instance_at"],
        postgresql_where=sa.text("completed_at IS NULL"),
        sqlite_where=sa.text("completed_at IS NULL"),
    )
    op.execute(sa.text("UPDATE series SET completed_at = last_instance_at"))

    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_series_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("key_frame", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_studies_key_series_id_series"),
            "series",
            ["key_series_id"],
            ["id"],
            ondelete="SET NULL",
            use_alter=True,
        )


def downgrade() -> None:
    op.execute(sa.text("UPDATE instances SET rows = 0 WHERE rows IS NULL"))
    op.execute(sa.text("UPDATE instances SET columns = 0 WHERE columns IS NULL"))
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_studies_key_series_id_series"), type_="foreignkey")
        batch_op.drop_column("key_frame")
        batch_op.drop_column("key_series_id")

    op.drop_index("ix_series_open_last_instance_at", table_name="series")
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_series_key_instance_id_instances"), type_="foreignkey")
        batch_op.drop_column("key_frame")
        batch_op.drop_column("key_instance_id")
        batch_op.drop_column("scored_slices")
        batch_op.drop_column("predicted_label")
        batch_op.drop_column("series_score")
        batch_op.drop_column("completed_at")
        batch_op.drop_column("last_instance_at")

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.alter_column("columns", existing_type=sa.INTEGER(), nullable=False)
        batch_op.alter_column("rows", existing_type=sa.INTEGER(), nullable=False)
        batch_op.drop_column("content_sha256")
        batch_op.drop_column("identity_sha256")
        batch_op.drop_column("not_applicable_reason")

    with op.batch_alter_table("analysis_results", schema=None) as batch_op:
        batch_op.drop_column("box_height_mm")
        batch_op.drop_column("box_width_mm")
        batch_op.drop_column("region_area_mm2")
        batch_op.drop_column("region_reason")
        batch_op.drop_column("cam_strength")
        batch_op.drop_column("target_label")
        batch_op.drop_column("key_frame")
        batch_op.drop_column("temperature")
        batch_op.drop_column("display_window")
        batch_op.drop_column("input_window")
        batch_op.drop_column("resize_filter")
        batch_op.drop_column("input_policy")
        batch_op.drop_column("cam_ready_sha256")

    with op.batch_alter_table("slice_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_slice_scores_series_id"))

    op.drop_table("slice_scores")
