"""The audit ledger's core: canonical JSON, entry hashing, the HMAC seal and chain verification.

Pure code: no database, no broker, no network. The service decides where entries live; this module only
says what an entry is, how it is sealed and how a run of entries is checked. ``docs/audit-ledger.md``
describes the format byte for byte so that a verifier can be written in another language.

An entry's hash is SHA-256 over a domain-separated, length-prefixed encoding::

    b"clinomic-audit/entry/v1\\x00"
    u64 seq ‖ u32 len(chain_id) ‖ u32 len(event_id) ‖ u32 len(event_type) ‖ u32 len(actor)
        ‖ u32 len(tenant_id) (0xFFFFFFFF when None) ‖ u32 len(occurred_at) ‖ u32 len(content)   (big-endian)
    prev_hash (32 bytes)
    chain_id ‖ event_id ‖ event_type ‖ canonical_json(actor) ‖ tenant_id ‖ occurred_at ‖ content  (UTF-8)

and its seal is ``HMAC-SHA256(key, prev_hash ‖ entry_hash)``, the key named by ``key_id``.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import json
import math
import operator
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from audit.merkle import LEAF_PREFIX

__all__ = [
    "ENTRY_DOMAIN",
    "GENESIS_DOMAIN",
    "HASH_SIZE",
    "PLATFORM_CHAIN_ID",
    "LedgerEntry",
    "Verification",
    "canonical_actor",
    "canonical_json",
    "chain_id_for_tenant",
    "compute_entry_hash",
    "entry_hmac",
    "genesis_hash",
    "normalise_timestamp",
    "seal",
    "seal_envelope",
    "verify_chain",
    "verify_rows",
]

HASH_SIZE = 32
ENTRY_DOMAIN = b"clinomic-audit/entry/v1\x00"
GENESIS_DOMAIN = b"clinomic-audit/genesis/v1\x00"
PLATFORM_CHAIN_ID = "platform"
TENANT_CHAIN_PREFIX = "tenant:"
_NO_TENANT = 0xFFFFFFFF

# --------------------------------------------------------------------------------------------------------
# Canonical JSON (RFC 8785 style)
# --------------------------------------------------------------------------------------------------------

_encode_str: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _format_number(x: float) -> str:
    """ECMAScript Number-to-String for a finite double, as RFC 8785 section 3.2.2.3 requires."""
    if x != x or x in (math.inf, -math.inf):
        raise ValueError("canonical JSON has no NaN or Infinity")
    if x == 0:
        return "0"  # also for -0.0
    if x < 0:
        return "-" + _format_number(-x)
    # repr() gives the shortest digit string that reads back as the same double (round-half-even on ties),
    # which is what ECMAScript asks for. Rewrite it as s * 10**(n - k) with k digits in s.
    text = repr(x)
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text) if exp_text else 0
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    exponent -= len(frac_part)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped.lstrip("0")
    k = len(digits)
    n = exponent + k
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    if k == 1:
        return f"{digits}e{sign}{abs(e)}"
    return f"{digits[0]}.{digits[1:]}e{sign}{abs(e)}"


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _emit(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    else:
        kind = type(value)
        if kind is str:
            out.append(_encode_str(value))
        elif kind is int:
            out.append(int.__repr__(value))
        elif kind is float:
            out.append(_format_number(value))
        elif isinstance(value, Mapping):
            for key in value:
                if type(key) is not str:
                    raise TypeError(f"canonical JSON object keys must be str, not {type(key).__name__}")
            out.append("{")
            first = True
            for key in sorted(value, key=_utf16_key):
                if not first:
                    out.append(",")
                first = False
                out.append(_encode_str(key))
                out.append(":")
                _emit(value[key], out)
            out.append("}")
        elif isinstance(value, (list, tuple)):
            out.append("[")
            for i, item in enumerate(value):
                if i:
                    out.append(",")
                _emit(item, out)
            out.append("]")
        elif isinstance(value, int):  # int subclasses (IntEnum); bool cannot be subclassed
            out.append(int.__repr__(int(value)))
        elif isinstance(value, float):
            out.append(_format_number(float(value)))
        elif isinstance(value, str):
            out.append(_encode_str(str(value)))
        else:
            raise TypeError(
                f"{type(value).__name__} is not JSON; convert it first (e.g. model_dump(mode='json'))"
            )


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` to canonical JSON bytes (RFC 8785 style).

    Object keys sorted by UTF-16 code units, no insignificant whitespace, UTF-8, strings escaped minimally
    (only ``"``, ``\\`` and control characters, with the short escapes where JSON has them), numbers in
    ECMAScript form (``1.0`` is ``1``, ``1e21`` is ``1e+21``). NaN, Infinity, lone surrogates and non-JSON
    types are refused. One deliberate difference from RFC 8785: integers are written exactly, however
    large, instead of being rounded through a double (an audit record should never lose digits).

    Most values take a fast path through the C ``json`` encoder, used only where its output is provably the
    same bytes (see :func:`_plain`); anything else goes through the reference emitter below.
    """
    try:
        plain = _plain(value)
    except _NotPlain:
        out: list[str] = []
        _emit(value, out)
        text = "".join(out)
    else:
        text = _plain_dumps(plain)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("canonical JSON cannot hold lone surrogates") from exc


