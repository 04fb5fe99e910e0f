"""An incremental RFC 9162 Merkle tree over a chain's entries, its proofs, and Ed25519-signed tree heads.

Hashes follow RFC 9162 section 2.1: the empty tree's hash is SHA-256(""), a leaf's is SHA-256(0x00 ‖ data),
an inner node's SHA-256(0x01 ‖ left ‖ right), and a tree of n > 1 leaves splits at the largest power of two
smaller than n. In the ledger a leaf's data is the entry's 32-byte hash.

How it is kept
--------------
Only *complete* subtrees are stored: level ``h`` holds, in order, the hash of every aligned block of 2**h
leaves that is already full (level 0 holds the leaf hashes). A complete subtree never changes as leaves are
appended, so each stored node is written exactly once and is valid for every later tree size. Appending a
leaf adds the leaf and, while the new leaf's index has trailing one bits, one parent per bit: O(1) amortised
hashing, 2n hashes stored in all. Each level is one ``bytearray`` of concatenated 32-byte hashes.

Any range that RFC 9162 hashes (a tree head at an old size, an element of an inclusion or consistency proof)
is ``[lo, hi)`` with ``lo`` a multiple of the largest power of two not above ``hi - lo``, so it is the
right-fold of at most log2(n) stored nodes (the binary decomposition of its length). A proof is therefore at
most log2(n) such folds, and needs no leaf data: :func:`inclusion_proof_plan` and
:func:`consistency_proof_plan` list exactly which stored nodes ``(level, index)`` a proof needs, so a service
that keeps the nodes in a table can fetch those few rows and call :func:`assemble_proof`, without loading the
tree. :class:`MerkleFrontier` is the writer's side of the same idea: the O(log n) right-edge nodes, enough
to append and to compute the new root. :func:`MerkleTree.from_leaf_hashes` rebuilds the levels from stored
leaf hashes (n - 1 hashes) and :func:`MerkleTree.from_levels` restores them with no hashing at all.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "EMPTY_ROOT",
    "TREE_HEAD_DOMAIN",
    "MerkleFrontier",
    "MerkleTree",
    "assemble_proof",
    "consistency_proof_plan",
    "consistency_proof_ranges",
    "fold_range",
    "inclusion_proof_plan",
    "inclusion_proof_ranges",
    "leaf_hash",
    "load_private_key",
    "load_public_key",
    "new_nodes_for_leaf",
    "node_hash",
    "public_key_id",
    "range_nodes",
    "sign_tree_head",
    "tree_head_message",
    "verify_consistency",
    "verify_inclusion",
    "verify_tree_head",
]

HASH_SIZE = 32
_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()
#: RFC 9162 domain separation: a leaf is SHA-256(0x00 ‖ data).
LEAF_PREFIX = b"\x00"
_NODE = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 ‖ data)."""
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 inner node hash: SHA-256(0x01 ‖ left ‖ right)."""
    return _sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# --------------------------------------------------------------------------------------------------------
# Which ranges a proof is made of, and which stored nodes make each range
# --------------------------------------------------------------------------------------------------------


def range_nodes(lo: int, hi: int) -> list[tuple[int, int]]:
    """The stored complete nodes ``(level, index)`` whose right-fold is MTH(D[lo:hi]), left to right.

    ``lo`` must be a multiple of the largest power of two not above ``hi - lo`` (true of every range that
    RFC 9162's recursion produces, and of ``[0, n)``).
    """
    length = hi - lo
    if length <= 0:
        raise ValueError("empty range")
    nodes: list[tuple[int, int]] = []
    pos = lo
    for level in range(length.bit_length() - 1, -1, -1):
        if length >> level & 1:
            if pos & ((1 << level) - 1):
                raise ValueError(f"range [{lo}, {hi}) is not aligned")
            nodes.append((level, pos >> level))
            pos += 1 << level
    return nodes


def fold_range(hashes: Sequence[bytes]) -> bytes:
    """Combine the hashes of :func:`range_nodes` (same order) into the range's MTH."""
    result = hashes[-1]
    for h in reversed(hashes[:-1]):
        result = _sha256(_NODE + h + result).digest()
    return result


def inclusion_proof_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs form PATH(index, D[0:size]) (RFC 9162 2.1.3.1), in proof order."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not in a tree of size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_proof_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose MTHs form PROOF(old_size, D[0:new_size]) (RFC 9162 2.1.4.1), in proof order.

    Empty when ``old_size`` is 0 or equals ``new_size`` (nothing to prove).
    """
    if not 0 <= old_size <= new_size:
        raise ValueError(f"cannot prove {old_size} -> {new_size}")
    out: list[tuple[int, int]] = []
    if old_size == 0 or old_size == new_size:
        return out
    m = old_size
    lo, hi = 0, new_size
    complete = True  # the "b" flag of SUBPROOF: still on the path of the old tree's own root
    while True:
        if m == hi - lo:
            if not complete:
                out.append((lo, hi))
            break
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            m -= k
            complete = False
    out.reverse()
    return out


def inclusion_proof_plan(index: int, size: int) -> list[list[tuple[int, int]]]:
    """For each proof element, the stored nodes to fold (see :func:`assemble_proof`)."""
    return [range_nodes(lo, hi) for lo, hi in inclusion_proof_ranges(index, size)]


def consistency_proof_plan(old_size: int, new_size: int) -> list[list[tuple[int, int]]]:
    """For each proof element, the stored nodes to fold (see :func:`assemble_proof`)."""
    return [range_nodes(lo, hi) for lo, hi in consistency_proof_ranges(old_size, new_size)]


def assemble_proof(
    plan: Sequence[Sequence[tuple[int, int]]], nodes: Mapping[tuple[int, int], bytes]
) -> list[bytes]:
    """Turn a plan into proof hashes, given the stored nodes it names (e.g. fetched in one query)."""
    return [fold_range([nodes[n] for n in element]) for element in plan]


def new_nodes_for_leaf(index: int) -> list[tuple[int, int]]:
    """The nodes ``(level, index)`` that appending leaf ``index`` completes: the leaf and its new parents.

    What a service writes to its node table after each append.
    """
    nodes = [(0, index)]
    level = 0
    while index & 1:
        index >>= 1
        level += 1
        nodes.append((level, index))
    return nodes


# --------------------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------------------


class MerkleTree:
    """An append-only RFC 9162 tree that answers roots and proofs for every size it has had."""

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]

    # -- building ---------------------------------------------------------------------------------------

    def append(self, leaf_data: bytes) -> int:
        """Append a leaf (its data, hashed here as RFC 9162 says); return its index."""
        return self.append_leaf_hash(_sha256(LEAF_PREFIX + leaf_data).digest())

    def append_leaf_hash(self, leaf: bytes) -> int:
        """Append a leaf whose RFC 9162 leaf hash is already known; return its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        levels = self._levels
        level0 = levels[0]
        index = len(level0) >> 5
        level0 += leaf
        i = index
        level = 0
        while i & 1:
            below = levels[level]
            start = (i - 1) << 5
            parent = _sha256(_NODE + below[start : start + 64]).digest()
            level += 1
            i >>= 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += parent
        return index

    def extend(self, leaf_data: Iterable[bytes]) -> None:
        for data in leaf_data:
            self.append(data)

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes] | bytes) -> MerkleTree:
        """Rebuild from stored leaf hashes (a sequence of 32-byte values or their concatenation).

        Level by level, n - 1 node hashes in all.
        """
        blob = leaf_hashes if isinstance(leaf_hashes, (bytes, bytearray)) else b"".join(leaf_hashes)
        if len(blob) % HASH_SIZE:
            raise ValueError("leaf hashes must be 32 bytes each")
        tree = cls()
        levels = [bytearray(blob)]
        sha = _sha256
        node = _NODE
        while len(levels[-1]) >= 64:
            below = memoryview(levels[-1])
            pairs = len(below) >> 6
            levels.append(
                bytearray(
                    b"".join([sha(node + below[j : j + 64]).digest() for j in range(0, pairs << 6, 64)])
                )
            )
            below.release()
        tree._levels = levels
        return tree

    @classmethod
    def from_levels(cls, levels: Sequence[bytes], *, check: bool = False) -> MerkleTree:
        """Restore from stored levels (``levels()`` output), without hashing unless ``check``."""
        if not levels:
            return cls()
        tree = cls()
        copied = [bytearray(level) for level in levels]
        while len(copied) > 1 and not copied[-1]:
            copied.pop()
        for h, level in enumerate(copied):
            if len(level) % HASH_SIZE:
                raise ValueError(f"level {h} is not a whole number of hashes")
            if h and len(level) != (len(copied[h - 1]) >> 6) << 5:
                raise ValueError(f"level {h} has the wrong number of nodes")
        if len(copied[-1]) >= 64:
            raise ValueError("levels are missing at the top")
        tree._levels = copied
        if check:
            rebuilt = cls.from_leaf_hashes(bytes(copied[0]))
            if rebuilt.levels() != tree.levels():
                raise ValueError("stored levels do not match the leaf hashes")
        return tree

    def levels(self) -> list[bytes]:
        """A copy of the stored levels, level 0 (leaf hashes) first."""
        return [bytes(level) for level in self._levels]

    # -- reading ----------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._levels[0]) >> 5

    def __len__(self) -> int:
        return self.size

    def node(self, level: int, index: int) -> bytes:
        """A stored complete node: the MTH of leaves [index * 2**level, (index + 1) * 2**level)."""
        if level < 0 or index < 0:
            raise IndexError("negative node position")
        start = index << 5
        try:
            data = self._levels[level]
        except IndexError:
            raise IndexError(f"no node ({level}, {index})") from None
        if start + HASH_SIZE > len(data):
            raise IndexError(f"no node ({level}, {index})")
        return bytes(data[start : start + HASH_SIZE])

    def leaf_hash(self, index: int) -> bytes:
        return self.node(0, index)

    def _range_hash(self, lo: int, hi: int) -> bytes:
        levels = self._levels
        hashes = [bytes(levels[lv][i << 5 : (i << 5) + HASH_SIZE]) for lv, i in range_nodes(lo, hi)]
        return fold_range(hashes)

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} is outside 0..{self.size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        size = self._check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]), RFC 9162 section 2.1.3.1."""
        size = self._check_size(size)
        return [self._range_hash(lo, hi) for lo, hi in inclusion_proof_ranges(index, size)]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]), RFC 9162 section 2.1.4.1."""
        new_size = self._check_size(new_size)
        return [self._range_hash(lo, hi) for lo, hi in consistency_proof_ranges(old_size, new_size)]


