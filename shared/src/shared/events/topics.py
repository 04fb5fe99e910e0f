"""Topic names. Every topic starts with ``clinomic.`` so the audit ledger can subscribe to all by pattern."""

from enum import StrEnum


class Topic(StrEnum):
    SCREENING_REQUESTED = "clinomic.screening.requested"
    SCREENING_CLASSIFIED = "clinomic.screening.classified"
    SCREENING_RECORDED = "clinomic.screening.recorded"
    IDENTITY = "clinomic.identity"
    #: Bulk screening, one message per chunk of rows (shared.events.batch).
    SCREENING_BATCH_REQUESTED = "clinomic.screening.batch-requested"
    SCREENING_BATCH_CLASSIFIED = "clinomic.screening.batch-classified"
    SCREENING_BATCH_RECORDED = "clinomic.screening.batch-recorded"
    #: De-identified screenings for downstream analytics (shared.events.analytics): no names, pseudonymous keys.
    ANALYTICS_SCREENINGS = "clinomic.analytics.screenings"
    #: Records migrated from an earlier system, one event each (shared.events.migration).
    MIGRATION = "clinomic.migration"


ALL_TOPICS_PATTERN = r"^clinomic\..+"
