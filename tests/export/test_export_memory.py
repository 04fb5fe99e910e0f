"""Exports stream in constant memory, measured: a fresh organisation gets 100 000 screenings straight into its
schema, and each format is downloaded through the gateway while the resident memory (VmRSS) of the screening
service and of the gateway is sampled. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fhir.resources.R4B.observation import Observation
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.stack import Platform
from shared.crypto import PhiCipher
from tests.export.conftest import REJECTION
from tests.records.helpers import new_org, ok, record_event

SCREENINGS = 100_000
PATIENTS = 25_000
#: Allowed growth of a service's resident memory during one export, below the size of every export measured.
RSS_BOUND = 25 * 2**20


@dataclass
class Bulk:
    admin: dict[str, str]


def _rss(pid: int) -> int:
    """Resident memory of a process and its children, in bytes."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    status = Path(f"/proc/{pid}/status").read_text()
    kib = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
    return kib * 1024 + sum(_rss(c) for c in children)


@contextmanager
def peak_rss(pids: dict[str, int]) -> Iterator[dict[str, int]]:
    """Growth of each process's resident memory over its value on entry, at its peak while inside."""
    baseline = {name: _rss(pid) for name, pid in pids.items()}
    growth = dict.fromkeys(pids, 0)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            for name, pid in pids.items():
                growth[name] = max(growth[name], _rss(pid) - baseline[name])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield growth
    finally:
        done.set()
        sampler.join()


async def _insert(engine: AsyncEngine, schema: str, cipher: PhiCipher, newest: datetime) -> None:
    """Patients and screenings as the service stores them, made by PostgreSQL itself (generate_series)."""
    async with engine.begin() as conn:
        await conn.execute(text(
            f'INSERT INTO "{schema}".patients (id, external_id, name_ciphertext, name_key_id, sex) '
            "SELECT gen_random_uuid(), 'B-' || g, :name, :key_id, (ARRAY['female', 'male'])[g % 2 + 1] "
            "FROM generate_series(1, :patients) g"),
            {"name": cipher.encrypt("Bulk Exportpatient"), "key_id": cipher.current_key_id, "patients": PATIENTS})
        await conn.execute(text(
            f'INSERT INTO "{schema}".screenings (id, patient_id, status, cbc, assessment, rejection_reason, '
            "label, risk_class, model_version, correlation_id, requested_at, recorded_at, patient_external_id) "
            "SELECT gen_random_uuid(), p.id, CASE WHEN g % 50 = 7 THEN 'rejected' ELSE 'classified' END, "
            "jsonb_build_object('hb', 9 + (g % 60) / 10.0, 'rbc', 4.5, 'hct', 40.5, 'mcv', 90, 'mch', 30, "
            "'mchc', 33.3, 'rdw', 13.1, 'wbc', 6.2, 'platelets', 250, 'neutrophils_pct', 55, "
            "'lymphocytes_pct', 35, 'age', 30 + g % 50, 'sex', p.sex), "
            "CASE WHEN g % 50 <> 7 THEN jsonb_build_object('label', l.label, 'risk_class', g % 3 + 1, "
            "'probabilities', jsonb_build_object('normal', l.pn, 'borderline', l.pb, 'deficient', l.pd), "
            "'model', jsonb_build_object('version', '1.0.0', 'artifacts_sha256', repeat('ab', 32))) END, "
            "CASE WHEN g % 50 = 7 THEN :reason END, CASE WHEN g % 50 <> 7 THEN l.label END, "
            "CASE WHEN g % 50 <> 7 THEN g % 3 + 1 END, CASE WHEN g % 50 <> 7 THEN '1.0.0' END, "
            "gen_random_uuid(), CAST(:newest AS timestamptz) - (g + 2) * interval '1 second', "
            "CAST(:newest AS timestamptz) - g * interval '1 second', p.external_id "
            "FROM generate_series(0, :screenings - 1) g "
            "JOIN (SELECT id, sex, external_id, row_number() OVER (ORDER BY id) - 1 AS k FROM "
            f'"{schema}".patients) p ON p.k = g % :patients '
            "JOIN (VALUES (0, 'normal', 0.8, 0.15, 0.05), (1, 'borderline', 0.3, 0.5, 0.2), "
            "(2, 'deficient', 0.1, 0.2, 0.7)) l(k, label, pn, pb, pd) ON l.k = g % 3"),
            {"reason": REJECTION, "newest": newest, "screenings": SCREENINGS, "patients": PATIENTS})
        await conn.execute(text(f'ANALYZE "{schema}".patients, "{schema}".screenings'))


