"""Backups in S3-compatible storage (docs/operations.md, "S3"): upload after `clinomic-ops backup`, retention
with `--keep`, restore and verify from an `s3://` URL, and the failures that must change nothing.

No cloud is reachable here: the S3 endpoint is moto's server mode (a real HTTP S3 API in a thread of the test
process). PostgreSQL is the session platform's server, with a small database of this module's own (its
backup holds no ledger chain sealed with other tests' keys). The commands run as subprocesses, as an
operator runs them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from devstack import infra, stack
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from clinomic_ops import s3
from clinomic_ops.pgtools import OpsError

BUCKET = "clinomic-backups"
PREFIX = "site-a/"

names = st.builds(
    lambda d, t: f"clinomic-{d:08d}T{t:06d}Z", st.integers(20200101, 20301231), st.integers(0, 235959)
)


# -- pure rules ------------------------------------------------------------------------------------------


@given(st.sets(names, max_size=30), st.integers(1, 10))
def test_retention_deletes_exactly_the_oldest_beyond_keep(stored: set[str], keep: int) -> None:
    pruned = s3.to_prune(stored, keep)
    kept = sorted(stored - set(pruned))
    assert len(kept) == min(keep, len(stored))
    assert all(old < new for old in pruned for new in kept)


def test_retention_never_counts_or_deletes_names_backup_does_not_write() -> None:
    assert s3.to_prune(["notes", "clinomic-latest", "clinomic-20260101T000000Z"], 1) == []


def test_only_backups_with_a_stored_manifest_are_listed() -> None:
    keys = [
        f"{PREFIX}clinomic-20260101T000000Z/database.dump",
        f"{PREFIX}clinomic-20260101T000000Z/manifest.json",
        f"{PREFIX}clinomic-20260102T000000Z/database.dump",  # an interrupted upload
        f"{PREFIX}other/manifest.json",
        "elsewhere/clinomic-20260103T000000Z/manifest.json",
    ]
    assert s3.stored_backups(keys, PREFIX) == ["clinomic-20260101T000000Z"]


def test_an_s3_url_names_bucket_prefix_and_backup() -> None:
    assert s3.parse_url("s3://b/x/y/clinomic-20260101T000000Z/") == ("b", "x/y/", "clinomic-20260101T000000Z")
    assert s3.parse_url("s3://b/clinomic-20260101T000000Z") == ("b", "", "clinomic-20260101T000000Z")


@pytest.mark.parametrize("url", ["s3://bucket", "s3:///name", "s3://b/../name", "/local/dir"])
def test_an_s3_url_without_a_backup_name_is_refused(url: str) -> None:
    with pytest.raises(OpsError):
        s3.parse_url(url)


def test_a_stored_key_that_would_leave_the_backup_directory_is_refused() -> None:
    with pytest.raises(OpsError):
        s3.relative_file("p/clinomic-x/../../etc/passwd", "p/clinomic-x/")


# -- against a real S3 endpoint and PostgreSQL --------------------------------------------------------------


def ops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clinomic_ops.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = infra.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "moto-test", "AWS_SECRET_ACCESS_KEY": "moto-test-secret",
               "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def bucket(endpoint: str) -> Any:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
async def admin_engine(platform: stack.Platform) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(make_url(platform.env["DATABASE_URL"]).set(database="postgres"),
                                 isolation_level="AUTOCOMMIT")
    yield engine
    await engine.dispose()


def _database(platform: stack.Platform, prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = make_url(platform.env["DATABASE_URL"]).set(database=name).render_as_string(hide_password=False)
    return name, url


async def _drop(admin: AsyncEngine, name: str) -> None:
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _exists(admin: AsyncEngine, name: str) -> bool:
    async with admin.connect() as conn:
        return bool(await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}))


@pytest.fixture(scope="module")
async def source(platform: stack.Platform, admin_engine: AsyncEngine) -> AsyncIterator[str]:
    """A small database of the module's own: three readings in one table."""
    name, url = _database(platform, "s3src")
    async with admin_engine.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE readings (id int PRIMARY KEY, note text)"))
        await conn.execute(text("INSERT INTO readings VALUES (1, 'a'), (2, 'b'), (3, 'c')"))
    await engine.dispose()
    yield url
    await _drop(admin_engine, name)


def environment(platform: stack.Platform, tmp: Path, endpoint: str, **extra: str) -> dict[str, str]:
    return {**platform.env, **CREDENTIALS, "S3_BUCKET": BUCKET, "S3_PREFIX": PREFIX, "S3_ENDPOINT_URL": endpoint,
            "AUDIT_TREE_HEAD_DIR": str(tmp / "heads"), **extra}


