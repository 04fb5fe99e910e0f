"""Fixtures for the audit ledger core tests: small sealed chains and signing keys (no I/O beyond tmp_path)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from audit.ledger import LedgerEntry, chain_id_for_tenant, genesis_hash, seal
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

TENANT = "3f1d6c2e-8a4b-4c9d-9e0f-1a2b3c4d5e6f"
CHAIN = chain_id_for_tenant(TENANT)
KEY_ID = "k1"
KEY = b"audit-signing-key-for-tests-0001"


def _content(seq: int) -> dict:
    return {
        "event_type": "screening.result.recorded",
        "event_version": 1,
        "payload": {"screening_id": str(uuid.UUID(int=seq)), "b12_pmol_l": 150.5 + seq, "risk": "borderline"},
    }


def build_chain(
    n: int,
    *,
    chain_id: str = CHAIN,
    tenant_id: str | None = TENANT,
    key_id: str = KEY_ID,
    key: bytes = KEY,
    first_seq: int = 1,
    prev_hash: bytes | None = None,
) -> list[LedgerEntry]:
    prev = prev_hash if prev_hash is not None else genesis_hash(chain_id)
    entries = []
    for seq in range(first_seq, first_seq + n):
        entry = seal(
            chain_id,
            seq,
            prev,
            event_id=str(uuid.UUID(int=1000 + seq)),
            event_type="screening.result.recorded",
            actor={"user_id": str(uuid.UUID(int=7)), "role": "clinician", "service": None},
            tenant_id=tenant_id,
            occurred_at=f"2025-06-01T12:00:{seq % 60:02d}.000000Z",
            content=_content(seq),
            key_id=key_id,
            key=key,
        )
        entries.append(entry)
        prev = entry.entry_hash
    return entries


@pytest.fixture
def make_chain() -> Callable[..., list[LedgerEntry]]:
    return build_chain


@pytest.fixture
def chain() -> list[LedgerEntry]:
    return build_chain(10)


@pytest.fixture
def keys() -> dict[str, bytes]:
    return {KEY_ID: KEY}


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