class _NotPlain(Exception):
    """The value needs the reference emitter."""


#: ``json`` with sorted keys, no whitespace, only ``"``, ``\\`` and control characters escaped (the same C
#: ``encode_basestring`` the reference emitter uses), ints as ``int.__repr__``.
_plain_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"),
                                check_circular=False).encode


def _plain(value: Any) -> Any:
    """``value`` rewritten so that ``_plain_dumps`` writes exactly its canonical form, or ``_NotPlain``.

    That holds when every key is an ASCII string (then code-point order is UTF-16 order), every container is
    a dict, list or tuple, and every number an int or a float that ``repr`` writes the ECMAScript way:
    integral floats below 1e16 become ints (``1.0`` → ``1``, ``-0.0`` → ``0``), and other floats must lie in
    [1e-4, 1e16), where ``repr`` and ECMAScript both use plain decimal notation with the shortest digits.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                raise _NotPlain
            out[key] = _plain(item)
        return out
    if kind is list or kind is tuple:
        return [_plain(item) for item in value]
    if kind is float:
        magnitude = abs(value)
        if magnitude < 1e16 and value.is_integer():
            return int(value)
        if 1e-4 <= magnitude < 1e16:
            return value
    raise _NotPlain


# Fast path for the actor, hashed once per entry on the verification hot path: a flat object whose values
# are all str or None is cached by its items. Equality of str/None values implies identical serialisation,
# so the cache can never hand back the bytes of a different actor (unlike 1 == 1.0 == True).
_actor_cache: dict[tuple[tuple[Any, Any], ...], bytes] = {}
_ACTOR_CACHE_LIMIT = 4096


_actor_text_cache: dict[str, bytes] = {}


def _actor_bytes(actor: Any) -> bytes:
    if type(actor) is str:
        # The actor as JSON text (e.g. PostgreSQL's jsonb output). Equal texts are equal JSON values, so
        # their canonical forms are identical and can be cached by the text.
        cached = _actor_text_cache.get(actor)
        if cached is None:
            cached = canonical_json(json.loads(actor))
            if len(_actor_text_cache) >= _ACTOR_CACHE_LIMIT:
                _actor_text_cache.clear()
            _actor_text_cache[actor] = cached
        return cached
    if type(actor) is dict:
        for key, value in actor.items():
            if type(key) is not str or (value is not None and type(value) is not str):
                return canonical_json(actor)
        items = tuple(actor.items())
        cached = _actor_cache.get(items)
        if cached is None:
            cached = canonical_json(actor)
            if len(_actor_cache) >= _ACTOR_CACHE_LIMIT:
                _actor_cache.clear()
            _actor_cache[items] = cached
        return cached
    return canonical_json(actor)


def canonical_actor(actor: Mapping[str, Any] | str) -> bytes:
    """The canonical JSON of an actor (a dict, or its JSON text), as the entry hash covers it; cached."""
    return _actor_bytes(actor)


# --------------------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------------------


def chain_id_for_tenant(tenant_id: Any) -> str:
    """The chain an event belongs to: ``tenant:<uuid>`` per organisation, ``platform`` without one."""
    if tenant_id is None:
        return PLATFORM_CHAIN_ID
    return f"{TENANT_CHAIN_PREFIX}{tenant_id}"


def _expected_tenant(chain_id: str) -> tuple[bool, str | None]:
    """(whether the chain id pins the tenant, which tenant) for the naming convention above."""
    if chain_id == PLATFORM_CHAIN_ID:
        return True, None
    if chain_id.startswith(TENANT_CHAIN_PREFIX):
        return True, chain_id[len(TENANT_CHAIN_PREFIX) :]
    return False, None


def genesis_hash(chain_id: str) -> bytes:
    """The ``prev_hash`` of entry 1: SHA-256(b"clinomic-audit/genesis/v1\\x00" ‖ UTF-8 chain id).

    Bound to the chain id, so the start of one organisation's chain cannot pass for another's.
    """
    return hashlib.sha256(GENESIS_DOMAIN + chain_id.encode("utf-8")).digest()


def normalise_timestamp(value: str | datetime) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``, e.g. ``2025-01-02T03:04:05.000006Z``.

    A string is kept as given (it is what was recorded); a datetime must be timezone-aware.
    """
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_HEADER = struct.Struct(">QIIIIIII")
_sha256 = hashlib.sha256