@pytest.fixture(scope="module")
def uploaded(platform: stack.Platform, source: str, endpoint: str, bucket: Any,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One backup of the source database, uploaded; its summary and local directory."""
    import json

    tmp = tmp_path_factory.mktemp("s3")
    result = ops("backup", str(tmp / "backups"), "--database-url", source, "--json",
                 env=environment(platform, tmp, endpoint))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _objects(bucket: Any, prefix: str) -> dict[str, bytes]:
    listed = bucket.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: bucket.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


@pytest.mark.integration
def test_backup_with_a_bucket_stores_every_file_of_the_backup_byte_for_byte(uploaded: dict[str, Any],
                                                                           bucket: Any) -> None:
    local = Path(uploaded["backup"])
    stored = _objects(bucket, f"{PREFIX}{local.name}/")
    expected = {f"{PREFIX}{local.name}/{p.relative_to(local).as_posix()}": p.read_bytes()
                for p in local.rglob("*") if p.is_file()}
    assert {k: hashlib.sha256(v).hexdigest() for k, v in stored.items()} == {
        k: hashlib.sha256(v).hexdigest() for k, v in expected.items()}
    assert uploaded["s3_url"] == f"s3://{BUCKET}/{PREFIX}{local.name}"


@pytest.mark.integration
def test_keep_deletes_the_oldest_backups_and_nothing_else(platform: stack.Platform, source: str, endpoint: str,
                                                          bucket: Any, uploaded: dict[str, Any],
                                                          tmp_path: Path) -> None:
    import json

    old = ["clinomic-20200101T000000Z", "clinomic-20200102T000000Z"]
    for name in old:
        bucket.put_object(Bucket=BUCKET, Key=f"{PREFIX}{name}/database.dump", Body=b"old")
        bucket.put_object(Bucket=BUCKET, Key=f"{PREFIX}{name}/manifest.json", Body=b"{}")
    foreign = [f"{PREFIX}README.txt", f"{PREFIX}clinomic-20190101T000000Z/database.dump"]  # the 2nd: no manifest
    for key in foreign:
        bucket.put_object(Bucket=BUCKET, Key=key, Body=b"not a backup")
    result = ops("backup", str(tmp_path / "backups"), "--database-url", source, "--keep", "2", "--json",
                 env=environment(platform, tmp_path, endpoint))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    newest = Path(summary["backup"]).name
    remaining = s3.stored_backups(_objects(bucket, PREFIX), PREFIX)
    assert remaining == [Path(uploaded["backup"]).name, newest]
    assert sorted(summary["s3_pruned"]) == old
    assert set(foreign) <= set(_objects(bucket, PREFIX))


@pytest.mark.integration
async def test_restore_from_an_s3_url_fetches_the_backup_and_verifies_it(
        platform: stack.Platform, endpoint: str, uploaded: dict[str, Any], admin_engine: AsyncEngine,
        tmp_path: Path) -> None:
    name, url = _database(platform, "s3dst")
    try:
        result = ops("restore", uploaded["s3_url"], "--database-url", url,
                     env=environment(platform, tmp_path, endpoint))
        assert result.returncode == 0, result.stderr
        engine = create_async_engine(url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, note FROM readings ORDER BY id"))).all()
        await engine.dispose()
        assert [tuple(r) for r in rows] == [(1, "a"), (2, "b"), (3, "c")]
    finally:
        await _drop(admin_engine, name)


@pytest.mark.integration
def test_verify_backup_checks_an_s3_backup_against_its_manifest(platform: stack.Platform, endpoint: str,
                                                                uploaded: dict[str, Any], tmp_path: Path) -> None:
    result = ops("verify-backup", uploaded["s3_url"], env=environment(platform, tmp_path, endpoint))
    assert result.returncode == 0, result.stderr
    assert "match the manifest" in result.stdout


@pytest.mark.integration
def test_list_backups_prints_the_urls_of_complete_backups(platform: stack.Platform, endpoint: str,
                                                          uploaded: dict[str, Any], tmp_path: Path) -> None:
    result = ops("list-backups", env=environment(platform, tmp_path, endpoint))
    assert result.returncode == 0, result.stderr
    assert uploaded["s3_url"] in result.stdout.splitlines()


def _closed_endpoint() -> str:
    return f"http://127.0.0.1:{infra.free_port()}"


@pytest.mark.integration
def test_backup_to_an_unreachable_endpoint_fails_clearly_and_writes_nothing(
        platform: stack.Platform, source: str, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    result = ops("backup", str(dest), "--database-url", source,
                 env=environment(platform, tmp_path, _closed_endpoint()))
    assert result.returncode == 1
    assert result.stderr.startswith("clinomic-ops: backup FAILED, nothing was written: ")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not dest.exists()


@pytest.mark.integration
def test_backup_to_a_missing_bucket_fails_before_writing(platform: stack.Platform, source: str, endpoint: str,
                                                         bucket: Any, tmp_path: Path) -> None:
    dest = tmp_path / "backups"
    result = ops("backup", str(dest), "--database-url", source, "--s3-bucket", "no-such-bucket",
                 env=environment(platform, tmp_path, endpoint))
    assert result.returncode == 1
    assert "the bucket does not exist" in result.stderr
    assert not dest.exists()


@pytest.mark.integration
async def test_restore_from_an_unreachable_endpoint_changes_nothing(
        platform: stack.Platform, uploaded: dict[str, Any], admin_engine: AsyncEngine, tmp_path: Path) -> None:
    name, url = _database(platform, "s3dst")
    result = ops("restore", uploaded["s3_url"], "--database-url", url,
                 env=environment(platform, tmp_path, _closed_endpoint()))
    assert result.returncode == 1
    assert result.stderr.startswith("clinomic-ops: restore FAILED: ") and "Traceback" not in result.stderr
    assert not await _exists(admin_engine, name)


def test_keep_without_a_bucket_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3_")}
    result = ops("backup", str(tmp_path / "b"), "--keep", "3", env=env)
    assert result.returncode == 1
    assert "--keep applies to the backups in S3" in result.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("command", ["backup", "restore", "verify-backup", "list-backups"])
def test_s3_options_have_help(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "clinomic_ops.cli", command, "--help"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "--s3-endpoint-url" in result.stdout
