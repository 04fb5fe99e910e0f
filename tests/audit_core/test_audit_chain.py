"""Sealing and chain verification: every kind of tampering is found at the exact entry."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest
from audit.ledger import (
    LedgerEntry,
    chain_id_for_tenant,
    compute_entry_hash,
    entry_hmac,
    genesis_hash,
    seal,
    seal_envelope,
    verify_chain,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from shared.events.envelope import Actor, Envelope

from .conftest import CHAIN, KEY, KEY_ID, TENANT, build_chain

K = 5  # the entry tampered with, in a chain of 10


def rehash_from(entries: list[LedgerEntry], start: int, *, key: bytes | None = None) -> list[LedgerEntry]:
    """What an attacker without the HMAC key can do: recompute hashes and links from index ``start`` on,
    keeping the old HMACs (or MACing with a key of their own)."""
    out = entries[:start]
    prev = out[-1].entry_hash if out else genesis_hash(entries[0].chain_id)
    for pos, entry in enumerate(entries[start:], start=start):
        entry = dataclasses.replace(entry, seq=pos + 1, prev_hash=prev)
        h = compute_entry_hash(
            entry.chain_id,
            entry.seq,
            prev,
            event_id=entry.event_id,
            event_type=entry.event_type,
            actor=entry.actor,
            tenant_id=entry.tenant_id,
            occurred_at=entry.occurred_at,
            content=entry.content,
        )
        mac = entry_hmac(key, prev, h) if key is not None else entry.hmac
        entry = dataclasses.replace(entry, entry_hash=h, hmac=mac)
        out.append(entry)
        prev = h
    return out


def test_sealed_chain_verifies(chain: list[LedgerEntry], keys: dict[str, bytes]) -> None:
    result = verify_chain(chain, keys)
    assert result.ok and result.checked == 10 and result.last_seq == 10
    assert result.last_hash == chain[-1].entry_hash and result.first_broken_seq is None


def test_empty_chain_verifies(keys: dict[str, bytes]) -> None:
    assert verify_chain([], keys).ok


def test_first_entry_links_to_a_genesis_hash_bound_to_the_chain_id(chain: list[LedgerEntry]) -> None:
    assert chain[0].prev_hash == genesis_hash(CHAIN)
    assert genesis_hash(CHAIN) != genesis_hash(chain_id_for_tenant(uuid.UUID(int=99)))
    assert genesis_hash("platform") != bytes(32)


def test_chain_ids_are_per_tenant_and_platform() -> None:
    assert chain_id_for_tenant(None) == "platform"
    assert chain_id_for_tenant(uuid.UUID(TENANT)) == f"tenant:{TENANT}"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", str(uuid.UUID(int=424242))),
        ("event_type", "screening.result.deleted"),
        ("actor", {"user_id": str(uuid.UUID(int=8)), "role": "admin", "service": None}),
        ("tenant_id", None),
        ("occurred_at", "2024-01-01T00:00:00.000000Z"),
        ("content", b'{"payload":{"b12_pmol_l":999}}'),
    ],
)
def test_changed_field_is_found_at_that_entry(
    chain: list[LedgerEntry], keys: dict[str, bytes], field: str, value: object
) -> None:
    chain[K - 1] = dataclasses.replace(chain[K - 1], **{field: value})
    result = verify_chain(chain, keys)
    assert not result.ok
    assert result.first_broken_seq == K
    assert result.reason == "hash mismatch"
    assert result.checked == K - 1 and result.last_hash == chain[K - 2].entry_hash


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=9), st.data())
def test_any_flipped_content_byte_is_found_at_that_entry(index: int, data: st.DataObject) -> None:
    entries = build_chain(10)
    content = bytearray(entries[index].content)
    pos = data.draw(st.integers(min_value=0, max_value=len(content) - 1))
    content[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    entries[index] = dataclasses.replace(entries[index], content=bytes(content))
    result = verify_chain(entries, {KEY_ID: KEY})
    assert (result.ok, result.first_broken_seq, result.reason) == (False, index + 1, "hash mismatch")


def test_changed_stored_hash_is_found_at_that_entry(chain: list[LedgerEntry], keys: dict[str, bytes]) -> None:
    chain[K - 1] = dataclasses.replace(chain[K - 1], entry_hash=bytes(32))
    result = verify_chain(chain, keys)
    assert (result.first_broken_seq, result.reason) == (K, "hash mismatch")


def test_changed_prev_hash_is_found_at_that_entry(chain: list[LedgerEntry], keys: dict[str, bytes]) -> None:
    chain[K - 1] = dataclasses.replace(chain[K - 1], prev_hash=b"\x01" * 32)
    result = verify_chain(chain, keys)
    assert (result.first_broken_seq, result.reason) == (K, "prev hash mismatch")


def test_deleted_entry_is_found_at_its_sequence_number(
    chain: list[LedgerEntry], keys: dict[str, bytes]
) -> None:
    del chain[K - 1]
    result = verify_chain(chain, keys)
    assert (result.ok, result.first_broken_seq, result.reason) == (False, K, "sequence gap")


def test_deleted_entry_with_renumbered_rehashed_tail_fails_hmac_there(
    chain: list[LedgerEntry], keys: dict[str, bytes]
) -> None:
    del chain[K - 1]
    result = verify_chain(rehash_from(chain, K - 1), keys)
    assert (result.first_broken_seq, result.reason) == (K, "hmac mismatch")


def test_inserted_entry_is_found_where_it_was_inserted(
    chain: list[LedgerEntry], keys: dict[str, bytes]
) -> None:
    forged = seal(
        CHAIN,
        K,
        chain[K - 2].entry_hash,
        event_id=str(uuid.uuid4()),
        event_type="screening.result.recorded",
        actor={"user_id": None, "role": "clinician"},
        tenant_id=TENANT,
        occurred_at="2025-06-01T12:00:00.000000Z",
        content={"payload": {"forged": True}},
        key_id=KEY_ID,
        key=b"a guess at the key",
    )
    chain.insert(K - 1, forged)
    result = verify_chain(chain, keys)
    assert (result.first_broken_seq, result.reason) == (K, "hmac mismatch")


def test_inserted_entry_with_renumbered_tail_fails_hmac_there(
    chain: list[LedgerEntry], keys: dict[str, bytes]
) -> None:
    chain.insert(K - 1, dataclasses.replace(chain[0], event_id=str(uuid.uuid4())))
    result = verify_chain(rehash_from(chain, K - 1), keys)
    assert (result.first_broken_seq, result.reason) == (K, "hmac mismatch")


def test_reordered_entries_are_found_at_the_first_moved_position(
    chain: list[LedgerEntry], keys: dict[str, bytes]
) -> None:
    chain[K - 1], chain[K] = chain[K], chain[K - 1]
    result = verify_chain(chain, keys)
    assert (result.first_broken_seq, result.reason) == (K, "sequence gap")


def test_reordered_entries_with_renumbered_rehashed_tail_fail_hmac_there(
    chain: list[LedgerEntry], keys: dict[str, bytes]
) -> None:
    chain[K - 1], chain[K] = chain[K], chain[K - 1]
    result = verify_chain(rehash_from(chain, K - 1), keys)
    assert (result.first_broken_seq, result.reason) == (K, "hmac mismatch")


def test_replayed_entry_is_found_after_the_original(chain: list[LedgerEntry], keys: dict[str, bytes]) -> None:
    chain.insert(K, chain[K - 1])
    result = verify_chain(chain, keys)
    assert (result.first_broken_seq, result.reason) == (K + 1, "sequence out of order")


def test_recomputed_hashes_without_the_key_fail_hmac_at_the_first_changed_entry(
    chain: list[LedgerEntry], keys: dict[str, bytes]
) -> None:
    chain[K - 1] = dataclasses.replace(chain[K - 1], content=b'{"payload":{"b12_pmol_l":999}}')
    rewritten = rehash_from(chain, K - 1)
    assert verify_chain(rewritten, None).ok  # hashes and links alone are consistent again
    result = verify_chain(rewritten, keys)
    assert (result.first_broken_seq, result.reason) == (K, "hmac mismatch")


def test_hmac_under_a_wrong_key_is_a_mismatch(chain: list[LedgerEntry], keys: dict[str, bytes]) -> None:
    chain[K - 1] = dataclasses.replace(
        chain[K - 1], hmac=entry_hmac(b"other", chain[K - 1].prev_hash, chain[K - 1].entry_hash)
    )
    result = verify_chain(chain, keys)
    assert (result.first_broken_seq, result.reason) == (K, "hmac mismatch")


def test_changed_key_id_fails_the_hmac_at_that_entry(chain: list[LedgerEntry]) -> None:
    chain[K - 1] = dataclasses.replace(chain[K - 1], key_id="k2")
    result = verify_chain(chain, {KEY_ID: KEY, "k2": b"another key"})
    assert (result.first_broken_seq, result.reason) == (K, "hmac mismatch")


def test_unknown_key_id_is_reported(chain: list[LedgerEntry]) -> None:
    result = verify_chain(chain, {"k0": b"retired"})
    assert (result.first_broken_seq, result.reason) == (1, "unknown key id")


def test_rotated_keys_verify_with_a_key_id_mapping() -> None:
    first = build_chain(5, key_id="2025-01", key=b"old key")
    second = build_chain(5, key_id="2025-07", key=b"new key", first_seq=6, prev_hash=first[-1].entry_hash)
    entries = first + second
    assert verify_chain(entries, {"2025-01": b"old key", "2025-07": b"new key"}).ok
    result = verify_chain(entries, {"2025-07": b"new key"})
    assert (result.first_broken_seq, result.reason) == (1, "unknown key id")


def test_verification_resumes_from_the_last_verified_hash(
    chain: list[LedgerEntry], keys: dict[str, bytes]
) -> None:
    head = verify_chain(chain[:4], keys)
    tail = verify_chain(chain[4:], keys, start_prev_hash=head.last_hash, expected_first_seq=head.last_seq + 1)
    assert tail.ok and tail.last_seq == 10
    wrong = verify_chain(chain[4:], keys, start_prev_hash=chain[0].entry_hash, expected_first_seq=5)
    assert (wrong.first_broken_seq, wrong.reason) == (5, "prev hash mismatch")


def test_entry_from_another_chain_is_found(keys: dict[str, bytes]) -> None:
    entries = build_chain(6)
    other = build_chain(6, chain_id="platform", tenant_id=None)
    entries[3] = other[3]
    result = verify_chain(entries, keys)
    assert (result.first_broken_seq, result.reason) == (4, "chain id mismatch")


def test_tenant_other_than_the_chains_is_found(keys: dict[str, bytes]) -> None:
    entries = build_chain(4, tenant_id=str(uuid.UUID(int=5)))
    result = verify_chain(entries, keys)
    assert (result.first_broken_seq, result.reason) == (1, "tenant mismatch")


def test_platform_chain_takes_entries_without_tenant(keys: dict[str, bytes]) -> None:
    assert verify_chain(build_chain(3, chain_id="platform", tenant_id=None), keys).ok


def test_missing_tail_is_invisible_to_the_chain_alone(
    chain: list[LedgerEntry], keys: dict[str, bytes]
) -> None:
    # Documented limit: truncation at the end is caught by signed tree heads, not by the chain.
    assert verify_chain(chain[:7], keys).ok


def test_verification_without_keys_skips_only_the_hmac(chain: list[LedgerEntry]) -> None:
    chain[K - 1] = dataclasses.replace(chain[K - 1], hmac=bytes(32))
    result = verify_chain(chain, None)
    assert result.ok and not result.hmac_checked


def test_malformed_entry_is_reported_not_raised(chain: list[LedgerEntry], keys: dict[str, bytes]) -> None:
    chain[K - 1] = dataclasses.replace(chain[K - 1], prev_hash=b"short")
    result = verify_chain(chain, keys)
    assert (result.first_broken_seq, result.reason) == (K, "malformed entry")


def test_non_canonical_content_is_found_when_asked() -> None:
    entries = build_chain(3)
    prev = entries[-1].entry_hash
    entries.append(
        seal(
            CHAIN,
            4,
            prev,
            event_id="e4",
            event_type="t",
            actor={"role": "r"},
            tenant_id=TENANT,
            occurred_at="2025-06-01T12:00:00Z",
            content=b'{ "b": 1, "a": 2 }',
            key_id=KEY_ID,
            key=KEY,
        )
    )
    assert verify_chain(entries, {KEY_ID: KEY}).ok
    result = verify_chain(entries, {KEY_ID: KEY}, check_content=True)
    assert (result.first_broken_seq, result.reason) == (4, "non-canonical content")


def test_on_hash_sees_every_recomputed_hash(chain: list[LedgerEntry], keys: dict[str, bytes]) -> None:
    seen: list[bytes] = []
    verify_chain(chain, keys, on_hash=seen.append)
    assert seen == [e.entry_hash for e in chain]


def test_seal_envelope_seals_the_whole_envelope(keys: dict[str, bytes]) -> None:
    envelope = Envelope[dict](
        event_id=uuid.UUID(int=1),
        event_type="screening.result.recorded",
        event_version=1,
        occurred_at=datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
        tenant_id=uuid.UUID(TENANT),
        actor=Actor(user_id=uuid.UUID(int=7), role="clinician"),
        correlation_id=uuid.UUID(int=2),
        payload={"b12_pmol_l": 182.4},
    )
    entry = seal_envelope(CHAIN, 1, genesis_hash(CHAIN), envelope, key_id=KEY_ID, key=KEY)
    assert entry.event_id == str(uuid.UUID(int=1)) and entry.tenant_id == TENANT
    assert entry.occurred_at == "2025-06-01T12:00:00.000000Z"
    assert entry.actor == {"user_id": str(uuid.UUID(int=7)), "role": "clinician", "service": None}
    assert b'"correlation_id":"00000000-0000-0000-0000-000000000002"' in entry.content
    assert verify_chain([entry], keys).ok


def test_entry_hash_is_domain_separated_from_the_raw_fields(chain: list[LedgerEntry]) -> None:
    # Moving bytes between adjacent fields must change the hash (length prefixes).
    e = chain[0]
    a = compute_entry_hash(
        e.chain_id,
        1,
        e.prev_hash,
        event_id="ab",
        event_type="c",
        actor={},
        tenant_id=None,
        occurred_at="t",
        content=b"x",
    )
    b = compute_entry_hash(
        e.chain_id,
        1,
        e.prev_hash,
        event_id="a",
        event_type="bc",
        actor={},
        tenant_id=None,
        occurred_at="t",
        content=b"x",
    )
    c = compute_entry_hash(
        e.chain_id,
        1,
        e.prev_hash,
        event_id="ab",
        event_type="c",
        actor={},
        tenant_id="",
        occurred_at="t",
        content=b"x",
    )
    assert len({a, b, c}) == 3
