"""What the ledger keeps of an event: the envelope, minus anything that may not live forever."""

from __future__ import annotations

import hashlib
import re
from typing import Any

#: Fields whose value is replaced by its digest: ciphertexts of PHI must stay erasable by key rotation, and an
#: append-only ledger can never be re-encrypted.
DIGESTED_FIELDS = frozenset({"name_ciphertext"})


def ledger_content(value: Any) -> Any:
    """The event as the ledger stores it: identical, except each PHI ciphertext becomes its SHA-256."""
    if isinstance(value, dict):
        return {
            k: (
                {"sha256": hashlib.sha256(str(v).encode()).hexdigest()}
                if k in DIGESTED_FIELDS and v
                else ledger_content(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [ledger_content(v) for v in value]
    return value


def may_hold_digested_fields(raw: bytes) -> bool:
    """False only when the message certainly has no field that :func:`ledger_content` digests: none of their
    names occurs in it, and no ``\\u`` escape could spell one (so the walk can be skipped)."""
    return b"\\u" in raw or any(name.encode() in raw for name in DIGESTED_FIELDS)


def unreadable_event(raw: bytes, topic: str) -> dict[str, Any]:
    """A message on a platform topic that is not an envelope is still recorded, as its digest."""
    return {"topic": topic, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}


#: In canonical JSON (compact, every quote inside a string escaped), a key named ``id``/``*_id`` with an
#: identifier-like string value, and a key named ``*_ids`` with a list of such strings.
_REF = rb"[A-Za-z0-9\-_.:@/+]{1,128}"
_ID_FIELD = re.compile(rb'"([A-Za-z0-9_]*id)":"(' + _REF + rb')"')
_IDS_FIELD = re.compile(rb'"[A-Za-z0-9_]*_ids":\[((?:"' + _REF + rb'",?)+)\]')
_LISTED = re.compile(rb'"(' + _REF + rb')"')
_MAX_REFS = 64
#: The chain already is the tenant: indexing it would only make one huge posting list.
_UNINDEXED_KEYS = frozenset({b"tenant_id"})


def entity_refs(content: bytes) -> list[str]:
    """The identifiers an event mentions, for the ledger's entity filter: every string under a key named
    ``id``, ``*_id`` or ``*_ids`` at any depth (screening, patient, user, correlation ids...), except the
    tenant. Values are kept only when they look like identifiers (at most 128 of ``[A-Za-z0-9-_.:@/+]``), so
    nothing free-text is indexed. ``content`` is the entry's canonical JSON, scanned as bytes; the content,
    not this list, is what the hashes cover."""
    found: dict[str, None] = {}
    for key, value in _ID_FIELD.findall(content):
        if (key == b"id" or key.endswith(b"_id")) and key not in _UNINDEXED_KEYS:
            found[value.decode()] = None
    for listed in _IDS_FIELD.findall(content):
        for value in _LISTED.findall(listed):
            found[value.decode()] = None
    return list(found)[:_MAX_REFS]
