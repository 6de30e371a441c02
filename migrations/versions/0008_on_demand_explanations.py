"""on-demand explanations: another CAM method or class for one frame, computed once.

- ``explanations``: one row per request key (instance, frame, model name and version,
  method, target label; ``uq_explanations_request``, whose leading column also serves the
  per-instance listing), its status as the worker moves it (queued, running, done,
  failed), attempts, error, the blob keys of its rendered images, strength, timings and
  the name of the token that asked for it (``service.explanations``, ``worker.explain``).
- ``ix_explanations_status_enqueued_at``: the reconciler's look-up of stuck rows.

A new table only: nothing to backfill; downgrade drops it (the image blobs stay in the
store, as the default results' blobs do).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 11:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STATUS = sa.Enum("queued", "running", "done", "failed", name="explanation_status", native_enum=False, length=16)
IMAGE_KINDS = ("heatmap", "overlay", "contour", "map", "outline")
REQUEST = ["instance_id", "frame_index", "model_name", "model_version", "method", "target_label"]


def upgrade() -> None:
    op.create_table(
        "explanations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("frame_index", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=False),
        sa.Column("cam_ready_sha256", sa.String(length=64), nullable=True),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("target_label", sa.String(length=64), nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        *(sa.Column(f"{kind}_key", sa.String(length=80), nullable=True) for kind in IMAGE_KINDS),
        sa.Column("cam_strength", sa.Float(), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=True),
        sa.Column("region_reason", sa.String(length=200), nullable=True),
        sa.Column("timings_ms", sa.JSON(), nullable=True),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_id"], ["instances.id"], name=op.f("fk_explanations_instance_id_instances"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_explanations")),
        sa.UniqueConstraint(*REQUEST, name="uq_explanations_request"),
    )
    with op.batch_alter_table("explanations", schema=None) as batch_op:
        batch_op.create_index("ix_explanations_status_enqueued_at", ["status", "enqueued_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("explanations", schema=None) as batch_op:
        batch_op.drop_index("ix_explanations_status_enqueued_at")
    op.drop_table("explanations")
