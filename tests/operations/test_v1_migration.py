"""`clinomic-ops migrate-from-mongodb` against the session platform (real PostgreSQL, real broker, the audit
ledger running): generated v1 data, as a mongodump directory or served by the MongoDB stand-in, migrated by
the command run as an operator runs it (a subprocess with the platform's environment).

Each data set has organisations of its own (random suffix), so tests do not see each other's records.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from devstack import stack
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from clinomic_ops.v1.mapping import derived_id, org_id
from shared.crypto import BlindIndex, PhiCipher
from shared.db import tenant_schema
from tests.operations.v1_fixtures import V1Data, mongo_stand_in, write_dump
from tests.records.helpers import eventually

pytestmark = [pytest.mark.integration]

COLLECTIONS = ("organizations", "users", "labs", "doctors", "patients", "consents", "screenings")


def migrate(platform: stack.Platform, data: V1Data, tmp: Path, *args: str, key: bytes | None = None,
            source: list[str] | None = None, env: dict[str, str] | None = None,
            ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    report = tmp / f"report-{uuid.uuid4().hex[:6]}.json"
    env = {**os.environ, **platform.env, "V1_ENCRYPTION_KEY": (key or data.key).decode(), **(env or {})}
    if source is None:
        dump = tmp / "dump"
        if not dump.exists():
            write_dump(data, dump)
        source = ["--dump", str(dump)]
    done = subprocess.run(
        [sys.executable, "-m", "clinomic_ops.cli", "migrate-from-mongodb", *source, "--report", str(report),
         "--no-progress", "--batch-size", "2", *args],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    return done, json.loads(report.read_text()) if report.exists() else None


def counts(report: dict[str, Any], field: str) -> dict[str, int]:
    return {c: v[field] for c, v in report["collections"].items()}


class Migrated:
    """A data set migrated once from a dump, and the reports of that run and of a second one."""

    def __init__(self, data: V1Data, first: dict[str, Any], second: dict[str, Any], output: str) -> None:
        self.data = data
        self.first = first
        self.second = second
        self.output = output


@pytest.fixture(scope="module")
def migrated(platform: stack.Platform, tmp_path_factory: pytest.TempPathFactory) -> Migrated:
    data = V1Data()
    tmp = tmp_path_factory.mktemp("v1")
    first, report = migrate(platform, data, tmp)
    assert first.returncode == 0, first.stderr
    again, second = migrate(platform, data, tmp)
    assert again.returncode == 0, again.stderr
    assert report is not None and second is not None
    return Migrated(data, report, second, first.stdout)


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def row(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).mappings().first()


# -- a first run and a second one ---------------------------------------------------------------------------


def test_a_dump_is_migrated_with_every_refusal_counted_by_reason(migrated: Migrated) -> None:
    expected = migrated.data.expected()
    assert counts(migrated.first, "created") == {c: expected[c]["created"] for c in COLLECTIONS}
    assert counts(migrated.first, "refused") == {c: expected[c]["refused"] for c in COLLECTIONS}
    reasons = {c: v["refused_by_reason"] for c, v in migrated.first["collections"].items()}
    assert reasons["users"] == {"unknown_role": 1}
    assert reasons["patients"] == {"duplicate": 1, "name_undecryptable": 1}
    assert reasons["screenings"] == {"bad_cbc": 1, "duplicate": 1, "orphan": 1, "patient_refused": 1}
    assert reasons["consents"] == {"orphan": 1}
    for name, c in migrated.first["collections"].items():
        assert c["read"] == c["created"] + c["skipped_already_migrated"] + c["refused"], name
    assert "refused 1 × bad_cbc" in migrated.output


def test_a_second_run_creates_nothing_and_skips_what_the_first_created(migrated: Migrated) -> None:
    assert set(counts(migrated.second, "created").values()) == {0}
    assert counts(migrated.second, "skipped_already_migrated") == counts(migrated.first, "created")
    assert migrated.second["audit_events"] == {"published": 0, "left_in_outbox": 0}


async def test_the_ledger_holds_one_entry_per_migrated_record(migrated: Migrated, engine: AsyncEngine) -> None:
    data, first = migrated.data, migrated.first
    assert first["audit_events"]["published"] == sum(counts(first, "created").values())
    for v1_org, created in ((data.org_a, data.expected(data.org_a)), (data.org_b, data.expected(data.org_b))):
        chain = f"tenant:{org_id(v1_org)}"
        total = sum(c["created"] for c in created.values())

        async def entries(chain: str = chain) -> int:
            return int(await scalar(engine, "SELECT count(*) FROM audit.entries WHERE chain_id = :c "
                                             "AND event_type = 'RecordMigrated'", c=chain))

        assert await eventually(lambda: _equals(entries, total), timeout=60, interval=0.3)
    screening = uuid.UUID(data.screening_ok)
    entry = await row(engine, "SELECT content FROM audit.entries WHERE event_type = 'RecordMigrated' "
                              "AND refs @> ARRAY[:r]::text[]", r=str(screening))
    payload = json.loads(bytes(entry["content"]))["payload"] if isinstance(entry["content"], bytes | memoryview) \
        else json.loads(entry["content"])["payload"]
    assert payload["collection"] == "screenings" and payload["v1_id"] is None and len(payload["source_sha256"]) == 64


async def _equals(probe: Any, expected: int) -> bool:
    return await probe() == expected


async def test_patient_names_are_re_encrypted_with_this_platforms_keys(
    migrated: Migrated, engine: AsyncEngine, platform: stack.Platform,
) -> None:
    data = migrated.data
    schema = tenant_schema(org_id(data.org_a))
    patient = await row(engine, f"SELECT * FROM {schema}.patients WHERE external_id = 'PID-0001'")
    cipher = PhiCipher([k.encode() for k in platform.env["MASTER_ENCRYPTION_KEY"].split(",")])
    assert patient["id"] == derived_id("patients", data.org_a, "PID-0001")
    assert cipher.decrypt(patient["name_ciphertext"]) == "Jane Example"
    assert patient["name_key_id"] == cipher.current_key_id
    index = BlindIndex(platform.env["PHI_BLIND_INDEX_KEY"].encode())
    assert patient["name_index"] == index.digest(org_id(data.org_a), "Jane Example")
    with pytest.raises(Exception):  # noqa: B017 - the v1 key does not open what we stored
        Fernet(data.key).decrypt(patient["name_ciphertext"].encode())
    unnamed = await row(engine, f"SELECT * FROM {schema}.patients WHERE external_id = 'PID-0002'")
    assert unnamed["name_ciphertext"] is None and unnamed["created_at"].isoformat().startswith("2025-01-02")


async def test_a_migrated_screening_keeps_its_v1_id_time_and_result_and_is_marked_migrated(
    migrated: Migrated, engine: AsyncEngine,
) -> None:
    data = migrated.data
    schema = tenant_schema(org_id(data.org_a))
    s = await row(engine, f"SELECT * FROM {schema}.screenings WHERE id = :id", id=uuid.UUID(data.screening_ok))
    assert s["status"] == "migrated" and s["risk_class"] == 2 and s["label"] == "borderline"
    assert s["cbc"] == {"hb": 11.0, "mcv": 99.0, "rdw": 15.5}
    assert s["recorded_at"] == s["requested_at"] and s["recorded_at"].isoformat() == "2025-01-04T09:04:05.678901+00:00"
    assert s["model_version"] == "clinomic-v1/1.0.0"
    provenance = s["assessment"]["migrated"]
    assert provenance["v1_id"] == data.screening_ok and provenance["screening_hash"] == "ab" * 32
    assert s["assessment"]["probabilities"] == {"normal": 0.4, "borderline": 0.1, "deficient": 0.5}
    assert s["lab_id"] == derived_id("labs", data.org_a, f"LAB-{data.suffix}")
    bad = await scalar(engine, f"SELECT count(*) FROM {schema}.screenings WHERE id = :id",
                       id=uuid.UUID(data.screening_bad_cbc))
    assert bad == 0


async def test_migrated_users_keep_their_role_and_must_reset_their_password(
    migrated: Migrated, engine: AsyncEngine,
) -> None:
    data = migrated.data
    users = {r["username"]: r for r in await _rows(engine, "SELECT username, role, password_hash, "
                                                  "must_change_password, org_id, active, deactivated_at FROM auth.users "
                                                  "WHERE username LIKE :p", p=f"%{data.suffix}%")}
    s, slug = data.suffix, data.org_b.lower()
    assert {u: r["role"] for u, r in users.items()} == {
        f"admin_{s}": "org_admin", f"lab_{s}": "lab_technician", f"doctor_{s}": "doctor",
        f"gone_{s}": "lab_technician", f"lab_{s}.{slug}": "lab_technician"}
    assert all(r["must_change_password"] and not r["password_hash"].startswith("$2b$") for r in users.values())
    assert users[f"lab_{s}.{slug}"]["org_id"] == org_id(data.org_b)
    gone = users[f"gone_{s}"]
    assert not gone["active"] and gone["deactivated_at"].isoformat().startswith("2025-01-03")
    staff = await scalar(engine, f"SELECT count(*) FROM {tenant_schema(org_id(data.org_a))}.staff")
    assert staff == 3  # the active ones


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).mappings().all())


async def test_a_revoked_v1_consent_keeps_its_id_times_and_encrypted_witness(
    migrated: Migrated, engine: AsyncEngine, platform: stack.Platform,
) -> None:
    data = migrated.data
    schema = tenant_schema(org_id(data.org_a))
    c = await row(engine, f"SELECT * FROM {schema}.consents WHERE id = :id", id=uuid.UUID(data.consent_ok))
    cipher = PhiCipher([k.encode() for k in platform.env["MASTER_ENCRYPTION_KEY"].split(",")])
    assert c["status"] == "revoked" and c["method"] == "written" and c["consent_type"] == "screening"
    assert c["revoked_at"].isoformat().startswith("2025-01-05")
    assert c["recorded_at"].isoformat().startswith("2025-01-02")
    assert c["recorded_by"] == derived_id("users", data.org_a, f"lab_{data.suffix}")
    assert "Witness: Witness Person" in cipher.decrypt(c["text_ciphertext"])


# -- options ----------------------------------------------------------------------------------------------


async def test_a_dry_run_reports_what_it_would_create_and_changes_nothing(
    platform: stack.Platform, engine: AsyncEngine, tmp_path: Path,
) -> None:
    data = V1Data()
    done, report = migrate(platform, data, tmp_path, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert report is not None and report["dry_run"] is True
    assert counts(report, "created") == {c: v["created"] for c, v in data.expected().items()}
    assert "DRY RUN: nothing was changed" in done.stdout
    assert await scalar(engine, "SELECT count(*) FROM auth.organizations WHERE id = ANY(:ids)",
                        ids=[org_id(data.org_a), org_id(data.org_b)]) == 0
    assert await scalar(engine, "SELECT to_regnamespace(:s) IS NULL", s=tenant_schema(org_id(data.org_a)))


async def test_org_filter_migrates_one_organisation_only(
    platform: stack.Platform, engine: AsyncEngine, tmp_path: Path,
) -> None:
    data = V1Data()
    done, report = migrate(platform, data, tmp_path, "--org-filter", data.org_b)
    assert done.returncode == 0, done.stderr
    assert report is not None
    assert counts(report, "created") == {c: v["created"] for c, v in data.expected(data.org_b).items()}
    assert await scalar(engine, "SELECT count(*) FROM auth.organizations WHERE id = :id", id=org_id(data.org_a)) == 0


async def test_skip_screenings_leaves_every_screening_out(
    platform: stack.Platform, engine: AsyncEngine, tmp_path: Path,
) -> None:
    data = V1Data()
    done, report = migrate(platform, data, tmp_path, "--skip-screenings", "--org-filter", data.org_b)
    assert done.returncode == 0, done.stderr
    assert report is not None and "screenings" not in report["collections"]
    schema = tenant_schema(org_id(data.org_b))
    assert await scalar(engine, f"SELECT count(*) FROM {schema}.screenings") == 0
    assert await scalar(engine, f"SELECT count(*) FROM {schema}.patients") == 1


def test_the_live_uri_path_reads_through_a_mongodb_client(platform: stack.Platform, tmp_path: Path) -> None:
    data = V1Data()
    with mongo_stand_in({"clinomic_pilot": data.collections}) as server:
        host, port = server.server_address
        done, report = migrate(platform, data, tmp_path, "--dry-run",
                               source=["--mongodb-uri", f"mongodb://{host}:{port}/clinomic_pilot"])
        commands = set(server.commands)
    assert done.returncode == 0, done.stderr
    assert report is not None
    assert counts(report, "created") == {c: v["created"] for c, v in data.expected().items()}
    assert {"find", "getMore", "listCollections"} <= commands  # batch size 2: every collection needed getMore


async def test_temporary_passwords_let_migrated_users_in_to_see_migrated_screenings_as_migrated(
    platform: stack.Platform, gateway: httpx.AsyncClient, tmp_path: Path,
) -> None:
    data = V1Data()
    passwords = tmp_path / "passwords.json"
    done, _ = migrate(platform, data, tmp_path, "--org-filter", data.org_b, "--temporary-passwords", str(passwords))
    assert done.returncode == 0, done.stderr
    assert passwords.stat().st_mode & 0o777 == 0o600
    issued = {p["username"]: p["temporary_password"] for p in json.loads(passwords.read_text())}
    username = f"lab_{data.suffix}"
    first = await gateway.post("/api/auth/login", json={"username": username, "password": issued[username]})
    assert first.status_code == 200 and first.json()["status"] == "password_change_required", first.text
    changed = await gateway.post(
        "/api/auth/password", headers={"Authorization": f"Bearer {first.json()['access_token']}"},
        json={"current_password": issued[username], "new_password": f"Migrated {uuid.uuid4()} B12"})
    assert changed.status_code == 200 and changed.json()["status"] == "authenticated", changed.text
    lab = {"Authorization": f"Bearer {changed.json()['access_token']}"}
    page = (await gateway.get("/api/screening/history", headers=lab)).json()
    [screening] = page["items"]
    assert screening["status"] == "migrated" and screening["patient_name"] == "Other Org Patient"
    assert screening["assessment"]["model"]["version"] == "clinomic-v1/1.0.0"
    assert set(screening["cbc"]) == {"hb", "mcv", "rdw"}
    again, _ = migrate(platform, data, tmp_path, "--org-filter", data.org_b, "--temporary-passwords", str(passwords))
    assert again.returncode == 1 and "is never overwritten" in again.stderr


async def test_with_the_broker_down_the_ledger_entries_come_through_the_outbox(
    platform: stack.Platform, engine: AsyncEngine, tmp_path: Path,
) -> None:
    data = V1Data()
    done, report = migrate(platform, data, tmp_path, "--org-filter", data.org_b,
                           env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})
    assert done.returncode == 0, done.stderr
    assert report is not None and report["audit_events"] == {"published": 0, "left_in_outbox": 4}
    chain = f"tenant:{org_id(data.org_b)}"

    async def relayed() -> bool:  # by the screening service's outbox relay
        return await scalar(engine, "SELECT count(*) FROM audit.entries WHERE chain_id = :c "
                                    "AND event_type = 'RecordMigrated'", c=chain) == 4

    await eventually(relayed, timeout=90, interval=0.3)  # the outbox relay published the events


# -- failures change nothing --------------------------------------------------------------------------------


async def test_a_wrong_v1_key_fails_with_a_clear_message_and_changes_nothing(
    platform: stack.Platform, engine: AsyncEngine, tmp_path: Path,
) -> None:
    data = V1Data()
    done, report = migrate(platform, data, tmp_path, key=Fernet.generate_key())
    assert done.returncode == 1
    assert "decrypts none of the 4 encrypted patient name(s)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and report is None
    assert await scalar(engine, "SELECT count(*) FROM auth.organizations WHERE id = :id", id=org_id(data.org_a)) == 0


def test_an_unreachable_mongodb_fails_with_a_clear_message(platform: stack.Platform, tmp_path: Path) -> None:
    done, report = migrate(platform, V1Data(), tmp_path, "--mongodb-timeout", "1",
                           source=["--mongodb-uri", "mongodb://v1user:secret@127.0.0.1:9/clinomic"])
    assert done.returncode == 1 and report is None
    assert "MongoDB at 127.0.0.1:9 cannot be reached" in done.stderr and "secret" not in done.stderr