def compute_entry_hash(
    chain_id: str,
    seq: int,
    prev_hash: bytes,
    *,
    event_id: str,
    event_type: str,
    actor: Mapping[str, Any] | bytes,
    tenant_id: str | None,
    occurred_at: str,
    content: bytes,
) -> bytes:
    """SHA-256 over the domain-separated encoding in the module docstring.

    ``actor`` is the dict, or its canonical JSON bytes when the caller already has them.
    """
    if len(prev_hash) != HASH_SIZE:
        raise ValueError("prev_hash must be 32 bytes")
    actor_b = actor if isinstance(actor, (bytes, bytearray)) else _actor_bytes(actor)
    chain_b = chain_id.encode()
    eid_b = event_id.encode()
    type_b = event_type.encode()
    occ_b = occurred_at.encode()
    if tenant_id is None:
        tenant_b = b""
        tenant_len = _NO_TENANT
    else:
        tenant_b = tenant_id.encode()
        tenant_len = len(tenant_b)
    header = _HEADER.pack(
        seq, len(chain_b), len(eid_b), len(type_b), len(actor_b), tenant_len, len(occ_b), len(content)
    )
    return _sha256(
        b"".join((ENTRY_DOMAIN, header, prev_hash, chain_b, eid_b, type_b, actor_b, tenant_b, occ_b, content))
    ).digest()


def entry_hmac(key: bytes, prev_hash: bytes, entry_hash: bytes) -> bytes:
    """HMAC-SHA256(key, prev_hash ‖ entry_hash)."""
    return _hmac.digest(key, prev_hash + entry_hash, "sha256")


class _FastHmac:
    """HMAC-SHA256 with the key's inner and outer pads hashed once (RFC 2104), for the hot loop.

    Gives exactly ``hmac.digest(key, msg, "sha256")``; saves the two pad compressions per call.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, msg: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One sealed entry of one chain. ``content`` is the event's canonical JSON; hashes are raw bytes."""

    chain_id: str
    seq: int
    event_id: str
    event_type: str
    actor: dict[str, Any]
    tenant_id: str | None
    occurred_at: str
    content: bytes
    prev_hash: bytes
    entry_hash: bytes
    key_id: str
    hmac: bytes


