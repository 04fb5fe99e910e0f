"""Chunk entries (pure, no platform): one ledger entry per requested, classified or recorded chunk commits to
every row, any row's proof verifies offline from its digest to a signed tree head, and any change to a row,
digest, path, root or entry fails with its reason."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from audit import domain
from audit.cli import app
from audit.handlers import item_of
from audit.ledger import LedgerEntry, canonical_json, genesis_hash, seal
from audit.merkle import MerkleTree, sign_tree_head
from audit.verifier import (
    SCREENING_PROOF_FORMAT,
    chunk_check,
    entry_from_json,
    entry_to_json,
    export_ledger,
    verify_export,
    verify_screening_proof,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from shared.events import Actor, new_envelope
from shared.events.batch import (
    SCREENING_BATCH_CLASSIFIED,
    SCREENING_BATCH_RECORDED_V2,
    SCREENING_BATCH_REQUESTED,
    BatchRow,
    ClassifiedRow,
    RecordedRow,
    ScreeningBatchClassifiedV1,
    ScreeningBatchRecordedV2,
    ScreeningBatchRequestedV1,
)
from shared.events.screening import CompleteBloodCount, PatientReference, ScreeningRecordedV1
from shared.kafka import encode
from tests.conftest import HEALTHY_CBC

TENANT = uuid.UUID("3f1d6c2e-8a4b-4c9d-9e0f-1a2b3c4d5e6f")
CHAIN = f"tenant:{TENANT}"
KEY = b"audit-signing-key-for-tests-0001"
SIGNER = Ed25519PrivateKey.generate()
PUBLIC = [SIGNER.public_key()]


# -- the pure row functions ---------------------------------------------------------------------------------

listed_rows = st.integers(1, 300).flatmap(
    lambda n: st.lists(
        st.tuples(st.integers(1, 100_000), st.uuids().map(str), st.binary(min_size=32, max_size=32)),
        min_size=n,
        max_size=n,
    )
)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(rows=listed_rows, data=st.data())
def test_any_row_of_any_chunk_of_1_to_300_rows_verifies_against_the_chunk_root(
    rows: list[domain.Listed], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(rows) - 1))
    root = domain.chunk_root(rows)
    assert domain.verify_row(rows[index], index, len(rows), domain.row_path(rows, index), root)


@settings(max_examples=120, deadline=None)
@given(rows=listed_rows, data=st.data())
def test_a_single_bit_changed_in_a_row_digest_path_or_root_fails(
    rows: list[domain.Listed], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(rows) - 1))
    root, path = domain.chunk_root(rows), domain.row_path(rows, index)
    row, sid, digest = rows[index]
    targets = ["digest", "root", "row", "screening_id"] + (["path"] if path else [])
    target = data.draw(st.sampled_from(targets))
    bit = data.draw(st.integers(0, 255))
    if target == "digest":
        digest = flip(digest, bit)
    elif target == "root":
        root = flip(root, bit)
    elif target == "row":
        row ^= 1 << (bit % 17)
    elif target == "screening_id":
        sid = str(uuid.UUID(bytes=flip(uuid.UUID(sid).bytes, bit)))
    else:
        element = data.draw(st.integers(0, len(path) - 1))
        path = [*path[:element], flip(path[element], bit), *path[element + 1 :]]
    assert not domain.verify_row((row, sid, digest), index, len(rows), path, root)


def test_a_row_digest_is_the_sha256_of_the_canonical_json_of_its_screening() -> None:
    screening = {"screening_id": str(uuid.uuid4()), "status": "rejected", "b": 1.0, "a": "é"}
    assert domain.row_digest(screening) == hashlib.sha256(canonical_json(screening)).digest()
    assert domain.row_digest(screening) == domain.row_digest(json.loads(json.dumps(screening, indent=2)))


def test_a_row_leaf_cannot_pass_for_the_same_digest_at_another_row() -> None:
    sid, digest = str(uuid.uuid4()), bytes(32)
    assert domain.row_leaf(1, sid, digest) != domain.row_leaf(2, sid, digest)


# -- what the subscriber keeps of a v2 chunk event ------------------------------------------------------------


def recorded(n: int) -> ScreeningRecordedV1:
    now = datetime.now(UTC)
    return ScreeningRecordedV1(
        screening_id=uuid.uuid4(), status="rejected", patient_external_id=f"LAB-{n:05d}", assessment=None,
        rejection_reason="the blood count is implausible", requested_at=now, recorded_at=now,
    )


def chunk_event(
    rows: int, first_row: int = 1, tenant: uuid.UUID = TENANT
) -> tuple[Any, ScreeningBatchRecordedV2]:
    payload = ScreeningBatchRecordedV2(
        job_id=uuid.uuid4(), chunk=0, recorded_at=datetime.now(UTC),
        rows=[RecordedRow(row=first_row + i, screening=recorded(i)) for i in range(rows)],
    )
    envelope = new_envelope(
        payload, event_type=SCREENING_BATCH_RECORDED_V2[0], event_version=SCREENING_BATCH_RECORDED_V2[1],
        tenant_id=tenant, actor=Actor(role="service", service="screening"),
    )
    return envelope, payload


def batch_row(row: int) -> BatchRow:
    return BatchRow(
        row=row, screening_id=uuid.uuid4(), patient=PatientReference(external_id=f"LAB-{row:05d}"),
        cbc=CompleteBloodCount.model_validate(HEALTHY_CBC), consent_id=uuid.uuid4(),
    )


def requested_event(
    rows: int, first_row: int = 1, tenant: uuid.UUID = TENANT
) -> tuple[Any, ScreeningBatchRequestedV1]:
    payload = ScreeningBatchRequestedV1(job_id=uuid.uuid4(), chunk=0, requested_at=datetime.now(UTC),
                                        rows=[batch_row(first_row + i) for i in range(rows)])
    envelope = new_envelope(
        payload, event_type=SCREENING_BATCH_REQUESTED[0], event_version=SCREENING_BATCH_REQUESTED[1],
        tenant_id=tenant, actor=Actor(role="lab_technician"),
    )
    return envelope, payload


def classified_event(
    rows: int, first_row: int = 1, tenant: uuid.UUID = TENANT
) -> tuple[Any, ScreeningBatchClassifiedV1]:
    _, requested = requested_event(rows, first_row)
    payload = ScreeningBatchClassifiedV1(
        job_id=requested.job_id, chunk=0, requested_at=requested.requested_at,
        rows=[ClassifiedRow(request=r, assessment=None, rejection_reason="not assessed")
              for r in requested.rows],
    )
    envelope = new_envelope(
        payload, event_type=SCREENING_BATCH_CLASSIFIED[0], event_version=SCREENING_BATCH_CLASSIFIED[1],
        tenant_id=tenant, actor=Actor(role="service", service="inference"),
    )
    return envelope, payload


def committed_rows(kind: str, payload: Any) -> list[tuple[int, str, dict[str, Any]]]:
    """Each row of a chunk as the ledger is specified to commit to it: number, screening id, the digested
    object (a recorded row's screening; a requested or classified row whole), all as published."""
    if kind == "recorded":
        return [(r.row, str(r.screening.screening_id), r.screening.model_dump(mode="json"))
                for r in payload.rows]
    if kind == "requested":
        return [(r.row, str(r.screening_id), r.model_dump(mode="json")) for r in payload.rows]
    return [(r.request.row, str(r.request.screening_id), r.model_dump(mode="json")) for r in payload.rows]


#: Each kind of chunk event, built for ``rows`` rows (of a tenant).
EVENTS: dict[str, Callable[..., tuple[Any, Any]]] = {
    "requested": requested_event, "classified": classified_event, "recorded": chunk_event,
}


def test_the_ledger_commits_to_the_three_bulk_chunk_events_as_shared_defines_them() -> None:
    kinds = {SCREENING_BATCH_REQUESTED, SCREENING_BATCH_CLASSIFIED, SCREENING_BATCH_RECORDED_V2}
    assert domain.CHUNK_KINDS == kinds


@pytest.mark.parametrize("kind", EVENTS)
def test_a_chunk_event_becomes_one_entry_listing_each_row_digest_in_order_under_their_root(kind: str) -> None:
    envelope, payload = EVENTS[kind](300)
    item = item_of(encode(envelope), "clinomic.screening.batch")
    kept = json.loads(item.content)["payload"]
    expected = committed_rows(kind, payload)
    assert [(r["row"], r["screening_id"]) for r in kept["rows"]] == [(row, sid) for row, sid, _ in expected]
    assert [r["sha256"] for r in kept["rows"]] == [domain.row_digest(obj).hex() for _, _, obj in expected]
    assert domain.chunk_root_problem(kept) is None
    assert (kept["job_id"], kept["chunk"]) == (str(payload.job_id), 0)


@pytest.mark.parametrize("kind", EVENTS)
def test_a_chunk_entry_keeps_no_row_content_but_every_screening_id_is_searchable(kind: str) -> None:
    envelope, payload = EVENTS[kind](300)
    item = item_of(encode(envelope), "clinomic.screening.batch")
    assert b"LAB-00001" not in item.content and b'"hb"' not in item.content
    assert b"consent_id" not in item.content
    assert {sid for _, sid, _ in committed_rows(kind, payload)} <= set(item.refs.split())


@pytest.mark.parametrize("kind", EVENTS)
def test_a_chunk_entry_is_the_same_bytes_whatever_the_key_order_it_was_published_in(kind: str) -> None:
    envelope, _ = EVENTS[kind](3)
    published = json.loads(encode(envelope))
    reordered = json.dumps(reverse_keys(published), indent=1).encode()
    assert item_of(reordered, "t").content == item_of(encode(envelope), "t").content


def reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: reverse_keys(value[k]) for k in reversed(value)}
    if isinstance(value, list):
        return [reverse_keys(v) for v in value]
    return value


