"""Bulk screening: find the chunk of a batch row by its screening id while the chunk is unrecorded.

``GET /api/screenings/{id}`` answers 202 pending for a row accepted but not yet recorded, as for single
classify. Screening ids are random (``uuid4``, fixed in the chunk command), so an unrecorded chunk keeps its
rows' ids in an array with a GIN index restricted to unrecorded chunks: an accepted 100 000-row job adds
100 000 keys, which recording retires (the array is dropped then; vacuum removes the keys). The array is
stored in the row (``STORAGE MAIN``, 4 KB for 250 rows), not out of line: toasted, it made the row look
free to read and the planner preferred filtering every unrecorded chunk (measured) to the index. Chunks
unrecorded at the upgrade get their ids from their command.

Revision ID: g0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, UUID

revision = "g0004"
down_revision = "g0003"


def upgrade() -> None:
    op.add_column("batch_chunks", sa.Column("screening_ids", ARRAY(UUID(as_uuid=True))))
    op.execute("ALTER TABLE batch_chunks ALTER COLUMN screening_ids SET STORAGE MAIN")
    op.execute("UPDATE batch_chunks SET screening_ids = ARRAY("
               "  SELECT (r->>'screening_id')::uuid "
               "  FROM jsonb_array_elements(convert_from(command, 'UTF8')::jsonb #> '{payload,rows}') AS r) "
               "WHERE recorded_at IS NULL")
    op.create_index("batch_chunks_pending_screenings", "batch_chunks", ["screening_ids"],
                    postgresql_using="gin", postgresql_where=sa.text("recorded_at IS NULL"))


def downgrade() -> None:
    op.drop_index("batch_chunks_pending_screenings", "batch_chunks")
    op.drop_column("batch_chunks", "screening_ids")