@pytest.fixture(scope="module")
async def bulk(gateway: httpx.AsyncClient, engine: AsyncEngine, platform: Platform) -> Bulk:
    org = await new_org(gateway, "bulk", roles=())
    admin = org.headers["admin"]
    ok(await gateway.get("/api/screening/history", headers=admin))  # the tenant's schema exists from here on
    newest = datetime.now(UTC).replace(microsecond=0)
    cipher = PhiCipher([k.strip().encode() for k in platform.env["MASTER_ENCRYPTION_KEY"].split(",")])
    started = time.perf_counter()
    await _insert(engine, f"tenant_{uuid.UUID(org.id).hex}", cipher, newest)
    print(f"\ninserted {SCREENINGS} screenings of {PATIENTS} patients in {time.perf_counter() - started:.1f} s")
    return Bulk(admin)


@pytest.mark.parametrize("params,rows", [
    ({"format": "csv"}, 1 + SCREENINGS),
    ({"format": "ndjson", "type": "Observation"}, 11 * SCREENINGS),
    ({"format": "fhir"}, None),
], ids=["csv", "ndjson-observation", "fhir-bundle"])
async def test_an_export_streams_in_flat_memory(gateway: httpx.AsyncClient, platform: Platform, bulk: Bulk,
                                                params: dict[str, str], rows: int | None) -> None:
    label = "/".join(params.values())
    pids = {name: platform.processes[name].pid for name in ("screening", "gateway")}
    size = lines = 0
    head = tail = b""
    with peak_rss(pids) as growth:
        started = time.perf_counter()
        async with gateway.stream("GET", "/api/screening/export", params=params, headers=bulk.admin) as response:
            assert response.status_code == 200, await response.aread()
            async for chunk in response.aiter_raw():
                size += len(chunk)
                lines += chunk.count(b"\n")
                head = head or chunk[:4096]
                tail = (tail + chunk)[-4096:]
        seconds = time.perf_counter() - started
    counted = f"{lines} lines, " if rows else ""
    print(f"\n{label}: {SCREENINGS} screenings, {counted}{size / 2**20:.0f} MiB in {seconds:.1f} s "
          f"({SCREENINGS / seconds:,.0f} screenings/s, {size / 2**20 / seconds:.1f} MiB/s); peak RSS growth: "
          f"screening {growth['screening'] / 2**20:.1f} MiB, gateway {growth['gateway'] / 2**20:.1f} MiB")
    if rows is not None:
        assert lines == rows
    if params["format"] == "ndjson":
        Observation.model_validate_json(tail.splitlines()[-1])
    if params["format"] == "fhir":
        assert head.startswith(b'{"resourceType":"Bundle"') and tail.endswith(b"]}")
    assert growth["screening"] < RSS_BOUND and growth["gateway"] < RSS_BOUND < size


async def test_an_export_the_client_abandons_is_audited_as_incomplete(gateway: httpx.AsyncClient,
                                                                      platform: Platform, bulk: Bulk) -> None:
    read = 0
    async with gateway.stream("GET", "/api/screening/export", params={"format": "ndjson", "type": "Observation"},
                              headers=bulk.admin) as response:
        export_id = re.search(r"Observation-([0-9a-f-]{36})\.ndjson",
                              response.headers["content-disposition"]).group(1)  # type: ignore[union-attr]
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read > 2 * 2**20:
                break
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    started = await record_event(bootstrap, "RecordsExportStarted", export_id=export_id)
    ended = await record_event(bootstrap, "RecordsExported", export_id=export_id)
    assert started["payload"]["screening_count"] == SCREENINGS
    assert ended["payload"]["completed"] is False and 0 < ended["payload"]["row_count"] < 11 * SCREENINGS