def seal(
    chain_id: str,
    seq: int,
    prev_hash: bytes,
    *,
    event_id: Any,
    event_type: str,
    actor: Mapping[str, Any],
    tenant_id: Any,
    occurred_at: str | datetime,
    content: Any,
    key_id: str,
    key: bytes,
) -> LedgerEntry:
    """Make entry ``seq`` of ``chain_id`` after the entry whose hash is ``prev_hash``.

    ``content`` may be canonical JSON bytes already, or any JSON value (it is canonicalised here).
    ``event_id`` and ``tenant_id`` may be UUIDs (stored as their string form). ``actor`` is canonicalised
    too, so a pydantic ``Actor`` should be passed as ``actor.model_dump(mode="json")``.
    """
    if seq < 1:
        raise ValueError("seq starts at 1")
    if not key_id:
        raise ValueError("key_id is required")
    if not key:
        raise ValueError("an empty HMAC key is not a key")
    content_b = bytes(content) if isinstance(content, (bytes, bytearray)) else canonical_json(content)
    actor_d = dict(actor)
    if not all(type(k) is str and (v is None or type(v) is str) for k, v in actor_d.items()):
        actor_d = json.loads(canonical_json(actor_d))  # a plain JSON dict, as it will read back from storage
    tenant = None if tenant_id is None else str(tenant_id)
    occurred = normalise_timestamp(occurred_at)
    event_id_s = str(event_id)
    entry_hash = compute_entry_hash(
        chain_id,
        seq,
        bytes(prev_hash),
        event_id=event_id_s,
        event_type=event_type,
        actor=actor_d,
        tenant_id=tenant,
        occurred_at=occurred,
        content=content_b,
    )
    return LedgerEntry(
        chain_id=chain_id,
        seq=seq,
        event_id=event_id_s,
        event_type=event_type,
        actor=actor_d,
        tenant_id=tenant,
        occurred_at=occurred,
        content=content_b,
        prev_hash=bytes(prev_hash),
        entry_hash=entry_hash,
        key_id=key_id,
        hmac=entry_hmac(key, bytes(prev_hash), entry_hash),
    )


def seal_envelope(
    chain_id: str, seq: int, prev_hash: bytes, envelope: Any, *, key_id: str, key: bytes
) -> LedgerEntry:
    """Seal a ``shared.events.envelope.Envelope``: the whole envelope (metadata and payload) is the content.

    Duck-typed on ``model_dump`` so that this module does not import pydantic.
    """
    data = envelope.model_dump(mode="json")
    return seal(
        chain_id,
        seq,
        prev_hash,
        event_id=data["event_id"],
        event_type=data["event_type"],
        actor=data["actor"],
        tenant_id=data["tenant_id"],
        occurred_at=_envelope_time(envelope, data),
        content=data,
        key_id=key_id,
        key=key,
    )


def _envelope_time(envelope: Any, data: Mapping[str, Any]) -> str | datetime:
    occurred = getattr(envelope, "occurred_at", None)
    if isinstance(occurred, datetime) and occurred.tzinfo is not None:
        return occurred
    return str(data["occurred_at"])


