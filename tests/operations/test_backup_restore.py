"""Backup and restore drill (docs/operations.md): seed a platform of the drill's own (its own database, so the
chains other tests seal with keys of their own are not in its backup), back it up with `clinomic-ops
backup`, restore it into a fresh, empty database on the same server with `clinomic-ops restore`, start a
second platform on the restored database and check that it serves the same history and the same audit
proofs. The refusals (corrupt backup, wrong keys, unreachable server, a database that is not empty) must
change nothing.

The commands run as subprocesses, exactly as an operator runs them, with the platform's environment.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from devstack import infra, stack
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.conftest import HEALTHY_CBC, bearer, login, new_patient_id

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SEEDED = 3
PLATFORM_OVERRIDES = {
    "CLASSIFY_WAIT_SECONDS": "10",
    "DEBUG": "false",
    "JWT_ACCESS_TTL_SECONDS": "3600",
    "RATE_LIMIT_LOGIN": "100000/minute",
    "RATE_LIMIT_REFRESH": "100000/minute",
    "RATE_LIMIT_MFA": "100000/minute",
    "RATE_LIMIT_DEFAULT": "100000/minute",
}


def ops(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clinomic_ops.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=600,
        check=False,
    )


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json()


async def until(probe: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout:.0f} s: {what}")
        await asyncio.sleep(0.2)


async def database_exists(admin: AsyncEngine, name: str) -> bool:
    async with admin.connect() as conn:
        return bool(await conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}))


class Drill:
    """What the module's tests share: the backup, the original answers and the restored platform."""

    def __init__(self) -> None:
        self.backup: Path = Path()
        self.backup_seconds = 0.0
        self.backup_bytes = 0
        self.backup_summary: dict[str, Any] = {}
        self.work: Path = Path()
        self.restore_seconds = 0.0
        self.restore_output = ""
        self.env: dict[str, str] = {}
        self.restored_dsn = ""
        self.restored: stack.Platform | None = None
        self.chain_id = ""
        self.head: dict[str, Any] = {}
        self.patients: list[dict[str, Any]] = []
        self.history: dict[str, Any] = {}
        self.proofs: dict[int, Any] = {}
        self.consistency: Any = None
        self.public_key_pem = ""


@pytest.fixture(scope="module")
async def admin_engine(platform: stack.Platform) -> AsyncIterator[AsyncEngine]:
    url = make_url(platform.env["DATABASE_URL"]).set(database="postgres")
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    yield engine
    await engine.dispose()


def started_on(database_url: str, state: Path) -> Any:
    """A platform context on an existing server's database (devstack takes the server from DATABASE_URL)."""
    ports = {name: infra.free_port() for name in stack.DEFAULT_PORTS}
    saved = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = database_url
    try:
        context = stack.platform(state, ports=ports, extra_env=PLATFORM_OVERRIDES)
        return context, context.__enter__()
    finally:
        if saved is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = saved


@pytest.fixture(scope="module")
async def source(platform: stack.Platform, admin_engine: AsyncEngine) -> AsyncIterator[stack.Platform]:
    """The platform that is backed up: the session's server, a database of its own."""
    database = f"drill_src_{uuid.uuid4().hex[:12]}"
    async with admin_engine.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{database}"'))
    url = make_url(platform.env["DATABASE_URL"]).set(database=database).render_as_string(hide_password=False)
    state = Path(tempfile.mkdtemp(prefix="clinomic-drill-source-"))
    context, running = await asyncio.to_thread(started_on, url, state)
    try:
        yield running
    finally:
        await asyncio.to_thread(context.__exit__, None, None, None)
        async with admin_engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
async def drill(source: stack.Platform, admin_engine: AsyncEngine) -> AsyncIterator[Drill]:
    platform = source
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30.0) as gateway:
        engine = create_async_engine(platform.env["DATABASE_URL"])
        try:
            lab = bearer(await login(gateway, "lab_demo"))
            async for d in _drill(platform, gateway, lab, engine, admin_engine):
                yield d
        finally:
            await engine.dispose()