class MerkleFrontier:
    """The O(log n) state a writer needs: the stored nodes of ``range_nodes(0, size)`` (the compact range).

    For a service that keeps every node in a table and never the whole tree in memory: restore it from the
    at most log2(n) rows named by :meth:`nodes_needed`, then each :meth:`append_leaf_hash` returns the rows
    to insert (the leaf and the parents it completes) and :meth:`root` the new tree head.
    """

    __slots__ = ("_size", "_hashes")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        expected = len(range_nodes(0, size)) if size else 0
        if size < 0 or len(hashes) != expected or not all(_is_hash(h) for h in hashes):
            raise ValueError(f"a frontier of size {size} needs {expected} hashes of 32 bytes")
        self._size = size
        self._hashes = [bytes(h) for h in hashes]

    @staticmethod
    def nodes_needed(size: int) -> list[tuple[int, int]]:
        """The stored nodes ``(level, index)`` to load to resume appending at ``size``."""
        return range_nodes(0, size) if size else []

    @classmethod
    def from_tree(cls, tree: MerkleTree, size: int | None = None) -> MerkleFrontier:
        size = tree.size if size is None else size
        return cls(size, [tree.node(lv, i) for lv, i in cls.nodes_needed(size)])

    @property
    def size(self) -> int:
        return self._size

    def copy(self) -> MerkleFrontier:
        """An independent frontier in the same state (to append tentatively, e.g. inside a transaction)."""
        return MerkleFrontier(self._size, self._hashes)

    def root(self) -> bytes:
        return fold_range(self._hashes) if self._hashes else EMPTY_ROOT

    def append(self, leaf_data: bytes) -> list[tuple[int, int, bytes]]:
        return self.append_leaf_hash(leaf_hash(leaf_data))

    def append_leaf_hash(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append; return the new nodes ``(level, index, hash)``, leaf first, to store."""
        if not _is_hash(leaf):
            raise ValueError("a leaf hash is 32 bytes")
        index = self._size
        current = bytes(leaf)
        level = 0
        created = [(0, index, current)]
        hashes = self._hashes
        while index & 1:
            current = _sha256(_NODE + hashes.pop() + current).digest()
            level += 1
            index >>= 1
            created.append((level, index, current))
        hashes.append(current)
        self._size += 1
        return created


# --------------------------------------------------------------------------------------------------------
# Proof verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2)
# --------------------------------------------------------------------------------------------------------


def _is_hash(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray)) and len(value) == HASH_SIZE


def verify_inclusion(
    leaf: bytes,
    index: int,
    size: int,
    proof: Sequence[bytes],
    root: bytes,
    *,
    is_hash: bool = False,
) -> bool:
    """True when ``proof`` shows leaf ``index`` of a tree of ``size`` leaves with head ``root``.

    ``leaf`` is the leaf's data, or, with ``is_hash=True``, its RFC 9162 leaf hash. (The ledger's leaf data
    is itself a 32-byte hash, so the two cannot be told apart by length: say which it is.)
    """
    if not (isinstance(index, int) and isinstance(size, int)) or not 0 <= index < size:
        return False
    if not _is_hash(root) or not all(_is_hash(p) for p in proof):
        return False
    if is_hash:
        if not _is_hash(leaf):
            return False
        current = bytes(leaf)
    else:
        current = leaf_hash(bytes(leaf))
    fn, sn = index, size - 1
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            current = _sha256(_NODE + p + current).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            current = _sha256(_NODE + current + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and current == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True when ``proof`` shows the tree of ``old_size`` leaves is a prefix of the one of ``new_size``."""
    if not (isinstance(old_size, int) and isinstance(new_size, int)) or not 0 <= old_size <= new_size:
        return False
    if not _is_hash(old_root) or not _is_hash(new_root) or not all(_is_hash(p) for p in proof):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE + c + fr).digest()
            sr = _sha256(_NODE + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(_NODE + sr + c).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


# --------------------------------------------------------------------------------------------------------
# Signed tree heads
# --------------------------------------------------------------------------------------------------------

TREE_HEAD_DOMAIN = b"clinomic-audit/tree-head/v1\x00"
TREE_HEAD_VERSION = 1
_TH_HEADER = struct.Struct(">QQH")


def tree_head_message(size: int, root: bytes, timestamp_ms: int, chain_id: str | None) -> bytes:
    """The bytes an Ed25519 tree-head signature covers::

    b"clinomic-audit/tree-head/v1\\x00" ‖ u64 tree_size ‖ u64 timestamp_ms ‖ u16 len(chain_id)
        ‖ chain_id (UTF-8, empty when unbound) ‖ root (32 bytes)        (integers big-endian)
    """
    if not _is_hash(root):
        raise ValueError("root must be 32 bytes")
    chain = (chain_id or "").encode("utf-8")
    return TREE_HEAD_DOMAIN + _TH_HEADER.pack(size, timestamp_ms, len(chain)) + chain + bytes(root)


def _timestamp_ms(timestamp: int | datetime) -> int:
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            raise ValueError("timestamp must be timezone-aware")
        return int(timestamp.timestamp() * 1000)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("timestamp is milliseconds since the Unix epoch")
    return timestamp


def load_private_key(data: bytes | Ed25519PrivateKey) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8) or 32 raw bytes."""
    if isinstance(data, Ed25519PrivateKey):
        return data
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(bytes(data))
    key = serialization.load_pem_private_key(bytes(data), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def load_public_key(data: bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or 32 raw bytes."""
    if isinstance(data, Ed25519PublicKey):
        return data
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(bytes(data))
    key = serialization.load_pem_public_key(bytes(data))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def public_key_id(public_key: bytes | Ed25519PublicKey) -> str:
    """Hex of the first 16 bytes of SHA-256 over the raw 32-byte public key: names the signing key."""
    raw = load_public_key(public_key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def sign_tree_head(
    size: int,
    root: bytes,
    timestamp: int | datetime,
    private_key: Ed25519PrivateKey | bytes,
    *,
    chain_id: str | None = None,
) -> dict[str, Any]:
    """Sign (size, root, timestamp, chain id) with Ed25519; return the JSON-ready signed tree head.

    ``timestamp`` is milliseconds since the epoch or an aware datetime. The result::

        {"version": 1, "chain_id": ..., "tree_size": n, "timestamp": ms, "root_hash": hex,
         "key_id": hex, "signature": hex}
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError("size must be a non-negative int")
    key = load_private_key(private_key)
    ts = _timestamp_ms(timestamp)
    signature = key.sign(tree_head_message(size, root, ts, chain_id))
    return {
        "version": TREE_HEAD_VERSION,
        "chain_id": chain_id,
        "tree_size": size,
        "timestamp": ts,
        "root_hash": bytes(root).hex(),
        "key_id": public_key_id(key.public_key()),
        "signature": signature.hex(),
    }


def verify_tree_head(head: Mapping[str, Any], public_key: Ed25519PublicKey | bytes) -> bool:
    """True when ``head`` is well formed and its signature verifies under ``public_key``.

    (``key_id`` is only a hint for choosing among keys; the signature is what counts.)
    """
    try:
        if head.get("version") != TREE_HEAD_VERSION:
            return False
        size = head["tree_size"]
        ts = head["timestamp"]
        chain_id = head.get("chain_id")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return False
        if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
            return False
        if chain_id is not None and not isinstance(chain_id, str):
            return False
        root = bytes.fromhex(head["root_hash"])
        signature = bytes.fromhex(head["signature"])
        load_public_key(public_key).verify(signature, tree_head_message(size, root, ts, chain_id))
        return True
    except (InvalidSignature, KeyError, TypeError, ValueError, AttributeError, struct.error):
        return False
