"""Ed25519-signed tree heads: forgery-proof, and they expose a ledger rewritten with recomputed hashes."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime

import pytest
from audit.ledger import LedgerEntry, compute_entry_hash, genesis_hash, verify_chain
from audit.merkle import MerkleTree, public_key_id, sign_tree_head, tree_head_message, verify_tree_head
from audit.verifier import export_ledger, verify_export
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .conftest import CHAIN, build_chain

ROOT = bytes(range(32))


def tree_for(entries: list[LedgerEntry]) -> MerkleTree:
    tree = MerkleTree()
    for e in entries:
        tree.append(e.entry_hash)
    return tree


def test_signed_tree_head_verifies_under_the_signers_key(signing_key: Ed25519PrivateKey) -> None:
    head = sign_tree_head(10, ROOT, 1_750_000_000_000, signing_key, chain_id=CHAIN)
    assert verify_tree_head(head, signing_key.public_key())
    assert head["key_id"] == public_key_id(signing_key.public_key())
    assert head["tree_size"] == 10 and head["root_hash"] == ROOT.hex() and head["chain_id"] == CHAIN


def test_signed_tree_head_accepts_an_aware_datetime(signing_key: Ed25519PrivateKey) -> None:
    head = sign_tree_head(1, ROOT, datetime(2025, 6, 1, tzinfo=UTC), signing_key)
    assert head["timestamp"] == 1_748_736_000_000 and verify_tree_head(head, signing_key.public_key())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tree_size", 11),
        ("root_hash", bytes(32).hex()),
        ("timestamp", 1_750_000_000_001),
        ("chain_id", "platform"),
        ("chain_id", None),
        ("version", 2),
    ],
)
def test_tree_head_with_a_changed_field_fails(
    signing_key: Ed25519PrivateKey, field: str, value: object
) -> None:
    head = sign_tree_head(10, ROOT, 1_750_000_000_000, signing_key, chain_id=CHAIN)
    head[field] = value
    assert not verify_tree_head(head, signing_key.public_key())


def test_tree_head_fails_under_another_key(signing_key: Ed25519PrivateKey) -> None:
    head = sign_tree_head(10, ROOT, 1_750_000_000_000, signing_key)
    assert not verify_tree_head(head, Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize("broken", [{}, {"version": 1}, {"version": 1, "tree_size": "10"}, "not a head"])
def test_malformed_tree_head_is_rejected_without_raising(
    signing_key: Ed25519PrivateKey, broken: object
) -> None:
    assert not verify_tree_head(broken, signing_key.public_key())  # type: ignore[arg-type]


def test_tree_head_message_binds_size_timestamp_chain_and_root() -> None:
    msg = tree_head_message(10, ROOT, 7, "tenant:x")
    assert msg.startswith(b"clinomic-audit/tree-head/v1\x00")
    assert msg.endswith(ROOT) and b"tenant:x" in msg
    assert msg != tree_head_message(10, ROOT, 7, "tenant:y") != tree_head_message(11, ROOT, 7, "tenant:x")


def test_signed_tree_head_detects_a_rewritten_ledger_even_with_recomputed_hashes(
    signing_key: Ed25519PrivateKey,
) -> None:
    entries = build_chain(12)
    head = sign_tree_head(12, tree_for(entries).root(), 1_750_000_000_000, signing_key, chain_id=CHAIN)

    # The attacker edits entry 6 and recomputes every hash and link after it; without the HMAC key the
    # HMACs stay stale, so a public verifier (no HMAC key) sees a consistent chain...
    rewritten = entries[:5]
    prev = rewritten[-1].entry_hash
    for e in entries[5:]:
        content = b'{"payload":{"b12_pmol_l":999}}' if e.seq == 6 else e.content
        h = compute_entry_hash(
            CHAIN,
            e.seq,
            prev,
            event_id=e.event_id,
            event_type=e.event_type,
            actor=e.actor,
            tenant_id=e.tenant_id,
            occurred_at=e.occurred_at,
            content=content,
        )
        rewritten.append(dataclasses.replace(e, content=content, prev_hash=prev, entry_hash=h))
        prev = h
    assert verify_chain(rewritten, None).ok

    # ...but the Merkle root no longer matches what was signed.
    assert tree_for(rewritten).root() != bytes.fromhex(head["root_hash"])
    buffer = io.StringIO()
    export_ledger(rewritten, buffer, chain_id=CHAIN)
    buffer.seek(0)
    report = verify_export(buffer, tree_heads=[head], public_keys=[signing_key.public_key()])
    assert report.chain.ok and not report.ok
    assert report.tree_heads[0].status == "root mismatch"


def test_tree_heads_narrow_down_where_the_ledger_was_rewritten(signing_key: Ed25519PrivateKey) -> None:
    entries = build_chain(20)
    tree = tree_for(entries)
    heads = [
        sign_tree_head(n, tree.root(n), 1_750_000_000_000 + n, signing_key, chain_id=CHAIN)
        for n in (4, 8, 16, 20)
    ]
    entries[9] = dataclasses.replace(entries[9], content=b"{}")  # seq 10, stored hash left stale
    buffer = io.StringIO()
    export_ledger(entries, buffer, chain_id=CHAIN)
    buffer.seek(0)
    report = verify_export(buffer, tree_heads=heads, public_keys=[signing_key.public_key()])
    assert [h.status for h in report.tree_heads] == ["ok", "ok", "root mismatch", "root mismatch"]
    assert report.suspect_range == (9, 16)
    assert report.first_broken_seq == 10 and report.chain.reason == "hash mismatch"


def test_signed_tree_head_detects_a_truncated_ledger(signing_key: Ed25519PrivateKey) -> None:
    entries = build_chain(10)
    head = sign_tree_head(10, tree_for(entries).root(), 1_750_000_000_000, signing_key, chain_id=CHAIN)
    buffer = io.StringIO()
    export_ledger(entries[:8], buffer, chain_id=CHAIN)
    buffer.seek(0)
    report = verify_export(buffer, tree_heads=[head], public_keys=[signing_key.public_key()])
    assert report.chain.ok and not report.ok
    assert report.tree_heads[0].status == "beyond end of ledger"
    assert report.first_broken_seq == 9 and report.suspect_range == (9, 10)


def test_tree_head_for_another_chain_is_refused(signing_key: Ed25519PrivateKey) -> None:
    entries = build_chain(3)
    head = sign_tree_head(3, tree_for(entries).root(), 1, signing_key, chain_id="platform")
    buffer = io.StringIO()
    export_ledger(entries, buffer, chain_id=CHAIN)
    buffer.seek(0)
    report = verify_export(buffer, tree_heads=[head], public_keys=[signing_key.public_key()])
    assert report.tree_heads[0].status == "chain id mismatch" and not report.ok


def test_genesis_of_the_export_header_is_checked(signing_key: Ed25519PrivateKey) -> None:
    entries = build_chain(3)
    buffer = io.StringIO()
    export_ledger(entries, buffer, chain_id=CHAIN, start_prev_hash=genesis_hash("platform"))
    buffer.seek(0)
    report = verify_export(buffer)
    assert not report.ok and report.problems
