"""The export format and the standalone verifier command, end to end on temporary files."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from audit.cli import app
from audit.ledger import LedgerEntry, compute_entry_hash, genesis_hash
from audit.merkle import MerkleTree, sign_tree_head
from audit.verifier import export_ledger, read_export, verify_export
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from .conftest import CHAIN, KEY, KEY_ID, build_chain

runner = CliRunner()


@dataclasses.dataclass
class Files:
    ledger: Path
    heads: Path
    public_key: Path
    hmac_keys: Path
    entries: list[LedgerEntry]

    def args(self, *extra: str, hmac: bool = True) -> list[str]:
        base = [
            "verify",
            str(self.ledger),
            "--tree-heads",
            str(self.heads),
            "--public-key",
            str(self.public_key),
        ]
        if hmac:
            base += ["--hmac-key-file", str(self.hmac_keys)]
        return base + list(extra)

    def rewrite_line(self, seq: int, change) -> None:  # noqa: ANN001
        lines = self.ledger.read_text(encoding="utf-8").splitlines(keepends=True)
        obj = json.loads(lines[seq])
        change(obj)
        lines[seq] = json.dumps(obj) + "\n"
        self.ledger.write_text("".join(lines), encoding="utf-8")


@pytest.fixture
def files(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Files:
    entries = build_chain(12)
    ledger = tmp_path / "ledger.jsonl"
    export_ledger(entries, ledger, chain_id=CHAIN)
    tree = MerkleTree()
    for e in entries:
        tree.append(e.entry_hash)
    heads = tmp_path / "heads.jsonl"
    heads.write_text(
        "".join(
            json.dumps(sign_tree_head(n, tree.root(n), 1_750_000_000_000 + n, signing_key, chain_id=CHAIN))
            + "\n"
            for n in (4, 12)
        )
    )
    public_key = tmp_path / "log.pub.pem"
    public_key.write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    hmac_keys = tmp_path / "keys.json"
    hmac_keys.write_text(json.dumps({KEY_ID: base64.b64encode(KEY).decode()}))
    return Files(ledger, heads, public_key, hmac_keys, entries)


def test_export_reads_back_as_the_same_entries() -> None:
    entries = build_chain(5)
    buffer = io.StringIO()
    assert export_ledger(entries, buffer, chain_id=CHAIN) == 5
    buffer.seek(0)
    header, read = read_export(buffer)
    assert header["chain_id"] == CHAIN and header["start_prev_hash"] == genesis_hash(CHAIN).hex()
    assert list(read) == entries


def test_export_keeps_content_that_is_not_utf8_exact() -> None:
    entries = [dataclasses.replace(build_chain(1)[0], content=b"\xff\xfe")]
    buffer = io.StringIO()
    export_ledger(entries, buffer, chain_id=CHAIN)
    buffer.seek(0)
    _, read = read_export(buffer)
    assert next(read).content == b"\xff\xfe"


def test_cli_verify_accepts_an_intact_export(files: Files) -> None:
    result = runner.invoke(app, files.args())
    assert result.exit_code == 0, result.output
    assert "RESULT: OK" in result.output and "12 entries verified with HMAC" in result.output


def test_cli_verify_reports_the_first_broken_entry_and_why(files: Files) -> None:
    files.rewrite_line(7, lambda o: o.update(event_type="screening.result.deleted"))
    result = runner.invoke(app, files.args())
    assert result.exit_code == 1
    assert "BROKEN at seq 7: hash mismatch" in result.output
    assert "first broken entry: 7" in result.output


def test_cli_verify_with_hmac_key_catches_recomputed_hashes(files: Files) -> None:
    # Rewrite entry 12 (the last) and recompute its hash: links stay intact, HMAC does not.
    last = files.entries[-1]
    forged = b'{"payload":{"risk":"normal"}}'
    h = compute_entry_hash(
        CHAIN,
        12,
        last.prev_hash,
        event_id=last.event_id,
        event_type=last.event_type,
        actor=last.actor,
        tenant_id=last.tenant_id,
        occurred_at=last.occurred_at,
        content=forged,
    )
    files.rewrite_line(12, lambda o: o.update(content=forged.decode(), entry_hash=h.hex()))
    with_key = runner.invoke(app, files.args())
    assert with_key.exit_code == 1 and "BROKEN at seq 12: hmac mismatch" in with_key.output
    without_key = runner.invoke(app, files.args(hmac=False))
    assert without_key.exit_code == 1 and "root mismatch" in without_key.output


def test_cli_verify_reports_a_deleted_entry(files: Files) -> None:
    lines = files.ledger.read_text().splitlines(keepends=True)
    del lines[3]  # seq 3
    files.ledger.write_text("".join(lines))
    result = runner.invoke(app, files.args())
    assert result.exit_code == 1 and "BROKEN at seq 3: sequence gap" in result.output


def test_cli_verify_reports_an_unreadable_line_where_it_is(files: Files) -> None:
    lines = files.ledger.read_text().splitlines(keepends=True)
    lines[5] = "{not json\n"
    files.ledger.write_text("".join(lines))
    result = runner.invoke(app, files.args())
    assert result.exit_code == 1 and "BROKEN at seq 5: malformed entry" in result.output
    assert "line 6" in result.output


def test_cli_verify_json_output_is_machine_readable(files: Files) -> None:
    result = runner.invoke(app, files.args("--json"))
    report = json.loads(result.output)
    assert report["ok"] is True and report["entries"] == 12
    assert [h["status"] for h in report["tree_heads"]] == ["ok", "ok"]


def test_cli_verify_warns_that_without_tree_heads_or_keys_hashes_prove_little(files: Files) -> None:
    result = runner.invoke(app, ["verify", str(files.ledger)])
    assert result.exit_code == 0
    assert "HMACs not checked" in result.output and "no signed tree heads checked" in result.output
    strict = runner.invoke(app, ["verify", str(files.ledger), "--require-tree-heads"])
    assert strict.exit_code == 1


def test_cli_verify_rejects_a_tree_head_signed_by_another_key(files: Files, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    result = runner.invoke(
        app, ["verify", str(files.ledger), "--tree-heads", str(files.heads), "--public-key", str(other)]
    )
    assert result.exit_code == 1 and "bad signature" in result.output


@pytest.mark.parametrize("problem", ["missing ledger", "not an export", "heads without key", "bad hmac keys"])
def test_cli_verify_exits_2_on_unreadable_input(files: Files, tmp_path: Path, problem: str) -> None:
    args = files.args()
    if problem == "missing ledger":
        args[1] = str(tmp_path / "nope.jsonl")
    elif problem == "not an export":
        files.ledger.write_text('{"format": "something else"}\n')
    elif problem == "heads without key":
        args = ["verify", str(files.ledger), "--tree-heads", str(files.heads)]
    else:
        files.hmac_keys.write_text('{"k1": "not base64!"}')
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output


def test_verifier_command_runs_as_a_program_on_a_temp_file(files: Files) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "audit.cli", *files.args()], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "RESULT: OK" in done.stdout


def test_partial_export_verifies_its_chain_but_cannot_check_tree_heads(
    files: Files, signing_key: Ed25519PrivateKey
) -> None:
    entries = files.entries
    buffer = io.StringIO()
    export_ledger(entries[6:], buffer, chain_id=CHAIN, first_seq=7, start_prev_hash=entries[5].entry_hash)
    buffer.seek(0)
    head = sign_tree_head(12, bytes(32), 1, signing_key, chain_id=CHAIN)
    report = verify_export(
        buffer, tree_heads=[head], public_keys=[signing_key.public_key()], hmac_keys={KEY_ID: KEY}
    )
    assert report.chain.ok and report.chain.checked == 6
    assert report.tree_heads[0].status == "not checkable"


def test_cli_bench_prints_speed_tree_build_time_and_proof_latency() -> None:
    result = runner.invoke(app, ["bench", "--entries", "3000", "--proofs", "50", "--chunk", "1000", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout[result.stdout.index("{") :])
    for name in (
        "verify_chain_entries_per_s",
        "tree_append_s",
        "inclusion_proof_ms_mean",
        "file_verify_entries_per_s",
    ):
        assert figures[name] is not None
