"""Migration events: records brought over from an earlier system (Clinomic v1, MongoDB), one event each.

Published by ``clinomic-ops migrate-from-mongodb`` on ``clinomic.migration`` so that the audit ledger holds one
entry per migrated record in the organisation's chain. No PHI: a record is named by its id here, the source
document by its SHA-256 (the document holds a random-IV Fernet token, so the digest reveals nothing guessable),
and v1 ids only for collections whose ids are not patient identifiers.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict

Collection = Literal["organizations", "users", "labs", "doctors", "patients", "consents", "screenings"]


class RecordMigratedV1(BaseModel):
    """A record created from a document of the earlier system (never emitted for one already migrated)."""

    model_config = ConfigDict(frozen=True)

    source: Literal["clinomic-v1"]
    collection: Collection
    record_id: uuid.UUID
    #: The v1 organisation code (``orgId``), e.g. ``ORG-LAB-2024-001``.
    v1_org_id: str
    #: The v1 ``id``; None for patients and screenings (a patient's v1 id is its lab's identifier for it).
    v1_id: str | None
    #: SHA-256 of the v1 document in canonical extended JSON, as read.
    source_sha256: str
    run_id: uuid.UUID


RECORD_MIGRATED = ("RecordMigrated", 1)
