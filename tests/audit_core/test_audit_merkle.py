"""RFC 9162 Merkle tree: roots and proofs equal a naive recursive reading of the RFC, and verify."""

from __future__ import annotations

import hashlib

import pytest
from audit.merkle import (
    EMPTY_ROOT,
    MerkleFrontier,
    MerkleTree,
    assemble_proof,
    consistency_proof_plan,
    inclusion_proof_plan,
    leaf_hash,
    new_nodes_for_leaf,
    verify_consistency,
    verify_inclusion,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# ---- a naive, recursive transcription of RFC 9162 section 2.1, for comparison ---------------------------


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    if not d:
        return _h(b"")
    if len(d) == 1:
        return _h(b"\x00" + d[0])
    k = _k(len(d))
    return _h(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:]))


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return naive_path(m, d[:k]) + [naive_mth(d[k:])]
    return naive_path(m - k, d[k:]) + [naive_mth(d[:k])]


def naive_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [naive_mth(d)]
    k = _k(n)
    if m <= k:
        return naive_subproof(m, d[:k], b) + [naive_mth(d[k:])]
    return naive_subproof(m - k, d[k:], False) + [naive_mth(d[:k])]


def naive_proof(m: int, d: list[bytes]) -> list[bytes]:
    return naive_subproof(m, d, True)


def leaves(n: int) -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(n)]


def tree_of(data: list[bytes]) -> MerkleTree:
    tree = MerkleTree()
    for item in data:
        tree.append(item)
    return tree


MAX = 33
DATA = leaves(MAX)
TREE = tree_of(DATA)

# ---- tests ----------------------------------------------------------------------------------------------


def test_empty_tree_root_is_the_hash_of_nothing() -> None:
    assert MerkleTree().root() == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_roots_match_known_rfc6962_test_vectors() -> None:
    # The eight-leaf test vector used by Certificate Transparency implementations.
    data = [
        bytes.fromhex(x)
        for x in [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
    ]
    tree = tree_of(data)
    assert tree.root(1).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert tree.root(8).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


@pytest.mark.parametrize("size", range(MAX + 1))
def test_root_at_every_size_matches_naive_mth(size: int) -> None:
    assert TREE.root(size) == naive_mth(DATA[:size])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=40))
def test_incremental_root_matches_naive_mth_for_any_leaves(data: list[bytes]) -> None:
    assert tree_of(data).root() == naive_mth(data)


def test_inclusion_proofs_match_naive_path_and_verify_for_every_index_and_size() -> None:
    for size in range(1, MAX + 1):
        root = TREE.root(size)
        for index in range(size):
            proof = TREE.inclusion_proof(index, size)
            assert proof == naive_path(index, DATA[:size]), (index, size)
            assert verify_inclusion(DATA[index], index, size, proof, root), (index, size)
            assert verify_inclusion(leaf_hash(DATA[index]), index, size, proof, root, is_hash=True)


def test_consistency_proofs_match_naive_subproof_and_verify_for_every_pair_of_sizes() -> None:
    for new in range(1, MAX + 1):
        for old in range(1, new + 1):
            proof = TREE.consistency_proof(old, new)
            expected = naive_proof(old, DATA[:new]) if old < new else []
            assert proof == expected, (old, new)
            assert verify_consistency(old, new, TREE.root(old), TREE.root(new), proof), (old, new)


def test_consistency_from_the_empty_tree_needs_no_proof() -> None:
    assert TREE.consistency_proof(0, 5) == []
    assert verify_consistency(0, 5, EMPTY_ROOT, TREE.root(5), [])


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=MAX), st.data())
def test_inclusion_proof_fails_when_the_entry_changes(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = TREE.inclusion_proof(index, size)
    assert not verify_inclusion(DATA[index] + b"!", index, size, proof, TREE.root(size))


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=2, max_value=MAX), st.data())
def test_inclusion_proof_fails_at_another_index(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    other = data.draw(st.integers(min_value=0, max_value=size - 1).filter(lambda i: i != index))
    proof = TREE.inclusion_proof(index, size)
    assert not verify_inclusion(DATA[index], other, size, proof, TREE.root(size))


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=2, max_value=MAX), st.data())
def test_inclusion_proof_fails_when_a_proof_hash_changes(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    proof = TREE.inclusion_proof(index, size)
    at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    proof[at] = bytes([proof[at][0] ^ 1]) + proof[at][1:]
    assert not verify_inclusion(DATA[index], index, size, proof, TREE.root(size))


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=2, max_value=MAX), st.data())
def test_consistency_proof_fails_when_an_old_entry_changes(new: int, data: st.DataObject) -> None:
    old = data.draw(st.integers(min_value=1, max_value=new - 1))
    changed = data.draw(st.integers(min_value=0, max_value=old - 1))
    forged = list(DATA[:new])
    forged[changed] += b"!"
    rewritten = tree_of(forged)
    proof = rewritten.consistency_proof(old, new)
    assert not verify_consistency(old, new, TREE.root(old), rewritten.root(new), proof)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=2, max_value=MAX), st.data())
