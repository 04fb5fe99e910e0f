"""Bulk screening from the command line: make a batch file, upload it and follow its job, benchmark it.

Synthetic CBCs come from the model's cohort generator (realistic, internally consistent adult panels at an
analyser's precision). A batch needs patients with an active screening consent under the default policy, so
the generator first creates its pool of patients and records their consents through the API, and every row
names one of them (with the name on their record). The benchmark prints measured figures only.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from devstack import infra, stack
from devstack.figures import Aim, ratio

UPLOAD_PATH = "/api/screening/batch"
CONSENT_TEXT = "I agree to have my blood count screened for vitamin B12 deficiency."
CBC_COLUMNS = ("hb", "rbc", "hct", "mcv", "mch", "mchc", "rdw", "wbc", "platelets", "neutrophils_pct",
               "lymphocytes_pct", "age", "sex")
CSV_HEADER = ("external_id", "name", *CBC_COLUMNS)


class BatchFailed(RuntimeError):
    """The platform refused the upload or a step of it; the message is for the operator."""


# -- synthetic batches (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolPatient:
    external_id: str
    name: str


def pool_patients(count: int, prefix: str) -> list[PoolPatient]:
    """A pool of patients to screen, with made-up names (so the batch carries names as a lab's file would)."""
    return [PoolPatient(f"{prefix}-{i:06d}", f"Synthetic Patient {prefix} {i:06d}") for i in range(count)]


def synthetic_rows(count: int, patients: list[PoolPatient], seed: int = 7) -> list[dict[str, Any]]:
    """``count`` rows of CBCs from the cohort generator, the patients taken in turn."""
    from inference.training.cohort import generate_cohort

    columns = generate_cohort(count, seed)
    rows = []
    for i in range(count):
        patient = patients[i % len(patients)]
        cbc: dict[str, Any] = {c: str(columns[c][i]) if c == "sex" else _reading(columns[c][i]) for c in CBC_COLUMNS}
        rows.append({"external_id": patient.external_id, "name": patient.name} | cbc)
    return rows


def _reading(value: Any) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_HEADER, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def json_bytes(rows: list[dict[str, Any]]) -> bytes:
    """The same rows as a JSON batch: an array of classify bodies."""
    return json.dumps([{"patient": {"external_id": r["external_id"], "name": r["name"]},
                        "cbc": {c: r[c] for c in CBC_COLUMNS}} for r in rows]).encode()


def media_type(path: Path) -> str:
    if path.suffix.lower() == ".json":
        return "application/json"
    if path.suffix.lower() == ".csv":
        return "text/csv"
    raise BatchFailed(f"{path.name}: a batch file ends in .csv or .json")


# -- the platform's API ----------------------------------------------------------------------------------


def login(client: httpx.Client, username: str, password: str) -> dict[str, str]:
    """Bearer headers of a user who logs in with a password alone (a lab technician: no MFA)."""
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    if response.status_code != 200:
        raise BatchFailed(f"login refused ({response.status_code}): {_detail(response)}")
    body = response.json()
    if "access_token" not in body:
        raise BatchFailed("this user must complete MFA to log in; use a lab technician account without MFA")
    return {"Authorization": f"Bearer {body['access_token']}"}


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)[:300]


