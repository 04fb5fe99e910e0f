"""A migration run: check everything that can stop it before anything is written, read, plan, write, report.

The order is the guarantee the command makes: the v1 source is read in full, the v1 key is tried on every
encrypted name, this platform's keys and database are checked, and the temporary-password file (if asked for)
is reserved, all before the first write. A failure there changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError
from tqdm import tqdm

from clinomic_ops.pgtools import OpsError, safe_url
from clinomic_ops.v1 import mapping
from clinomic_ops.v1.report import Report
from clinomic_ops.v1.source import Source
from clinomic_ops.v1.writer import NoPublisher, Publisher, Secrets, Writer


@dataclass(frozen=True)
class Options:
    dsn: str
    v1_keys: list[bytes] | None
    dry_run: bool = False
    org_filter: str | None = None
    skip_screenings: bool = False
    batch_size: int = 500
    temporary_passwords: Path | None = None
    progress: bool | None = None


def v1_decryptor(keys: list[bytes] | None) -> Callable[[str], str] | None:
    """Decrypts v1 Fernet tokens with any of the v1 keys; a token none opens raises ``ValueError``."""
    if not keys:
        return None
    from cryptography.fernet import Fernet, InvalidToken, MultiFernet

    try:
        fernet = MultiFernet([Fernet(k) for k in keys])
    except ValueError:
        raise OpsError("the v1 encryption key is not a Fernet key (32 url-safe base64-encoded bytes)") from None

    def decrypt(token: str) -> str:
        try:
            return fernet.decrypt(token.encode()).decode()
        except (InvalidToken, UnicodeDecodeError):
            raise ValueError("not decryptable") from None

    return decrypt


def parse_keys(raw: str | None) -> list[bytes] | None:
    keys = [k.strip().encode() for k in (raw or "").split(",") if k.strip()]
    return keys or None


def read_all(source: Source, options: Options, progress: bool) -> dict[str, list[dict[str, Any]]]:
    collections = [c for c in mapping.V1_COLLECTIONS if not (c == "screenings" and options.skip_screenings)]
    documents: dict[str, list[dict[str, Any]]] = {}
    with tqdm(desc="reading v1", unit=" docs", disable=not progress, file=sys.stderr) as bar:
        for collection in collections:
            documents[collection] = []
            for doc in source.documents(collection, options.org_filter):
                documents[collection].append(doc)
                bar.update(1)
    return documents


def check_names(plan: mapping.Plan, keys_given: bool) -> None:
    """Refuse the whole run when the v1 key opens none of the encrypted names (a wrong or missing key); a key
    that opens some only refuses the patients whose names it cannot open (v1 without a configured key made a
    new random key at each start, so one database can hold names no key opens)."""
    if plan.name_tokens and not plan.names_decrypted:
        if not keys_given:
            raise OpsError(f"{plan.name_tokens} v1 patient name(s) are encrypted: give the v1 MASTER_ENCRYPTION_KEY "
                           "with --v1-encryption-key or V1_ENCRYPTION_KEY")
        raise OpsError(f"the v1 encryption key decrypts none of the {plan.name_tokens} encrypted patient name(s): "
                       "wrong --v1-encryption-key? Nothing was changed.")


def platform_vault() -> Any:
    """This platform's PHI vault from the screening service's own settings (MASTER_ENCRYPTION_KEY,
    PHI_BLIND_INDEX_KEY), checked as the service checks them."""
    from screening.phi import PhiVault
    from screening.settings import ScreeningSettings
    from shared.crypto import BlindIndex, PhiCipher
    from shared.settings import SecretProblem

    try:
        settings = ScreeningSettings()
        return PhiVault(PhiCipher(settings.phi_keys()), BlindIndex(settings.blind_index_key()))
    except SecretProblem as exc:
        raise OpsError(f"this platform's keys: {exc}") from None


async def check_database(engine: Any, dsn: str) -> None:
    from sqlalchemy import text

    try:
        async with engine.connect() as conn:
            ready = await conn.scalar(text("SELECT to_regclass('auth.users') IS NOT NULL "
                                           "AND to_regclass('screening.outbox') IS NOT NULL"))
    except (OSError, Exception) as exc:  # noqa: BLE001 - asyncpg and SQLAlchemy raise many kinds
        raise OpsError(f"the platform database {safe_url(dsn)} cannot be reached: {type(exc).__name__}: {exc}"
                       ) from None
    if not ready:
        raise OpsError(f"{safe_url(dsn)} has no auth and screening schemas: start the platform once (its services "
                       "migrate their schemas) before migrating into it")


def reserve(path: Path) -> Any:
    """The temporary-password file, created now (0600, never over an existing file) so a run cannot end with
    passwords set that nobody can hand out."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise OpsError(f"{path} exists: the temporary-password file is never overwritten") from None
    except OSError as exc:
        raise OpsError(f"{path}: {exc.strerror}") from None
    return os.fdopen(descriptor, "w", encoding="utf-8")


async def migrate(source: Source, options: Options) -> Report:
    """Run the migration (or the dry run) and return its report; raises :class:`OpsError` before any write
    when the source, the keys or the database are not usable."""
    import json

    from shared.db import create_engine

    started = time.monotonic()
    progress = sys.stderr.isatty() if options.progress is None else options.progress
    run_id = uuid.uuid4()
    report = Report(source.description, options.dry_run, options.org_filter, options.skip_screenings, str(run_id))
    decrypt = v1_decryptor(options.v1_keys)
    documents = await asyncio.to_thread(read_all, source, options, progress)
    plan = mapping.plan(documents, decrypt)
    check_names(plan, options.v1_keys is not None)
    vault = platform_vault()
    engine = create_engine(options.dsn, application_name="clinomic-ops-v1-migration", pool_size=2)
    passwords = None
    publisher: Any = NoPublisher()
    try:
        await check_database(engine, options.dsn)
        if options.temporary_passwords is not None and not options.dry_run:
            passwords = reserve(options.temporary_passwords)
        for collection, n in plan.read.items():
            report.counts[collection].read = n
        for problem in plan.refused:
            report.refuse(problem)
        report.warnings.extend(plan.warnings)
        if not options.dry_run:
            from shared.settings import CommonSettings

            publisher = Publisher(engine, CommonSettings(), report)
        secrets = Secrets(vault, temporary_passwords=passwords is not None)
        total = len(plan.organizations) + sum(len(v) for k, v in plan.records.items() if k != "organizations")
        with tqdm(total=total, desc="dry run" if options.dry_run else "migrating", unit=" records",
                  disable=not progress, file=sys.stderr) as bar:
            writer = Writer(engine, secrets, report, run_id=run_id, dry_run=options.dry_run,
                            batch_size=options.batch_size, publisher=publisher, progress=bar)
            try:
                await writer.write(plan)
            except DBAPIError as exc:  # the driver's message only: the statement's parameters stay out of it
                raise OpsError(f"the database refused a write ({type(exc.orig).__name__}: {exc.orig}); the batches "
                               "committed before it stay, and a new run continues from there") from None
        if passwords is not None:
            json.dump(secrets.issued, passwords, indent=2)
            passwords.write("\n")
    finally:
        if passwords is not None:
            passwords.close()
        await publisher.close()
        await engine.dispose()
    report.seconds = time.monotonic() - started
    return report