@pytest.mark.parametrize("kind", ["requested", "classified"])
def test_any_row_of_a_command_chunk_is_provable_from_its_entry_and_the_row_as_published(kind: str) -> None:
    envelope, payload = EVENTS[kind](9)
    listed, root = domain.listed_rows(json.loads(item_of(encode(envelope), "t").content)["payload"])
    for index, (row, sid, published) in enumerate(committed_rows(kind, payload)):
        path = domain.row_path(listed, index)
        assert domain.verify_row((row, sid, domain.row_digest(published)), index, len(listed), path, root)


@pytest.mark.parametrize(
    ("kind", "breakage"),
    [
        ("recorded", lambda row: row["screening"].update(screening_id="not-a-uuid")),
        ("requested", lambda row: row.pop("screening_id")),
        ("classified", lambda row: row.pop("request")),
    ],
)
def test_a_chunk_event_of_another_shape_is_kept_whole(kind: str, breakage: Any) -> None:
    envelope, _ = EVENTS[kind](2)
    broken = json.loads(encode(envelope))
    breakage(broken["payload"]["rows"][0])
    item = item_of(json.dumps(broken).encode(), "clinomic.screening.batch")
    assert json.loads(item.content)["payload"] == broken["payload"]


# -- a proof, built as the audit API builds it, checked as the offline verifier checks it --------------------