# --------------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of :func:`verify_chain`.

    ``checked`` counts the entries that passed every check. When ``ok`` is false, ``first_broken_seq`` is the
    position at which the chain stops being valid (for a deleted entry, the missing number) and ``reason``
    one of: ``"hash mismatch"``, ``"hmac mismatch"``, ``"sequence gap"``, ``"sequence out of order"``,
    ``"prev hash mismatch"``, ``"unknown key id"``, ``"chain id mismatch"``, ``"tenant mismatch"``,
    ``"non-canonical content"``, ``"malformed entry"``. ``last_seq``/``last_hash`` describe the last good
    entry, so a later call can carry on from there (``start_prev_hash=last_hash``,
    ``expected_first_seq=last_seq + 1``).
    """

    ok: bool
    checked: int
    first_broken_seq: int | None = None
    reason: str | None = None
    detail: str | None = None
    last_seq: int | None = None
    last_hash: bytes | None = None
    hmac_checked: bool = True


def verify_chain(
    entries: Iterable[LedgerEntry],
    keys: Mapping[str, bytes] | None,
    *,
    start_prev_hash: bytes | None = None,
    expected_first_seq: int = 1,
    chain_id: str | None = None,
    check_content: bool = False,
    on_hash: Callable[[bytes], object] | None = None,
) -> Verification:
    """Check a run of entries of one chain; stop at the first broken one.

    For every entry, in order: the chain id, the sequence number (``expected_first_seq``, then +1 each,
    no gaps), the link (its ``prev_hash`` is the previous entry's hash; for the first entry
    ``start_prev_hash``, by default the chain's genesis hash when starting at 1, and taken on trust when
    starting later without one), its recomputed hash, and its HMAC under ``keys[key_id]``.

    ``keys=None`` skips the HMAC (a public verifier has no secret; Merkle tree heads stand in for it).
    ``check_content`` also insists that ``content`` is canonical JSON (slower: it re-parses each entry).
    ``on_hash`` receives each entry's *recomputed* hash as soon as it is known (before the entry's own
    checks), e.g. to feed a Merkle tree in the same pass.
    """
    return _verify(entries, _ENTRY_FIELDS, keys, start_prev_hash, expected_first_seq, chain_id, check_content,
                   on_hash, None)


#: The fields of an entry in ``LedgerEntry`` order, in one C call.
_ENTRY_FIELDS = operator.attrgetter(*LedgerEntry.__slots__)


def verify_rows(
    rows: Iterable[Sequence[Any]],
    keys: Mapping[str, bytes] | None,
    *,
    chain_id: str,
    start_prev_hash: bytes | None = None,
    expected_first_seq: int = 1,
    check_content: bool = False,
    on_hash: Callable[[bytes], object] | None = None,
    leaves: list[bytes] | None = None,
) -> Verification:
    """:func:`verify_chain` for the rows of one chain rather than entries: each row holds the fields after
    ``chain_id`` in ``LedgerEntry`` order (``seq, event_id, event_type, actor, tenant_id, occurred_at, content,
    prev_hash, entry_hash, key_id, hmac``), e.g. a database record selected by chain id. ``actor`` may be a
    dict or its JSON text. The same checks, in the same order, with the same results; no object is built
    per row. ``leaves`` receives each recomputed hash's Merkle leaf hash (the hot path of a full check)."""
    return _verify(rows, None, keys, start_prev_hash, expected_first_seq, chain_id, check_content, on_hash,
                   leaves)


