"""Reading v1 (clinomic_ops.v1.source): mongodump directories (plain and gzipped BSON, one database or a dump
root), what is refused with one clear line, and the live path through pymongo against the wire-protocol
stand-in (no MongoDB server can run here)."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import bson
import pytest

from clinomic_ops.pgtools import OpsError
from clinomic_ops.v1.source import DumpSource, MongoSource, redact_uri
from tests.operations.v1_fixtures import V1Data, mongo_stand_in, write_dump


def test_a_dump_root_with_one_database_is_read_like_its_database_directory(tmp_path: Path) -> None:
    data = V1Data()
    write_dump(data, tmp_path)
    assert DumpSource(tmp_path).root == tmp_path / "clinomic"
    assert [d["id"] for d in DumpSource(tmp_path / "clinomic").documents("labs", None)] == [f"LAB-{data.suffix}"]


def test_gzipped_bson_files_are_read(tmp_path: Path) -> None:
    data = V1Data()
    users = b"".join(bson.encode(d) for d in data.collections["users"])
    (tmp_path / "users.bson.gz").write_bytes(gzip.compress(users))
    assert len(list(DumpSource(tmp_path).documents("users", data.org_b))) == 1


def test_a_collection_v1_never_wrote_reads_as_empty(tmp_path: Path) -> None:
    write_dump(V1Data(), tmp_path)
    assert list(DumpSource(tmp_path).documents("never_written", None)) == []


def test_a_dump_with_several_databases_needs_db(tmp_path: Path) -> None:
    data = V1Data()
    write_dump(data, tmp_path, database="clinomic")
    write_dump(data, tmp_path, database="clinomic_pilot")
    with pytest.raises(OpsError, match=r"several databases \(clinomic, clinomic_pilot\)"):
        DumpSource(tmp_path)
    assert DumpSource(tmp_path, "clinomic_pilot").root.name == "clinomic_pilot"


def test_an_archive_file_is_refused_with_what_to_do_instead(tmp_path: Path) -> None:
    archive = tmp_path / "clinomic_20250101_000000.gz"
    archive.write_bytes(b"\x1f\x8b")
    with pytest.raises(OpsError, match="--archive output is not supported"):
        DumpSource(archive)


def test_a_corrupt_bson_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "patients.bson").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(OpsError, match="patients.bson: not a readable BSON dump"):
        list(DumpSource(tmp_path).documents("patients", None))


def test_a_directory_without_bson_files_is_not_a_dump(tmp_path: Path) -> None:
    with pytest.raises(OpsError, match="not a mongodump directory"):
        DumpSource(tmp_path)


def test_the_password_never_appears_in_a_described_uri() -> None:
    assert redact_uri("mongodb://v1:s3cret@db:27017/clinomic") == "mongodb://v1:***@db:27017/clinomic"


def test_the_live_source_reads_every_batch_of_one_organisation() -> None:
    data = V1Data()
    with mongo_stand_in({"clinomic": data.collections}) as server:
        host, port = server.server_address
        source = MongoSource(f"mongodb://{host}:{port}/", None, timeout=5, batch_size=2)
        try:
            patients = list(source.documents("patients", data.org_a))
        finally:
            source.close()
    assert source.database == "clinomic" and len(patients) == 5 and "getMore" in server.commands


def test_an_unreachable_server_fails_within_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(OpsError, match="MongoDB at 127.0.0.1:9 cannot be reached"):
        MongoSource("mongodb://127.0.0.1:9/clinomic", None, timeout=0.5, batch_size=10)
    assert time.monotonic() - started < 20  # pymongo would wait 30 s without the timeout
