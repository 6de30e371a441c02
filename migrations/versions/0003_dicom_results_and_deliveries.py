"""results as DICOM: the result objects made per study (SR, Secondary Capture, presentation
state), one delivery record per object and destination, and the study's results state
(due, generation, delivered, turnaround)

Existing studies get generation 0 and no results due: only studies that settle after
the upgrade get result objects.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 08:03:10.270636
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_objects",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("study_id", sa.Uuid(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Enum("sr", "sc", "pr", name="result_kind", native_enum=False, length=16), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=80), nullable=False),
        sa.Column("blob_size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_result_objects_study_id_studies"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_objects")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_result_objects_sop_instance_uid")),
    )
    with op.batch_alter_table("result_objects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_result_objects_study_id"), ["study_id"], unique=False)

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("result_object_id", sa.Uuid(), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum("pending", "delivered", "failed", name="delivery_status", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.String(length=64), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_object_id"],
            ["result_objects.id"],
            name=op.f("fk_deliveries_result_object_id_result_objects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("result_object_id", "destination", name="uq_deliveries_object_destination"),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_status_next_attempt_at", ["status", "next_attempt_at"], unique=False)

    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("results_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("results_generation", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("results_delivered_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("turnaround_seconds", sa.Float(), nullable=True))
        batch_op.create_index(
            "ix_studies_results_due_at",
            ["results_due_at"],
            unique=False,
            postgresql_where=sa.text("results_due_at IS NOT NULL"),
            sqlite_where=sa.text("results_due_at IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index("ix_studies_results_due_at")
        batch_op.drop_column("turnaround_seconds")
        batch_op.drop_column("results_delivered_at")
        batch_op.drop_column("results_generation")
        batch_op.drop_column("results_due_at")

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_status_next_attempt_at")

    op.drop_table("deliveries")
    with op.batch_alter_table("result_objects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_result_objects_study_id"))

    op.drop_table("result_objects")
