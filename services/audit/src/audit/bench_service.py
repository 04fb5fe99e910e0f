"""The service benchmark: the ledger's real code paths against a real PostgreSQL, at N entries.

* **Append**: raw envelope bytes (shaped like ``ScreeningRecorded``, one organisation, so one chain of N
  entries) go through :meth:`audit.handlers.Appender.append_raw` in batches, exactly as the Kafka
  subscriber hands them over: parse, digest PHI, canonicalise, seal, extend the Merkle tree, insert entries
  and nodes, commit. Generating the bytes is not timed. Runs as the unprivileged runtime role.
* **First tree head**: the publisher checks every entry (hash, link, HMAC, Merkle) before signing.
* **Verification**: :func:`audit.checker.check_chain` over the whole chain (what ``GET /api/audit/verify``
  runs): entries, stored Merkle nodes, the signed head; three times on the worker pool, each run printed and
  the median reported (this host's speed drifts by 10 % from one run to the next), then once in one process.
* **Proofs**: :func:`audit.proofs.inclusion` and :func:`audit.proofs.consistency` (what the API runs), with
  their database round trips; every proof is checked against the signed head (not timed).

:func:`compare_chunks` (``clinomic-audit bench-chunks``) appends the same rows as per-row
``ScreeningRecorded`` entries and as one ``ScreeningBatchRecorded`` v2 entry per 250 rows, through the same
Appender, and times both.

A fresh database ``clinomic_audit_bench`` on the given server is created, and dropped afterwards unless
``keep``. Its login role is ``clinomic_audit_bench`` (not the platform's, whose password must not change).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from shared.db import create_engine
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from audit import checker, proofs, store
from audit.handlers import Appender, item_of
from audit.ledger import chain_id_for_tenant
from audit.merkle import verify_consistency, verify_inclusion
from audit.ops import prepare_database
from audit.treeheads import Publisher, TreeHeadLog

DATABASE = "clinomic_audit_bench"
ROLE = "clinomic_audit_bench"
KEY_ID = "bench"
KEY = b"bench-hmac-key-0123456789abcdef-0123456789"


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_messages(
    rng: random.Random, tenant: str, users: list[str], start: int, count: int
) -> list[tuple[bytes, str]]:
    """``count`` raw ScreeningRecorded-like envelopes (about 900 bytes each, as the services publish them)."""
    base = datetime(2025, 6, 1, tzinfo=UTC)
    out = []
    for n in range(start, start + count):
        at = (base + timedelta(milliseconds=n)).isoformat().replace("+00:00", "Z")
        envelope = {
            "event_id": _uid(rng),
            "event_type": "ScreeningRecorded",
            "event_version": 1,
            "occurred_at": at,
            "tenant_id": tenant,
            "actor": {"user_id": None, "role": "service", "service": "screening"},
            "correlation_id": _uid(rng),
            "causation_id": _uid(rng),
            "payload": {
                "screening_id": _uid(rng),
                "status": "classified",
                "patient_external_id": f"P-{n:010d}",
                "requested_by": rng.choice(users),
                "assessment": {
                    "label": rng.choice(["normal", "borderline", "deficient"]),
                    "risk_class": 2,
                    "probabilities": {"normal": 0.61, "borderline": 0.27, "deficient": 0.12},
                    "model": {"name": "b12-cbc", "version": "1.0.0"},
                    "top_features": [
                        {"name": "mcv", "value": 96.5, "shap": 0.31},
                        {"name": "rdw", "value": 14.8, "shap": 0.12},
                    ],
                },
                "rejection_reason": None,
                "requested_at": at,
                "recorded_at": at,
            },
        }
        out.append((json.dumps(envelope).encode(), "clinomic.screening.recorded"))
    return out


def host_speed(seconds: float = 0.5) -> int:
    """SHA-256 digests of 64-byte messages per second in this process right now: a reference printed with
    the figures, since the same code runs markedly slower when the (shared, virtual) host is busy."""
    message, n = bytes(64), 0
    sha = hashlib.sha256
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            sha(message).digest()
        n += 1000
    return round(n / seconds)


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(values), 3),
        "p50": round(ordered[len(ordered) // 2], 3),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
    }


async def _fresh_database(admin_dsn: str, database: str) -> tuple[Any, str]:
    """Create ``database`` afresh, provision the runtime role and migrate; (the server's admin engine, for
    dropping it afterwards, and the runtime role's URL)."""
    admin_url = make_url(admin_dsn)
    server = create_async_engine(admin_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    async with server.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        await conn.execute(text(f'CREATE DATABASE "{database}"'))
    bench_admin = admin_url.set(database=database).render_as_string(hide_password=False)
    return server, await prepare_database(bench_admin, ROLE, "bench-" + uuid.uuid4().hex)


def chunk_messages(rng: random.Random, rows: list[tuple[bytes, str]], size: int) -> list[tuple[bytes, str]]:
    """The same rows as ``ScreeningBatchRecorded`` v2 events of ``size`` rows each, numbered in order."""
    out = []
    for start in range(0, len(rows), size):
        part = [json.loads(raw) for raw, _ in rows[start : start + size]]
        envelope = {k: part[0][k] for k in ("occurred_at", "tenant_id", "actor", "correlation_id")} | {
            "event_id": _uid(rng),
            "event_type": "ScreeningBatchRecorded",
            "event_version": 2,
            "causation_id": _uid(rng),
            "payload": {
                "job_id": part[0]["correlation_id"],
                "chunk": start // size,
                "recorded_at": part[0]["occurred_at"],
                "rows": [{"row": start + i + 1, "screening": e["payload"]} for i, e in enumerate(part)],
            },
        }
        out.append((json.dumps(envelope).encode(), "clinomic.screening.batch-recorded"))
    return out


async def compare_chunks(
    admin_dsn: str, *, rows: int, chunk: int = 250, rounds: int = 3, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Append ``rows`` rows as per-row entries (batches of 1000 messages, as the subscriber hands them over)
    and as chunk entries (4 chunks per append), each round on fresh chains; also the CPU of preparing each
    (parsing, committing, canonicalising) alone. The database is ``<DATABASE>_chunks``, dropped afterwards."""
    database = f"{DATABASE}_chunks"
    server, runtime = await _fresh_database(admin_dsn, database)
    engine = create_engine(runtime, application_name="clinomic-audit-bench", search_path=store.SCHEMA)
    figures: dict[str, Any] = {"rows": rows, "chunk_rows": chunk, "host_sha256_64b_per_s": host_speed()}
    rng = random.Random(7)
    users = [_uid(rng) for _ in range(50)]
    chunks_per_round = -(-rows // chunk)
    per_row_s: list[float] = []
    chunked_s: list[float] = []
    try:
        appender = Appender(engine, KEY_ID, KEY)
        for n in range(rounds):
            singles = make_messages(rng, _uid(rng), users, 0, rows)
            chunked = chunk_messages(rng, make_messages(rng, _uid(rng), users, 0, rows), chunk)
            t0 = time.perf_counter()
            for i in range(0, rows, 1000):
                await appender.append_raw(singles[i : i + 1000])
            per_row_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(0, len(chunked), 4):
                await appender.append_raw(chunked[i : i + 4])
            chunked_s.append(time.perf_counter() - t0)
            progress(f"round {n + 1}: per-row {per_row_s[-1]:.2f} s, chunked {chunked_s[-1]:.2f} s")
        t0 = time.perf_counter()
        for raw, topic in singles[:chunk]:
            item_of(raw, topic)
        prepare_rows_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        kept = item_of(*chunked[0])
        prepare_chunk_ms = (time.perf_counter() - t0) * 1000
    finally:
        await engine.dispose()
        async with server.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        await server.dispose()
    figures["per_row_entries_rows_per_s_each_round"] = [round(rows / s) for s in per_row_s]
    figures["chunk_entries_rows_per_s_each_round"] = [round(rows / s) for s in chunked_s]
    figures["ms_per_chunk_as_per_row_entries_median"] = round(
        statistics.median(per_row_s) / chunks_per_round * 1000, 1
    )
    figures["ms_per_chunk_entry_median"] = round(statistics.median(chunked_s) / chunks_per_round * 1000, 1)
    figures["prepare_ms_per_chunk_as_rows"] = round(prepare_rows_ms, 1)
    figures["prepare_ms_per_chunk_entry"] = round(prepare_chunk_ms, 1)
    figures["chunk_message_kb"] = round(len(chunked[0][0]) / 1000, 1)
    figures["chunk_entry_content_kb"] = round(len(kept.content) / 1000, 1)
    return figures


async def run(
    admin_dsn: str,
    *,
    entries: int,
    batch: int = 1000,
    proof_count: int = 1000,
    verify_runs: int = 3,
    keep: bool = False,
    workers: int | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    server, runtime = await _fresh_database(admin_dsn, DATABASE)
    engine = create_engine(runtime, application_name="clinomic-audit-bench", search_path=store.SCHEMA)
    figures: dict[str, Any] = {"entries": entries, "batch": batch}
    try:
        async with engine.connect() as conn:
            figures["runtime_role_problems"] = await store.role_problems(conn) or "none"
        rng = random.Random(7)
        tenant = _uid(rng)
        chain_id = chain_id_for_tenant(tenant)
        users = [_uid(rng) for _ in range(50)]
        appender = Appender(engine, KEY_ID, KEY)

        append_s = 0.0
        window_s, window_n = 0.0, 0
        rates: list[float] = []
        done = 0
        while done < entries:
            n = min(batch, entries - done)
            messages = make_messages(rng, tenant, users, done, n)
            t0 = time.perf_counter()
            added = await appender.append_raw(messages)
            elapsed = time.perf_counter() - t0
            if added != n:
                raise AssertionError(f"appended {added} of {n}")
            append_s += elapsed
            window_s += elapsed
            window_n += n
            done += n
            if window_n >= 100_000 or done == entries:
                rates.append(window_n / window_s)
                progress(
                    f"appended {done}/{entries}: {window_n / window_s:,.0f} events/s over the last {window_n}"
                )
                window_s, window_n = 0.0, 0
        figures["append_events_per_s"] = round(entries / append_s)
        figures["append_events_per_s_slowest_100k"] = round(min(rates))
        figures["append_events_per_s_last_100k"] = round(rates[-1])

        with tempfile.TemporaryDirectory(prefix="audit-bench-heads-") as heads_dir:
            signing_key = Ed25519PrivateKey.generate()
            head_log = TreeHeadLog(Path(heads_dir))
            publisher = Publisher(engine, signing_key, [signing_key.public_key()], {KEY_ID: KEY}, head_log)
            t0 = time.perf_counter()
            head = await publisher.publish(chain_id)
            figures["first_tree_head_s"] = round(time.perf_counter() - t0, 2)
            if head is None:
                raise AssertionError(f"the publisher refused to sign: {publisher.refused()}")
            progress(f"tree head signed at size {head['tree_size']}")

            figures["host_sha256_64b_per_s_before_verify"] = host_speed()
            pool = checker.VerifierPool(runtime, workers)
            await pool.warm()  # as in a running service, whose workers start with its first long verification
            verify = functools.partial(
                checker.check_chain,
                engine,
                chain_id,
                hmac_keys={KEY_ID: KEY},
                public_keys=[signing_key.public_key()],
                head_log=head_log,
            )
            try:
                runs: list[float] = []
                for _ in range(verify_runs):
                    t0 = time.perf_counter()
                    report = await verify(pool=pool)
                    runs.append(time.perf_counter() - t0)
                    if not report.ok or report.checked != entries:
                        raise AssertionError(f"verification failed: {report}")
                verify_s = statistics.median(runs)
                t0 = time.perf_counter()
                single = await verify()
                figures["verify_one_process_entries_per_s"] = round(entries / (time.perf_counter() - t0))
                if not single.ok:
                    raise AssertionError(f"in-process verification failed: {single}")
            finally:
                pool.close()
            figures["verify_workers"] = pool.workers
            figures["verify_entries_per_s_each_run"] = [round(entries / s) for s in runs]
            figures["verify_entries_per_s"] = round(entries / verify_s)
            figures["verify_s"] = round(verify_s, 2)
            figures["verify_merkle_nodes_checked"] = report.merkle_nodes_checked
            progress("chain verified")

        root = bytes.fromhex(head["root_hash"])
        size = head["tree_size"]
        inclusion_ms: list[float] = []
        consistency_ms: list[float] = []
        async with engine.connect() as conn:
            for _ in range(proof_count):
                seq = rng.randint(1, size)
                t0 = time.perf_counter()
                answer = await proofs.inclusion(conn, chain_id, seq, size)
                inclusion_ms.append((time.perf_counter() - t0) * 1000)
                entry_hash = bytes.fromhex(answer["entry"]["entry_hash"])
                if not verify_inclusion(
                    entry_hash, seq - 1, size, [bytes.fromhex(p) for p in answer["proof"]], root
                ):
                    raise AssertionError(f"inclusion proof of {seq} does not verify")
                first = rng.randint(1, size)
                t0 = time.perf_counter()
                answer = await proofs.consistency(conn, chain_id, first, size)
                consistency_ms.append((time.perf_counter() - t0) * 1000)
                if not verify_consistency(
                    first,
                    size,
                    bytes.fromhex(answer["first_root"]),
                    root,
                    [bytes.fromhex(p) for p in answer["proof"]],
                ):
                    raise AssertionError(f"consistency proof {first} -> {size} does not verify")
        figures["inclusion_proof_ms"] = _ms(inclusion_ms)
        figures["consistency_proof_ms"] = _ms(consistency_ms)
        async with engine.connect() as conn:
            figures["database_mb"] = round(
                (await conn.scalar(text("SELECT pg_database_size(current_database())"))) / 1e6
            )
        progress("proofs measured")
    finally:
        await engine.dispose()
        if not keep:
            async with server.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        await server.dispose()
    return figures


def with_embedded_postgres(
    work: Callable[[str], Awaitable[dict[str, Any]]], progress: Callable[[str], None]
) -> dict[str, Any]:
    """``work(admin_dsn)`` against a throwaway embedded PostgreSQL (needs the workspace's dev stack)."""
    import asyncio

    try:
        from devstack import infra
    except ImportError as exc:  # pragma: no cover - outside the workspace
        raise SystemExit(
            "no DATABASE_URL and no dev stack to start PostgreSQL with: pass --database-url"
        ) from exc
    with tempfile.TemporaryDirectory(prefix="audit-bench-pg-") as tmp, contextlib.ExitStack() as stack:
        dsn, described = stack.enter_context(infra.postgres(Path(tmp) / "pgdata", ephemeral=True))
        progress(f"PostgreSQL: {described}")
        return asyncio.run(work(dsn))