async def create_pool(base_url: str, headers: dict[str, str], patients: list[PoolPatient],
                      concurrency: int = 16) -> None:
    """Create each patient (name on the record) and record their screening consent, ``concurrency`` at once."""
    queue = list(reversed(patients))

    async def call(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
        while True:
            response = await client.post(path, json=body, headers=headers)
            if response.status_code == 429:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response.status_code != 201:
                raise BatchFailed(f"{path} refused ({response.status_code}): {_detail(response)}")
            return response.json()

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            patient = queue.pop()
            record = await call(client, "/api/patients", {"external_id": patient.external_id, "name": patient.name})
            await call(client, "/api/consents", {"patient_id": record["id"], "method": "written", "text": CONSENT_TEXT})

    async with httpx.AsyncClient(base_url=base_url, timeout=60.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def upload(client: httpx.Client, headers: dict[str, str], body: bytes, media: str) -> dict[str, Any]:
    response = client.post(UPLOAD_PATH, content=body, headers=headers | {"content-type": media}, timeout=600.0)
    if response.status_code != 202:
        problems = ""
        if response.headers.get("content-type", "").startswith("application/json"):
            errors = response.json().get("errors") or []
            problems = "".join(f"\n  {e.get('field')}: {e.get('message')}" for e in errors[:20])
        raise BatchFailed(f"upload refused ({response.status_code}): {_detail(response)}{problems}")
    return response.json()


def follow(client: httpx.Client, headers: dict[str, str], url: str, *, timeout: float, interval: float = 0.5,
           on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Poll the job until every accepted row is recorded; returns the last report."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(url, params={"limit": 1}, headers=headers)
        if response.status_code != 200:
            raise BatchFailed(f"the job could not be read ({response.status_code}): {_detail(response)}")
        job = response.json()
        if on_progress is not None:
            on_progress(job)
        if job["status"] == "completed":
            return job
        if time.monotonic() > deadline:
            raise BatchFailed(f"the job was not completed after {timeout:.0f} s ({job['recorded']} of "
                              f"{job['accepted']} rows recorded); follow it at {url}")
        time.sleep(interval)


def summary(job: dict[str, Any], rejected_rows: list[dict[str, Any]]) -> str:
    risks = job["risk_classes"]
    lines = [
        f"job {job['id']}: {job['status']}",
        f"  rows {job['total']}: accepted {job['accepted']}, rejected {job['rejected']}",
        f"  recorded {job['recorded']}: classified {job['classified']} (risk class 1: {risks['1']}, "
        f"2: {risks['2']}, 3: {risks['3']}), not classified {job['not_classified']}",
        f"  {job['rows_per_second']:,.0f} rows/s from acceptance to recorded",
    ]
    if rejected_rows:
        lines.append("rejected rows:")
        lines += [f"  row {r['row']}: " + "; ".join(f"{e['field']}: {e['message']}" for e in r["errors"])
                  for r in rejected_rows]
        if job["rejected"] > len(rejected_rows):
            lines.append(f"  ... and {job['rejected'] - len(rejected_rows)} more (GET {UPLOAD_PATH}/{job['id']}"
                         "/rejected)")
    return "\n".join(lines)


def upload_and_follow(file: Path, *, url: str, username: str, password: str, timeout: float,
                      progress: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """What ``clinomic batch upload`` does: log in, upload, show progress until recorded, summarise."""
    from tqdm import tqdm

    media = media_type(file)
    with httpx.Client(base_url=url, timeout=60.0) as client:
        headers = login(client, username, password)
        accepted = upload(client, headers, file.read_bytes(), media)
        echo(f"accepted {accepted['accepted']} of {accepted['total']} rows ({accepted['rejected']} rejected); "
             f"job {accepted['job_id']}")
        bar = tqdm(total=accepted["accepted"], unit="rows", disable=not progress, dynamic_ncols=True)

        def advance(job: dict[str, Any]) -> None:
            bar.update(job["recorded"] - bar.n)

        try:
            job = follow(client, headers, accepted["url"], timeout=timeout, on_progress=advance)
        finally:
            bar.close()
    echo(summary(job, accepted["rejected_rows"]))
    return job


# -- benchmark -------------------------------------------------------------------------------------------


def model_limit(rows: list[dict[str, Any]], threads: int) -> float:
    """Rows/s of ``B12Model.assess`` (SHAP included) on these rows in one call, in this process."""
    from inference.model import B12Model
    from inference.settings import InferenceSettings
    from shared.events.screening import CompleteBloodCount

    model = B12Model.load(InferenceSettings().model_dir, thread_count=threads)
    features = np.array([CompleteBloodCount.model_validate({c: r[c] for c in CBC_COLUMNS}).as_features()
                         for r in rows], dtype=np.float64)
    model.assess(features[:100])  # warm up
    started = time.perf_counter()
    model.assess(features)
    return len(rows) / (time.perf_counter() - started)


def validation_rate(body: bytes) -> float:
    """Rows/s of the gateway's reading and checking of this CSV, in this process."""
    from gateway.batch import read_csv

    started = time.perf_counter()
    checked = read_csv(body, max_rows=sys.maxsize)
    return checked.total / (time.perf_counter() - started)


async def audited_after(database_url: str, since: float, wanted: int, timeout: float) -> float | None:
    """Seconds after ``since`` (a ``time.time()``) at which the ledger held ``wanted`` ScreeningBatchRecorded
    entries (one per chunk: a chunk's rows have no per-row recorded event) appended since then; None if it did
    not within ``timeout``."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from shared.db import create_engine

    engine = create_engine(database_url, application_name="clinomic-bench-batch", pool_size=1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                count = await conn.scalar(
                    text("SELECT count(*) FROM audit.entries WHERE event_type = 'ScreeningBatchRecorded' "
                         "AND appended_at >= :since"), {"since": datetime.fromtimestamp(since, UTC)})
            if count >= wanted:
                return time.time() - since
            await asyncio.sleep(1.0)
    finally:
        await engine.dispose()
    return None


def cpu_seconds(processes: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system) each process has used so far; empty where /proc is not there to ask."""
    used = {}
    for name, pid in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


@dataclass
class Run:
    figures: dict[str, Any]
    rows: list[dict[str, Any]]
    body: bytes


def through_platform(gateway_url: str, *, rows: int, patients: int, database_url: str | None, timeout: float,
                     processes: dict[str, int], echo: Callable[[str], None]) -> Run:
    """Upload ``rows`` synthetic rows for a consented pool of ``patients`` and wait until every row is recorded
    (and, given the database, audited); the CPU each of ``processes`` spent meanwhile."""
    pool = pool_patients(patients, f"BB{uuid.uuid4().hex[:6]}")
    with httpx.Client(base_url=gateway_url, timeout=60.0) as client:
        headers = login(client, "lab_demo", stack.DEMO_PASSWORD)
        started = time.perf_counter()
        asyncio.run(create_pool(gateway_url, headers, pool))
        echo(f"pool: {patients} patients with consents created in {time.perf_counter() - started:.1f} s")
        data = synthetic_rows(rows, pool)
        body = csv_bytes(data)
        echo(f"batch: {rows} rows, {len(body) / 1e6:.1f} MB of CSV")
        cpu_before = cpu_seconds(processes)
        wall_start, started = time.time(), time.perf_counter()
        accepted = upload(client, headers, body, "text/csv")
        answered = time.perf_counter() - started
        job = follow(client, headers, accepted["url"], timeout=timeout, interval=0.2)
        recorded = time.perf_counter() - started
        cpu = {name: round(spent - cpu_before.get(name, 0.0), 1) for name, spent in cpu_seconds(processes).items()}
    audited = asyncio.run(audited_after(database_url, wall_start, accepted["chunks"], timeout)) \
        if database_url else None
    return Run({
        "rows": rows, "accepted": accepted["accepted"], "rejected": accepted["rejected"],
        "chunks": accepted["chunks"], "upload_to_202_s": round(answered, 2), "server": accepted["timings"],
        "upload_to_recorded_s": round(recorded, 2), "rows_per_s_upload_to_recorded": round(rows / recorded),
        "audited_after_s": round(audited, 1) if audited is not None else None,
        "cpu_seconds_upload_to_recorded": cpu,
        "job": {k: job[k] for k in ("recorded", "classified", "not_classified", "risk_classes")},
    }, data, body)


def in_process(run: Run) -> dict[str, Any]:
    """The run's figures with the limits of validation and of the model on the same rows, in this process."""
    return run.figures | {
        "validation_rows_per_s_in_process": round(validation_rate(run.body)),
        "model_rows_per_s_1_thread": round(model_limit(run.rows, 1)),
        "model_rows_per_s_2_threads": round(model_limit(run.rows, 2)),
    }


#: Issue 17's bulk aims: rows/s upload → recorded, its share of the model's own limit, the ledger's lag.
RECORDED_ROWS_PER_S_AIM = 5_000
MODEL_LIMIT_SHARE_AIM = 0.5
LEDGER_TIME_AIM = 1.10


def model_limit_of(figures: dict[str, Any]) -> float:
    """The model-with-explanations limit of the run: the better of its 1- and 2-thread measurements."""
    return max(figures["model_rows_per_s_1_thread"], figures["model_rows_per_s_2_threads"])


def bulk_aims(figures: dict[str, Any]) -> list[Aim]:
    """Issue 17's bulk aims, each judged on the figure measured in this run (the ledger's when it was)."""
    limit = model_limit_of(figures)
    return [
        Aim("rows/s upload → recorded", figures["rows_per_s_upload_to_recorded"], RECORDED_ROWS_PER_S_AIM, "at least"),
        Aim("upload → recorded / model limit", ratio(figures["rows_per_s_upload_to_recorded"], limit),
            MODEL_LIMIT_SHARE_AIM, "at least", "×"),
        Aim("time upload → audited / upload → recorded",
            ratio(figures["audited_after_s"], figures["upload_to_recorded_s"]), LEDGER_TIME_AIM, "at most", "×"),
    ]


def report(figures: dict[str, Any]) -> str:
    server, audited, cpu = figures["server"], figures["audited_after_s"], figures["cpu_seconds_upload_to_recorded"]
    limit = model_limit_of(figures)
    audited_rate = ratio(figures["rows"], audited)
    return "\n".join([
        json.dumps(figures),
        f"upload → recorded: {figures['rows']:,} rows in {figures['upload_to_recorded_s']:.1f} s = "
        f"{figures['rows_per_s_upload_to_recorded']:,} rows/s",
        f"upload → audited: every chunk's entry in the ledger after {audited} s = {audited_rate:,.0f} rows/s"
        if audited_rate is not None else "upload → audited: not measured (no database URL)",
        f"  upload answered (202) after {figures['upload_to_202_s']:.2f} s: receive {server['receive_seconds']} s, "
        f"validation {server['validation_seconds']} s, admission {server['admission_seconds']} s, "
        f"accept {server['accept_seconds']} s, publish {server['publish_seconds']} s",
        f"  validation alone, in process: {figures['validation_rows_per_s_in_process']:,} rows/s",
        f"model-with-explanations limit (assess with SHAP, in process, same rows, same run): "
        f"{figures['model_rows_per_s_1_thread']:,} rows/s on 1 thread, "
        f"{figures['model_rows_per_s_2_threads']:,} rows/s on 2 threads; limit {limit:,} rows/s",
        f"  ratio to the limit: upload → recorded {ratio(figures['rows_per_s_upload_to_recorded'], limit):.2f}, "
        "upload → audited " + ("—" if audited_rate is None else f"{ratio(audited_rate, limit):.2f}"),
        "CPU seconds per process from upload to recorded: " + (
            ", ".join(f"{name} {spent}" for name, spent in sorted(cpu.items(), key=lambda item: -item[1]))
            or "not measured (a running platform)"),
        "aims (issue 17):",
        *(f"  {aim.line()}" for aim in bulk_aims(figures)),
    ])


def bench_main(*, rows: int, patients: int, gateway_url: str | None, state_dir: Path, timeout: float,
               echo: Callable[[str], None]) -> None:
    """Against a running platform, or one started here: then the in-process limits are measured after it has
    stopped, so that they do not share the cores with it."""
    if gateway_url:
        run = through_platform(gateway_url, rows=rows, patients=patients, database_url=os.environ.get("DATABASE_URL"),
                               timeout=timeout, processes={}, echo=echo)
        echo(report(in_process(run)))
        return
    ports = {name: infra.free_port() for name in stack.DEFAULT_PORTS}
    with stack.platform(state_dir, ports=ports, ephemeral=True,
                        extra_env={"LOG_LEVEL": "WARNING", "DEBUG": "false", "RATE_LIMIT_DEFAULT": "1000000/minute"}
                        ) as platform:
        echo(f"platform: {platform.infra}")
        processes = {name: p.pid for name, p in platform.processes.items()}
        if platform.bundled_broker is not None and platform.bundled_broker.process is not None:
            processes["broker"] = platform.bundled_broker.process.pid
        run = through_platform(platform.gateway_url, rows=rows, patients=patients,
                               database_url=platform.env["DATABASE_URL"], timeout=timeout, processes=processes,
                               echo=echo)
    echo(report(in_process(run)))
