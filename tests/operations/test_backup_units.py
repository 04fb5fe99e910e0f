"""The pure parts of `clinomic-ops` backup and restore (no platform, no database): connection settings for
the PostgreSQL clients, the choice of client binary, cutting the external tree-head log to the snapshot, and
the checks a restore makes before it changes anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clinomic_ops import backup, pgtools, restore


def test_libpq_environment_from_a_socket_url_of_the_embedded_server() -> None:
    env = pgtools.libpq_env("postgresql+asyncpg://postgres@/clinomic?host=/tmp/pg-sock")
    assert env == {"PGHOST": "/tmp/pg-sock", "PGUSER": "postgres", "PGDATABASE": "clinomic"}


def test_libpq_environment_keeps_the_password_out_of_the_command_line() -> None:
    env = pgtools.libpq_env("postgresql+asyncpg://admin:s%40cret@db.internal:6543/clinomic")
    assert env == {
        "PGHOST": "db.internal",
        "PGPORT": "6543",
        "PGUSER": "admin",
        "PGPASSWORD": "s@cret",
        "PGDATABASE": "clinomic",
    }


def test_client_binary_matches_the_servers_major_version() -> None:
    found = {}
    for directory in pgtools.candidate_dirs():
        binary = pgtools.binary_version(directory / "pg_dump") if (directory / "pg_dump").exists() else None
        if binary is not None:
            found.setdefault(binary.major, binary)
    if not found:
        pytest.skip("no pg_dump on this machine")
    for major in found:
        assert pgtools.find_binary("pg_dump", major).major == major
    with pytest.raises(pgtools.OpsError, match="PG_BIN_DIR"):
        pgtools.find_binary("pg_dump", max(found) + 1)


def _head(size: int, ts: int) -> str:
    return json.dumps({"chain_id": "platform", "tree_size": size, "timestamp": ts, "root_hash": "00"})


def test_tree_head_log_is_cut_to_the_snapshot(tmp_path: Path) -> None:
    """Kept: heads the snapshot holds, and older heads it lacks (evidence of a deletion); left out: heads
    signed after the snapshot, which would claim entries the backup does not have."""
    source, target = tmp_path / "log", tmp_path / "out"
    source.mkdir()
    in_db, deleted, later = _head(5, 1000), _head(3, 900), _head(9, 2000)
    (source / "platform.jsonl").write_text(f"{deleted}\n{in_db}\n{later}\n")
    summary = backup._cut_tree_heads(source, target, {"platform": {}}, {"platform": {in_db}})
    assert (target / "platform.jsonl").read_text().splitlines() == [deleted, in_db]
    assert summary["kept"] == 2 and summary["left_out"] == 1


def _backup_dir(tmp_path: Path) -> tuple[Path, dict]:
    directory = tmp_path / "clinomic-x"
    directory.mkdir()
    (directory / backup.DUMP_FILE).write_bytes(b"archive bytes")
    manifest = {
        "format": backup.FORMAT,
        "files": {
            backup.DUMP_FILE: {"bytes": 13, "sha256": backup.sha256_file(directory / backup.DUMP_FILE)}
        },
    }
    (directory / backup.MANIFEST).write_text(json.dumps(manifest))
    return directory, manifest


def test_restore_accepts_files_that_match_the_manifest(tmp_path: Path) -> None:
    directory, _ = _backup_dir(tmp_path)
    restore.check_files(directory, restore.load_manifest(directory), progress=False)


def test_restore_refuses_a_changed_file(tmp_path: Path) -> None:
    directory, manifest = _backup_dir(tmp_path)
    (directory / backup.DUMP_FILE).write_bytes(b"archive bytez")
    with pytest.raises(pgtools.OpsError, match="SHA-256 does not match"):
        restore.check_files(directory, manifest, progress=False)


def test_restore_refuses_a_truncated_or_extra_file(tmp_path: Path) -> None:
    directory, manifest = _backup_dir(tmp_path)
    (directory / backup.DUMP_FILE).write_bytes(b"archive")
    (directory / "stray.sql").write_text("DROP TABLE audit.entries;")
    with pytest.raises(pgtools.OpsError, match="has 7 bytes.*|stray.sql is not in the manifest"):
        restore.check_files(directory, manifest, progress=False)


def test_restore_refuses_a_manifest_that_is_not_json(tmp_path: Path) -> None:
    directory, _ = _backup_dir(tmp_path)
    (directory / backup.MANIFEST).write_text("{not json")
    with pytest.raises(pgtools.OpsError, match="the backup is corrupt"):
        restore.load_manifest(directory)


def test_restore_refuses_keys_that_do_not_fit_before_changing_anything() -> None:
    from audit.ledger import entry_hmac
    from audit.merkle import sign_tree_head
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from shared.crypto import PhiCipher, key_id

    phi_key, hmac_key, signer = Fernet.generate_key(), b"k" * 32, Ed25519PrivateKey.generate()
    prev, entry = b"\x01" * 32, b"\x02" * 32
    manifest = {
        "phi_key_ids": {"tenant_" + "a" * 32: {key_id(phi_key): 3}},
        "audit": {
            "chains": {
                "platform": {
                    "last_entry": {
                        "seq": 4,
                        "key_id": "k1",
                        "prev_hash": prev.hex(),
                        "entry_hash": entry.hex(),
                        "hmac": entry_hmac(hmac_key, prev, entry).hex(),
                    },
                    "newest_tree_head": sign_tree_head(4, b"\x03" * 32, 1000, signer, chain_id="platform"),
                }
            }
        },
    }
    right = restore.Keys(PhiCipher([phi_key]), {"k1": hmac_key}, [signer.public_key()])
    restore.check_keys(manifest, right)
    for wrong, named in (
        (
            restore.Keys(PhiCipher([Fernet.generate_key()]), right.hmac, right.tree_head_public),
            "MASTER_ENCRYPTION_KEY",
        ),
        (restore.Keys(right.phi, {"k1": b"x" * 32}, right.tree_head_public), "AUDIT_SIGNING_KEY"),
        (restore.Keys(right.phi, {"k2": hmac_key}, right.tree_head_public), "not configured"),
        (restore.Keys(right.phi, right.hmac, [Ed25519PrivateKey.generate().public_key()]), "tree-head keys"),
    ):
        with pytest.raises(pgtools.OpsError, match=named):
            restore.check_keys(manifest, wrong)