async def _drill(platform: stack.Platform, gateway: httpx.AsyncClient, lab: dict[str, str], engine: AsyncEngine,
                 admin_engine: AsyncEngine) -> AsyncIterator[Drill]:
    d = Drill()
    work = d.work = Path(tempfile.mkdtemp(prefix="clinomic-drill-"))
    # -- seed: patients with names and consents, screened through the gateway --------------------------------
    screening_ids = []
    for i in range(SEEDED):
        external = new_patient_id()
        patient = ok(
            await gateway.post(
                "/api/patients",
                headers=lab,
                json={"external_id": external, "name": f"Drill Patient {i} Ørsted"},
            ),
            201,
        )
        ok(
            await gateway.post(
                "/api/consents",
                headers=lab,
                json={
                    "patient_id": patient["id"],
                    "method": "written",
                    "text": f"Consent {i} to B12 screening.",
                },
            ),
            201,
        )
        screening = ok(
            await gateway.post(
                "/api/screening/classify",
                headers=lab,
                json={"patient": {"external_id": external}, "cbc": HEALTHY_CBC},
            )
        )
        screening_ids.append(screening["id"])
        d.patients.append(patient)
    for patient in d.patients:
        d.history[patient["id"]] = ok(
            await gateway.get("/api/screening/history", headers=lab, params={"patient_id": patient["id"]})
        )
    auditor = bearer(await login(gateway, "auditor_demo"))
    d.chain_id = ok(await gateway.get("/api/audit", headers=auditor, params={"limit": 1}))["chain_id"]

    # -- wait until the ledger holds every seeded screening and a signed head covers them -----------------
    async def covered() -> int | None:
        async with engine.connect() as conn:
            seqs = [
                await conn.scalar(
                    text("SELECT max(seq) FROM audit.entries WHERE chain_id = :c AND :s = ANY(refs)"),
                    {"c": d.chain_id, "s": sid},
                )
                for sid in screening_ids
            ]
            head = await conn.scalar(
                text("SELECT max(tree_size) FROM audit.tree_heads WHERE chain_id = :c"), {"c": d.chain_id}
            )
        if any(s is None for s in seqs) or head is None or head < max(seqs):
            return None
        return int(head)

    await until(covered, timeout=60, what="a signed tree head covering the seeded screenings")

    # -- backup --------------------------------------------------------------------------------------------
    started = time.perf_counter()
    result = ops("backup", str(work / "backups"), "--json", env=platform.env)
    d.backup_seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(result.stdout.strip().splitlines()[-1])
    d.backup, d.backup_bytes, d.backup_summary = Path(summary["backup"]), summary["bytes"], summary
    manifest = json.loads((d.backup / "manifest.json").read_text())
    d.head = manifest["audit"]["chains"][d.chain_id]["newest_tree_head"]
    size = d.head["tree_size"]
    for seq in sorted({1, max(1, size // 2), size}):
        d.proofs[seq] = ok(
            await gateway.get(f"/api/audit/entries/{seq}/proof", headers=auditor, params={"tree_size": size})
        )
    d.consistency = ok(
        await gateway.get(
            "/api/audit/consistency", headers=auditor, params={"first": max(1, size // 2), "second": size}
        )
    )
    d.public_key_pem = (await gateway.get("/api/audit/public-key.pem", headers=auditor)).text

    # -- restore into a fresh database, as a second deployment would --------------------------------------
    database = f"restore_{uuid.uuid4().hex[:12]}"
    d.restored_dsn = (
        make_url(platform.env["DATABASE_URL"]).set(database=database).render_as_string(hide_password=False)
    )
    state = work / "restored"
    state.mkdir()
    original_state = platform.logs["gateway"].parent.parent
    shutil.copy(original_state / "dev.env", state / "dev.env")  # the keys, kept apart from the backup
    d.env = platform.env | {
        "DATABASE_URL": d.restored_dsn,
        "AUDIT_TREE_HEAD_DIR": str(state / "audit-tree-heads"),
    }
    started = time.perf_counter()
    result = ops("restore", str(d.backup), env=d.env)
    d.restore_seconds = time.perf_counter() - started
    d.restore_output = result.stdout + result.stderr
    assert result.returncode == 0, d.restore_output

    # -- a second platform on the restored database (its own broker, ports and state) ----------------------
    context, d.restored = await asyncio.to_thread(started_on, d.restored_dsn, state)
    try:
        yield d
    finally:
        await asyncio.to_thread(context.__exit__, None, None, None)
        async with admin_engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
async def restored_gateway(drill: Drill) -> AsyncIterator[httpx.AsyncClient]:
    assert drill.restored is not None
    async with httpx.AsyncClient(base_url=drill.restored.gateway_url, timeout=30.0) as client:
        yield client


def test_restore_reports_every_verification(drill: Drill) -> None:
    out = drill.restore_output
    assert "files match the manifest" in out or "file(s) match the manifest" in out
    assert "row counts of" in out and "equal the manifest" in out
    assert "may only SELECT and INSERT the ledger" in out
    assert "audit chain(s) verify" in out
    assert "decrypt with the configured keys" in out
    print(
        f"\nbackup: {drill.backup_bytes} bytes in {drill.backup_seconds:.1f} s ({drill.backup_summary}); "
        f"restore + verification: {drill.restore_seconds:.1f} s"
    )


async def test_restored_platform_serves_the_same_history(
    drill: Drill, restored_gateway: httpx.AsyncClient
) -> None:
    lab = bearer(await login(restored_gateway, "lab_demo"))
    for patient in drill.patients:
        again = ok(
            await restored_gateway.get(
                "/api/screening/history", headers=lab, params={"patient_id": patient["id"]}
            )
        )
        assert again == drill.history[patient["id"]]
        assert again["items"] and again["items"][0]["patient_name"].startswith("Drill Patient")


async def test_restored_platform_serves_the_same_audit_proofs(
    drill: Drill, restored_gateway: httpx.AsyncClient
) -> None:
    from audit.merkle import load_public_key, verify_consistency, verify_inclusion, verify_tree_head

    auditor = bearer(await login(restored_gateway, "auditor_demo"))
    public_key = load_public_key(drill.public_key_pem.encode())
    assert verify_tree_head(drill.head, public_key)
    size, root = drill.head["tree_size"], bytes.fromhex(drill.head["root_hash"])
    for seq, original in drill.proofs.items():
        again = ok(
            await restored_gateway.get(
                f"/api/audit/entries/{seq}/proof", headers=auditor, params={"tree_size": size}
            )
        )
        assert again == original
        assert verify_inclusion(
            bytes.fromhex(again["leaf_hash"]),
            seq - 1,
            size,
            [bytes.fromhex(h) for h in again["proof"]],
            root,
            is_hash=True,
        )
    first = max(1, size // 2)
    again = ok(
        await restored_gateway.get(
            "/api/audit/consistency", headers=auditor, params={"first": first, "second": size}
        )
    )
    assert again == drill.consistency
    assert again["second_root"] == drill.head["root_hash"]
    assert verify_consistency(
        first, size, bytes.fromhex(again["first_root"]), root, [bytes.fromhex(h) for h in again["proof"]]
    )
    verified = ok(await restored_gateway.get("/api/audit/verify", headers=auditor))
    assert verified["ok"], verified


def test_restore_refuses_a_database_that_is_not_empty(drill: Drill) -> None:
    result = ops("restore", str(drill.backup), env=drill.env)
    assert result.returncode == 1
    assert "is not empty" in result.stderr and "nothing was restored" in result.stderr


def _fresh_target(drill: Drill, **env: str) -> tuple[str, dict[str, str]]:
    """A database name that does not exist yet, with a tree-head log of its own (the restored platform's
    log has grown since the backup, and a restore into another database must not take its newer heads)."""
    name = f"restore_{uuid.uuid4().hex[:12]}"
    dsn = make_url(drill.restored_dsn).set(database=name).render_as_string(hide_password=False)
    heads = Path(tempfile.mkdtemp(prefix="heads-", dir=drill.work))
    return name, drill.env | {"DATABASE_URL": dsn, "AUDIT_TREE_HEAD_DIR": str(heads)} | env


async def test_restore_refuses_a_corrupt_backup_and_changes_nothing(
    drill: Drill, admin_engine: AsyncEngine, tmp_path: Path
) -> None:
    copy = tmp_path / drill.backup.name
    shutil.copytree(drill.backup, copy)
    dump = copy / "database.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    name, env = _fresh_target(drill)
    result = ops("restore", str(copy), env=env)
    assert result.returncode == 1
    assert "the backup is corrupt" in result.stderr and "database.dump" in result.stderr
    assert not await database_exists(admin_engine, name)
    assert ops("verify-backup", str(copy), env=env).returncode == 1
    assert ops("verify-backup", str(drill.backup), env=env).returncode == 0


async def test_restore_refuses_a_wrong_phi_key_and_changes_nothing(
    drill: Drill, admin_engine: AsyncEngine
) -> None:
    from cryptography.fernet import Fernet

    name, env = _fresh_target(drill, MASTER_ENCRYPTION_KEY=Fernet.generate_key().decode())
    result = ops("restore", str(drill.backup), env=env)
    assert result.returncode == 1
    assert "wrong keys" in result.stderr and "MASTER_ENCRYPTION_KEY" in result.stderr
    assert not await database_exists(admin_engine, name)


async def test_restore_refuses_a_wrong_audit_key_and_changes_nothing(
    drill: Drill, admin_engine: AsyncEngine
) -> None:
    name, env = _fresh_target(drill, AUDIT_SIGNING_KEY="x" * 48)
    result = ops("restore", str(drill.backup), env=env)
    assert result.returncode == 1
    assert "wrong keys" in result.stderr and "AUDIT_SIGNING_KEY" in result.stderr
    assert not await database_exists(admin_engine, name)


def test_commands_fail_clearly_when_the_database_is_unreachable(drill: Drill, tmp_path: Path) -> None:
    env = drill.env | {
        "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{infra.free_port()}/clinomic"
    }
    for args in (("restore", str(drill.backup)), ("backup", str(tmp_path))):
        result = ops(*args, env=env)
        assert result.returncode == 1, result
        assert "cannot connect to PostgreSQL" in result.stderr
        assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


async def test_restore_with_force_replaces_a_database_after_confirmation(
    drill: Drill, admin_engine: AsyncEngine
) -> None:
    name, env = _fresh_target(drill)
    try:
        first = ops("restore", str(drill.backup), env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        declined = ops("restore", str(drill.backup), "--force", env=env, stdin="n\n")
        assert declined.returncode == 1 and "not confirmed" in declined.stderr
        replaced = ops("restore", str(drill.backup), "--force", "--yes", env=env)
        assert replaced.returncode == 0, replaced.stdout + replaced.stderr
        assert "dropped schemas" in replaced.stdout and "audit chain(s) verify" in replaced.stdout
    finally:
        async with admin_engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_commands_have_help(drill: Drill) -> None:
    for command in ("backup", "restore", "verify-backup"):
        result = ops(command, "--help", env=drill.env)
        assert result.returncode == 0 and "Usage" in result.stdout