def sealed(items: list[Any]) -> list[LedgerEntry]:
    prev, entries = genesis_hash(CHAIN), []
    for seq, item in enumerate(items, start=1):
        entry = seal(
            CHAIN, seq, prev, event_id=str(item.event_id), event_type=item.event_type, actor=item.actor,
            tenant_id=item.tenant_id, occurred_at=item.occurred_at, content=item.content, key_id="k1", key=KEY,
        )
        entries.append(entry)
        prev = entry.entry_hash
    return entries


def single_event() -> tuple[Any, ScreeningRecordedV1]:
    screening = recorded(0)
    envelope = new_envelope(
        screening, event_type="ScreeningRecorded", event_version=1, tenant_id=TENANT,
        actor=Actor(role="service", service="screening"),
    )
    return envelope, screening


@pytest.fixture(scope="module")
def chain() -> dict[str, Any]:
    """A chain of a single screening's entry and a 7-row chunk entry, with a signed head over both."""
    single, single_screening = single_event()
    chunk, payload = chunk_event(7, first_row=11)
    entries = sealed([item_of(encode(e), "t") for e in (single, chunk)])
    tree = MerkleTree()
    for e in entries:
        tree.append(e.entry_hash)
    head = sign_tree_head(tree.size, tree.root(), 1_750_000_000_000, SIGNER, chain_id=CHAIN)
    return {"entries": entries, "tree": tree, "head": head, "payload": payload, "single": single_screening}


