"""worklist sort key: the order ``clinical_priority DESC, coalesce(triage_score, -1) DESC,
received_at ASC, id ASC`` stored as columns that all ascend (``sort_priority`` =
-clinical_priority, ``sort_score`` = -triage_score, 1.0 when unscored), so that one btree
serves both the ORDER BY and the keyset predicate ``(sort key) > (cursor)`` as a row value

Indexes, each ending in the sort key (sort_priority, sort_score, received_at, id):
- ``ix_studies_sort``: the unfiltered worklist, and every range filter (min_score becomes
  ``sort_score <= -min_score``, an index condition; wide date or received ranges filter
  rows in order);
- ``(status | patient_id | predicted_label | modality, *sort key)``: each equality filter
  reads its rows already in order (``ix_studies_patient_id_sort`` replaces
  ``ix_studies_patient_id``: its leading column serves the same look-ups);
- partial ``(*sort key) WHERE reported_at IS NULL`` (the unread queue, small in steady
  state) and ``WHERE claimed_by IS NOT NULL`` (claims in progress, always few); their
  complements (reported, unclaimed) are most rows and use ``ix_studies_sort``;
- plain ``ix_studies_study_date``: a narrow date range matches few rows, which are
  cheaper to fetch and sort (top-N) than to find by walking the order.
The columns are backfilled in SQL; the ORM keeps them in step from then on
(``service.db.tables.sort_key_of``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:12:40.118204
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SORT = ["sort_priority", "sort_score", "received_at", "id"]
FILTERED = ["status", "patient_id", "predicted_label", "modality"]
SUBSETS = {"unreported": "reported_at IS NULL", "claimed": "claimed_by IS NOT NULL"}
BACKFILL = "UPDATE studies SET sort_priority = -clinical_priority, sort_score = -coalesce(triage_score, -1.0)"


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sort_priority", sa.SmallInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("sort_score", sa.Float(), nullable=False, server_default="1.0"))
    op.execute(BACKFILL)
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index("ix_studies_patient_id")
        batch_op.create_index("ix_studies_study_date", ["study_date"], unique=False)
        batch_op.create_index("ix_studies_sort", SORT, unique=False)
        for column in FILTERED:
            batch_op.create_index(f"ix_studies_{column}_sort", [column, *SORT], unique=False)
        for name, where in SUBSETS.items():
            batch_op.create_index(
                f"ix_studies_{name}_sort",
                SORT,
                unique=False,
                postgresql_where=sa.text(where),
                sqlite_where=sa.text(where),
            )


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        for name in reversed(SUBSETS):
            batch_op.drop_index(f"ix_studies_{name}_sort")
        for column in reversed(FILTERED):
            batch_op.drop_index(f"ix_studies_{column}_sort")
        batch_op.drop_index("ix_studies_sort")
        batch_op.drop_index("ix_studies_study_date")
        batch_op.create_index("ix_studies_patient_id", ["patient_id"], unique=False)
        batch_op.drop_column("sort_score")
        batch_op.drop_column("sort_priority")
