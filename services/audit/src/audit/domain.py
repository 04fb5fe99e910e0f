"""What the ledger keeps of an event: the envelope, minus anything that may not live forever."""

from __future__ import annotations

import hashlib
from typing import Any

#: Fields whose value is replaced by its digest: ciphertexts of PHI must stay erasable by key rotation, and an
#: append-only ledger can never be re-encrypted.
DIGESTED_FIELDS = frozenset({"name_ciphertext"})


def ledger_content(value: Any) -> Any:
    """The event as the ledger stores it: identical, except each PHI ciphertext becomes its SHA-256."""
    if isinstance(value, dict):
        return {
            k: ({"sha256": hashlib.sha256(str(v).encode()).hexdigest()} if k in DIGESTED_FIELDS and v else
                ledger_content(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [ledger_content(v) for v in value]
    return value


def unreadable_event(raw: bytes, topic: str) -> dict[str, Any]:
    """A message on a platform topic that is not an envelope is still recorded, as its digest."""
    return {"topic": topic, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