def test_consistency_proof_fails_when_a_proof_hash_changes(new: int, data: st.DataObject) -> None:
    old = data.draw(st.integers(min_value=1, max_value=new - 1))
    proof = TREE.consistency_proof(old, new)
    at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    proof[at] = bytes([proof[at][0] ^ 1]) + proof[at][1:]
    assert not verify_consistency(old, new, TREE.root(old), TREE.root(new), proof)


def test_consistency_proof_fails_for_the_wrong_sizes() -> None:
    proof = TREE.consistency_proof(6, 20)
    assert not verify_consistency(7, 20, TREE.root(7), TREE.root(20), proof)
    assert not verify_consistency(6, 21, TREE.root(6), TREE.root(21), proof)
    assert not verify_consistency(6, 20, TREE.root(6), TREE.root(20), [])


def test_rebuild_from_leaf_hashes_equals_the_incremental_tree() -> None:
    for size in (0, 1, 2, 3, 17, MAX):
        incremental = tree_of(DATA[:size])
        rebuilt = MerkleTree.from_leaf_hashes([incremental.leaf_hash(i) for i in range(size)])
        assert rebuilt.levels() == incremental.levels()


def test_restore_from_stored_levels_answers_the_same_proofs() -> None:
    restored = MerkleTree.from_levels(TREE.levels(), check=True)
    assert restored.root() == TREE.root()
    assert restored.inclusion_proof(11, 29) == TREE.inclusion_proof(11, 29)
    assert restored.consistency_proof(13, 31) == TREE.consistency_proof(13, 31)


def test_restore_refuses_inconsistent_levels() -> None:
    levels = TREE.levels()
    with pytest.raises(ValueError):
        MerkleTree.from_levels([levels[0], levels[1][:-32]] + levels[2:])
    damaged = [levels[0], bytes(32) + levels[1][32:]] + levels[2:]
    with pytest.raises(ValueError):
        MerkleTree.from_levels(damaged, check=True)


def test_proof_plans_need_only_stored_nodes() -> None:
    nodes = {}
    for level, blob in enumerate(TREE.levels()):
        for i in range(len(blob) // 32):
            nodes[(level, i)] = blob[i * 32 : (i + 1) * 32]
    for size in range(1, MAX + 1):
        for index in range(size):
            assert assemble_proof(inclusion_proof_plan(index, size), nodes) == TREE.inclusion_proof(
                index, size
            )
        for old in range(1, size + 1):
            assert assemble_proof(consistency_proof_plan(old, size), nodes) == TREE.consistency_proof(
                old, size
            )


def test_new_nodes_for_leaf_are_what_an_append_completes() -> None:
    tree = MerkleTree()
    stored: set[tuple[int, int]] = set()
    for i, item in enumerate(DATA):
        tree.append(item)
        stored.update(new_nodes_for_leaf(i))
        present = {(lv, j) for lv, blob in enumerate(tree.levels()) for j in range(len(blob) // 32)}
        assert stored == present


def test_sizes_beyond_the_tree_are_refused() -> None:
    with pytest.raises(ValueError):
        TREE.root(MAX + 1)
    with pytest.raises(ValueError):
        TREE.inclusion_proof(3, MAX + 1)
    with pytest.raises(ValueError):
        TREE.inclusion_proof(5, 5)


def test_frontier_appends_create_the_same_nodes_and_roots_as_the_tree() -> None:
    frontier = MerkleFrontier()
    assert frontier.root() == EMPTY_ROOT
    for i, item in enumerate(DATA):
        created = frontier.append(item)
        assert [(lv, j) for lv, j, _ in created] == new_nodes_for_leaf(i)
        assert all(TREE.node(lv, j) == h for lv, j, h in created)
        assert frontier.root() == TREE.root(i + 1)


def test_frontier_resumes_from_the_few_stored_nodes_it_names() -> None:
    for size in range(MAX):
        frontier = MerkleFrontier(size, [TREE.node(lv, j) for lv, j in MerkleFrontier.nodes_needed(size)])
        frontier.append(DATA[size])
        assert frontier.root() == TREE.root(size + 1)
    assert len(MerkleFrontier.nodes_needed(2**20 - 1)) == 20