def proof_of(chain: dict[str, Any], seq: int, screening_id: str) -> dict[str, Any]:
    entry: LedgerEntry = chain["entries"][seq - 1]
    tree: MerkleTree = chain["tree"]
    proof: dict[str, Any] = {
        "format": SCREENING_PROOF_FORMAT, "version": 1, "screening_id": screening_id, "kind": "entry",
        "row": None, "chain_id": CHAIN, "seq": seq, "tree_size": tree.size, "entry": entry_to_json(entry),
        "proof": [p.hex() for p in tree.inclusion_proof(seq - 1)], "tree_head": chain["head"],
    }
    payload = json.loads(entry.content)["payload"]
    if "rows_root" in payload:
        rows, root = domain.listed_rows(payload)
        index = [sid for _, sid, _ in rows].index(screening_id)
        proof["kind"] = "chunk_row"
        proof["row"] = {
            "index": index, "row": rows[index][0], "screening_id": screening_id, "sha256": rows[index][2].hex(),
            "rows": len(rows), "path": [h.hex() for h in domain.row_path(rows, index)], "rows_root": root.hex(),
        }
    return proof


def row_screening(chain: dict[str, Any], index: int) -> dict[str, Any]:
    return chain["payload"].rows[index].screening.model_dump(mode="json")


def test_a_bulk_row_proof_verifies_from_its_content_to_the_signed_tree_head(chain: dict[str, Any]) -> None:
    for index in range(7):
        screening = row_screening(chain, index)
        check = verify_screening_proof(
            proof_of(chain, 2, screening["screening_id"]), public_keys=PUBLIC, screening=screening
        )
        assert check.ok, check.summary()


def test_a_single_screening_proof_verifies_from_its_own_entry(chain: dict[str, Any]) -> None:
    screening = chain["single"].model_dump(mode="json")
    check = verify_screening_proof(proof_of(chain, 1, screening["screening_id"]), public_keys=PUBLIC,
                                   screening=screening)
    assert check.ok, check.summary()