def _verify(
    entries: Iterable[Any],
    fields: Callable[[Any], Sequence[Any]] | None,
    keys: Mapping[str, bytes] | None,
    start_prev_hash: bytes | None,
    expected_first_seq: int,
    chain_id: str | None,
    check_content: bool,
    on_hash: Callable[[bytes], object] | None,
    leaves: list[bytes] | None,
) -> Verification:
    macs: dict[str, _FastHmac] = {}
    prev = start_prev_hash
    trust_first_link = prev is None and expected_first_seq != 1
    expected = expected_first_seq
    pinned = False
    want_tenant: str | None = None
    checked = 0
    last_hash: bytes | None = start_prev_hash
    check_hmac = keys is not None
    header_pack = _HEADER.pack
    join = b"".join
    sha = _sha256
    compare = _hmac.compare_digest
    domain = ENTRY_DOMAIN
    leaf_prefix = LEAF_PREFIX
    chain_b = b""
    actor_bytes = _actor_bytes
    add_leaf = None if leaves is None else leaves.append

    def broken(reason: str, detail: str) -> Verification:
        return Verification(
            ok=False,
            checked=checked,
            first_broken_seq=expected,
            reason=reason,
            detail=detail,
            last_seq=expected - 1 if checked or expected_first_seq > 1 else None,
            last_hash=last_hash,
            hmac_checked=check_hmac,
        )

    for entry in entries:
        try:
            if fields is None:
                entry_chain = chain_id
                (seq, event_id, event_type, actor, tenant, occurred_at, content, entry_prev, stored_hash, key_id,
                 stored_hmac) = entry
            else:
                (entry_chain, seq, event_id, event_type, actor, tenant, occurred_at, content, entry_prev,
                 stored_hash, key_id, stored_hmac) = fields(entry)
            if chain_id is None:
                chain_id = entry_chain
            if not chain_b:
                chain_b = chain_id.encode()
                pinned, want_tenant = _expected_tenant(chain_id)
                if prev is None and not trust_first_link:
                    prev = genesis_hash(chain_id)
            actor_b = actor_bytes(actor)
            eid_b = event_id.encode()
            type_b = event_type.encode()
            occ_b = occurred_at.encode()
            if tenant is None:
                tenant_b = b""
                tenant_len = _NO_TENANT
            else:
                tenant_b = tenant.encode()
                tenant_len = len(tenant_b)
            if len(entry_prev) != HASH_SIZE:
                return broken("malformed entry", f"prev_hash is {len(entry_prev)} bytes, not 32")
            computed = sha(
                join(
                    (
                        domain,
                        header_pack(
                            seq,
                            len(chain_b),
                            len(eid_b),
                            len(type_b),
                            len(actor_b),
                            tenant_len,
                            len(occ_b),
                            len(content),
                        ),
                        entry_prev,
                        chain_b,
                        eid_b,
                        type_b,
                        actor_b,
                        tenant_b,
                        occ_b,
                        content,
                    )
                )
            ).digest()
        except (AttributeError, TypeError, ValueError, struct.error, UnicodeError) as exc:
            return broken("malformed entry", f"{type(exc).__name__}: {exc}")
        if on_hash is not None:
            on_hash(computed)
        if add_leaf is not None:
            add_leaf(sha(leaf_prefix + computed).digest())
        if entry_chain != chain_id:
            return broken("chain id mismatch", f"entry belongs to {entry_chain!r}, not {chain_id!r}")
        if seq != expected:
            if type(seq) is not int:
                return broken("malformed entry", f"seq is {type(seq).__name__}")
            if seq > expected:
                return broken("sequence gap", f"expected seq {expected}, found {seq}")
            return broken("sequence out of order", f"expected seq {expected}, found {seq}")
        if entry_prev != prev:
            if prev is None:  # trusted first link of a partial run
                prev = entry_prev
            else:
                return broken("prev hash mismatch", "prev_hash is not the previous entry's hash")
        if computed != stored_hash:
            return broken("hash mismatch", "recomputed entry hash differs from the stored one")
        if pinned and tenant != want_tenant:
            return broken("tenant mismatch", f"tenant {tenant!r} on chain {chain_id!r}")
        if check_hmac:
            mac = macs.get(key_id)
            if mac is None:
                key = keys.get(key_id)  # type: ignore[union-attr]
                if key is None:
                    return broken("unknown key id", f"no HMAC key {key_id!r}")
                mac = macs[key_id] = _FastHmac(key)
            if not compare(mac.digest(entry_prev + computed), stored_hmac):
                return broken("hmac mismatch", f"HMAC under key {key_id!r} does not match")
        if check_content:
            try:
                canonical = canonical_json(json.loads(content)) == content
            except (ValueError, TypeError):
                canonical = False
            if not canonical:
                return broken("non-canonical content", "content is not canonical JSON")
        prev = computed
        last_hash = computed
        checked += 1
        expected += 1
    return Verification(
        ok=True,
        checked=checked,
        last_seq=expected - 1 if checked or expected_first_seq > 1 else None,
        last_hash=last_hash,
        hmac_checked=check_hmac,
    )
