"""The export, the tree heads and the public key from the API are all the standalone verifier needs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from tests.audit.conftest import Org, Probed, as_superuser_without_triggers

Probe = Callable[..., Awaitable[Probed]]


async def download(gateway: httpx.AsyncClient, org: Org, folder: Path) -> list[str]:
    """Ledger, tree heads and public key as files; the verifier's arguments."""
    files = {
        "ledger.jsonl": "/api/audit/export",
        "heads.jsonl": "/api/audit/tree-heads?format=jsonl",
        "audit.pub.pem": "/api/audit/public-key.pem",
    }
    for name, path in files.items():
        response = await gateway.get(path, headers=org.admin)
        assert response.status_code == 200, response.text
        (folder / name).write_bytes(response.content)
    return [
        "verify",
        str(folder / "ledger.jsonl"),
        "--tree-heads",
        str(folder / "heads.jsonl"),
        "--public-key",
        str(folder / "audit.pub.pem"),
        "--require-tree-heads",
    ]


def verifier(*args: str) -> subprocess.CompletedProcess[str]:
    """``clinomic-audit-verify`` as a separate process: no service, no database."""
    return subprocess.run(
        [sys.executable, "-m", "audit.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )


async def test_an_exported_ledger_passes_the_standalone_verifier(
    gateway: httpx.AsyncClient, probed: Probe, tmp_path: Path
) -> None:
    chain = await probed()
    result = verifier(*await download(gateway, chain.org, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT: OK" in result.stdout and "tree head" in result.stdout


async def test_the_standalone_verifier_finds_the_changed_entry_in_an_exported_ledger(
    gateway: httpx.AsyncClient, engine: AsyncEngine, probed: Probe, tmp_path: Path
) -> None:
    chain = await probed()
    target = chain.seqs[3]
    async with as_superuser_without_triggers(engine) as conn:
        await conn.execute(
            text("UPDATE audit.entries SET event_type = 'Harmless' WHERE chain_id = :c AND seq = :s"),
            {"c": chain.org.chain_id, "s": target},
        )
    result = verifier(*await download(gateway, chain.org, tmp_path), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["first_broken_seq"] == target and report["chain"]["reason"] == "hash mismatch"
    assert any(h["status"] == "root mismatch" for h in report["tree_heads"])


async def test_the_export_command_writes_the_files_the_verifier_reads(
    platform: Platform, probed: Probe, tmp_path: Path
) -> None:
    chain = await probed()
    ledger, heads, key = tmp_path / "ledger.jsonl", tmp_path / "heads.jsonl", tmp_path / "key.pem"
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "audit.ops",
            "export",
            chain.org.chain_id,
            "--out",
            str(ledger),
            "--tree-heads",
            str(heads),
            "--public-key",
            str(key),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=platform.env,
    )
    assert exported.returncode == 0, exported.stderr
    result = verifier(
        "verify", str(ledger), "--tree-heads", str(heads), "--public-key", str(key), "--require-tree-heads"
    )
    assert result.returncode == 0, result.stdout + result.stderr