def tampered(chain: dict[str, Any], what: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    screening = row_screening(chain, 3)
    proof = proof_of(chain, 2, screening["screening_id"])
    row = proof["row"]
    if what == "row content":
        screening = screening | {"rejection_reason": "changed"}
    elif what == "row digest":  # as the API answers: the digest, without the content
        row["sha256"] = flip(bytes.fromhex(row["sha256"]), 5).hex()
        return proof, None
    elif what == "row path":
        row["path"][0] = flip(bytes.fromhex(row["path"][0]), 9).hex()
    elif what == "listed digest":
        entry = proof["entry"]
        content = json.loads(entry["content"])
        content["payload"]["rows"][0]["sha256"] = "00" * 32
        entry["content"] = canonical_json(content).decode()
    elif what == "entry":
        proof["entry"]["occurred_at"] = "2020-01-01T00:00:00.000000Z"
    elif what == "inclusion":
        proof["proof"][0] = flip(bytes.fromhex(proof["proof"][0]), 1).hex()
    elif what == "tree head":
        proof["tree_head"] = proof["tree_head"] | {"root_hash": "11" * 32}
    return proof, screening


@pytest.mark.parametrize(
    ("what", "reason"),
    [
        ("row content", "row content mismatch"),
        ("row digest", "row digest mismatch"),
        ("row path", "row path mismatch"),
        ("listed digest", "chunk root mismatch"),
        ("entry", "entry not included"),
        ("inclusion", "entry not included"),
        ("tree head", "bad tree head signature"),
    ],
)
def test_a_tampered_bulk_row_proof_fails_with_its_reason(chain: dict[str, Any], what: str, reason: str) -> None:
    proof, screening = tampered(chain, what)
    check = verify_screening_proof(proof, public_keys=PUBLIC, screening=screening)
    assert (check.ok, check.reason) == (False, reason), check.summary()


def test_a_proof_under_another_public_key_fails(chain: dict[str, Any]) -> None:
    screening = row_screening(chain, 0)
    check = verify_screening_proof(
        proof_of(chain, 2, screening["screening_id"]), public_keys=[Ed25519PrivateKey.generate().public_key()]
    )
    assert (check.ok, check.reason) == (False, "bad tree head signature")


# -- the whole-chain verifier recomputes every chunk entry's root ---------------------------------------------


def exported(entries: list[LedgerEntry]) -> io.StringIO:
    out = io.StringIO()
    export_ledger(entries, out, chain_id=CHAIN)
    out.seek(0)
    return out


def test_the_chain_verifier_recomputes_each_chunk_root_from_its_listed_digests(chain: dict[str, Any]) -> None:
    report = verify_export(exported(chain["entries"]), tree_heads=[chain["head"]], public_keys=PUBLIC)
    assert report.ok and report.chunk_entries == 1, report.summary()


def with_listed_digest(entry: LedgerEntry, digest: str) -> bytes:
    """The entry's content with its second listed row digest replaced (rows_root left as sealed)."""
    content = json.loads(entry.content)
    content["payload"]["rows"][1]["sha256"] = digest
    return canonical_json(content)


def resealed(entries: list[LedgerEntry], seq: int, content: bytes) -> list[LedgerEntry]:
    """The chain with entry ``seq``'s content replaced and every hash and HMAC from there recomputed, as
    someone holding the HMAC key would."""
    out, prev = list(entries[: seq - 1]), entries[seq - 2].entry_hash if seq > 1 else genesis_hash(CHAIN)
    for entry in entries[seq - 1 :]:
        out.append(seal(
            CHAIN, entry.seq, prev, event_id=entry.event_id, event_type=entry.event_type, actor=entry.actor,
            tenant_id=entry.tenant_id, occurred_at=entry.occurred_at, key_id="k1", key=KEY,
            content=content if entry.seq == seq else entry.content,
        ))
        prev = out[-1].entry_hash
    return out


@pytest.fixture(scope="module")
def bulk_chain() -> list[LedgerEntry]:
    """A chain of one chunk entry of each kind: requested (1), classified (2), recorded (3)."""
    kinds = ("requested", "classified", "recorded")
    return sealed([item_of(encode(EVENTS[kind](5)[0]), "t") for kind in kinds])


def test_the_chain_verifier_checks_the_chunk_entries_of_every_kind(bulk_chain: list[LedgerEntry]) -> None:
    report = verify_export(exported(bulk_chain))
    assert report.ok and report.chunk_entries == 3, report.summary()


@pytest.mark.parametrize("seq", [1, 2, 3])
def test_a_listed_digest_changed_with_the_hmac_key_fails_the_chain_verifier_at_its_entry(
    bulk_chain: list[LedgerEntry], seq: int
) -> None:
    tampered_chain = resealed(bulk_chain, seq, with_listed_digest(bulk_chain[seq - 1], "ab" * 32))
    report = verify_export(exported(tampered_chain), hmac_keys={"k1": KEY})
    assert report.chain.ok and not report.ok
    problem = "chunk root mismatch (the listed row digests do not hash to rows_root)"
    assert report.problems == [f"entry {seq}: {problem}"]


def test_a_chunk_entry_sealed_with_a_wrong_root_fails_the_chain_verifier(chain: dict[str, Any]) -> None:
    entry = chain["entries"][1]
    content = json.loads(entry.content)
    content["payload"]["rows_root"] = "22" * 32
    report = verify_export(exported(resealed(chain["entries"], 2, canonical_json(content))))
    assert not report.ok
    assert report.problems == ["entry 2: chunk root mismatch (the listed row digests do not hash to rows_root)"]


def test_chunk_check_says_whether_an_entry_is_a_chunk_commitment_and_what_is_wrong_with_it(
    bulk_chain: list[LedgerEntry], chain: dict[str, Any]
) -> None:
    single, requested = chain["entries"][0], bulk_chain[0]
    assert chunk_check(single.event_type, single.content) == (False, None)
    assert chunk_check(requested.event_type, requested.content) == (True, None)
    assert chunk_check(requested.event_type, with_listed_digest(requested, "cd" * 32)) == (
        True, "chunk root mismatch (the listed row digests do not hash to rows_root)")
    assert chunk_check(requested.event_type, b"not json") == (False, None)


def test_a_chunk_kept_whole_is_no_chunk_entry() -> None:
    envelope, _ = requested_event(2)
    whole = json.loads(encode(envelope))
    assert chunk_check(envelope.event_type, canonical_json(whole)) == (False, None)


@pytest.mark.parametrize("seq", [1, 2])
def test_a_command_chunk_entry_proves_no_recording(bulk_chain: list[LedgerEntry], seq: int) -> None:
    """A screening's proof is of its recording: a requested or classified chunk lists the screening too, and a
    proof that offers one of them instead of the recorded chunk's entry fails."""
    entries = bulk_chain[:seq]
    tree = MerkleTree()
    for e in entries:
        tree.append(e.entry_hash)
    head = sign_tree_head(tree.size, tree.root(), 1_750_000_000_000, SIGNER, chain_id=CHAIN)
    proof = proof_of({"entries": entries, "tree": tree, "head": head}, seq,
                     json.loads(entries[-1].content)["payload"]["rows"][0]["screening_id"])
    check = verify_screening_proof(proof, public_keys=PUBLIC)
    assert (check.ok, check.reason) == (False, "not a chunk entry"), check.summary()


def test_an_exported_chunk_entry_reads_back_byte_exact(chain: dict[str, Any]) -> None:
    entry = chain["entries"][1]
    assert entry_from_json(json.loads(json.dumps(entry_to_json(entry))), CHAIN) == entry


# -- the command ---------------------------------------------------------------------------------------------


def cli_files(tmp_path: Any, proof: dict[str, Any], screening: dict[str, Any]) -> list[str]:
    (tmp_path / "proof.json").write_text(json.dumps(proof))
    (tmp_path / "screening.json").write_text(json.dumps(screening))
    (tmp_path / "log.pub.pem").write_bytes(
        PUBLIC[0].public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return ["verify-proof", str(tmp_path / "proof.json"), "--public-key", str(tmp_path / "log.pub.pem"),
            "--screening", str(tmp_path / "screening.json")]


def test_verify_proof_command_accepts_a_sound_proof(chain: dict[str, Any], tmp_path: Any) -> None:
    screening = row_screening(chain, 6)
    result = CliRunner().invoke(app, cli_files(tmp_path, proof_of(chain, 2, screening["screening_id"]), screening))
    assert result.exit_code == 0, result.output
    assert "RESULT: OK" in result.output


def test_verify_proof_command_exits_1_naming_what_failed(chain: dict[str, Any], tmp_path: Any) -> None:
    proof, screening = tampered(chain, "row path")
    assert screening is not None
    result = CliRunner().invoke(app, cli_files(tmp_path, proof, screening))
    assert result.exit_code == 1, result.output
    assert "RESULT: FAILED: row path mismatch" in result.output
