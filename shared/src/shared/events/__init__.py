"""Versioned event contracts, one module per topic family, all wrapped in one envelope."""

from shared.events.envelope import Actor, Envelope, new_envelope
from shared.events.topics import ALL_TOPICS_PATTERN, Topic

__all__ = ["ALL_TOPICS_PATTERN", "Actor", "Envelope", "Topic", "new_envelope"]
