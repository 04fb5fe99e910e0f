"""Topic names. Every topic starts with ``clinomic.`` so the audit ledger can subscribe to all by pattern."""

from enum import StrEnum


class Topic(StrEnum):
    SCREENING_REQUESTED = "clinomic.screening.requested"
    SCREENING_CLASSIFIED = "clinomic.screening.classified"
    SCREENING_RECORDED = "clinomic.screening.recorded"
    IDENTITY = "clinomic.identity"


ALL_TOPICS_PATTERN = r"^clinomic\..+"
