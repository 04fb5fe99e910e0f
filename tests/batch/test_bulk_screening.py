"""Bulk screening through the gateway: bad rows are reported and the rest recorded exactly once, whatever is
delivered again; jobs belong to their organisation; names never travel through Kafka."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack.chaos import chunk_recorded_event_id
from devstack.stack import Platform
from shared.events import Envelope, Topic
from shared.events.batch import SCREENING_BATCH_RECORDED_V2, ScreeningBatchRecordedV2
from tests.batch.conftest import (
    completed,
    consented,
    csv_batch,
    csv_row,
    demo_schema,
    raw_messages,
    stored_rows,
    upload,
)
from tests.conftest import HEALTHY_CBC, bearer, login, new_patient_id
from tests.records.helpers import consented_patient, create_patient, eventually, new_org, ok


def reasons(rejected_rows: list[dict]) -> dict[int, dict[str, tuple[str, str]]]:
    return {r["row"]: {e["field"]: (e["type"], e["message"]) for e in r["errors"]} for r in rejected_rows}


async def test_a_batch_with_bad_rows_reports_them_and_records_every_good_row_exactly_once(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    ids = await consented(gateway, lab, 3)
    body = csv_batch(csv_row(ids[0], hb=13.9), csv_row(ids[1], hb="abc"), csv_row(ids[2]), csv_row(ids[0], age=15),
                     csv_row(ids[1]))
    accepted = ok(await upload(gateway, lab, body), 202)
    assert (accepted["total"], accepted["accepted"], accepted["rejected"]) == (5, 3, 2)
    assert {row: set(fields) for row, fields in reasons(accepted["rejected_rows"]).items()} == {2: {"hb"}, 4: {"age"}}
    job_id = accepted["job_id"]
    await completed(gateway, lab, job_id)

    rows = await stored_rows(engine, await demo_schema(engine), job_id)
    assert [row for row, _, _ in rows] == [1, 3, 5]
    [announced] = await raw_messages(platform.env["KAFKA_BOOTSTRAP_SERVERS"], Topic.SCREENING_BATCH_RECORDED, job_id)
    chunk = Envelope[ScreeningBatchRecordedV2].model_validate_json(announced)
    assert (chunk.event_type, chunk.event_version) == SCREENING_BATCH_RECORDED_V2
    assert [(r.row, str(r.screening.screening_id), r.screening.status) for r in chunk.payload.rows] == rows, \
        "one chunk event carries every recorded row, as stored"


async def test_a_bulk_row_is_announced_only_inside_its_chunk(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    """No ``ScreeningRecorded`` of its own; on the analytics topic, one element of its chunk's de-identified event."""
    ids = await consented(gateway, lab, 2)
    job_id = ok(await upload(gateway, lab, csv_batch(csv_row(ids[0]), csv_row(ids[1]))), 202)["job_id"]
    await completed(gateway, lab, job_id)
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    [deidentified] = await raw_messages(bootstrap, Topic.ANALYTICS_SCREENINGS, job_id, at_least=1)
    screening_ids = [sid for _, sid, _ in await stored_rows(engine, await demo_schema(engine), job_id)]
    assert [s["screening_id"] for s in json.loads(deidentified)["payload"]["screenings"]] == screening_ids
    assert await raw_messages(bootstrap, Topic.SCREENING_RECORDED, job_id) == []
    for screening_id in screening_ids:
        assert await raw_messages(bootstrap, Topic.SCREENING_RECORDED, screening_id) == []
        assert await raw_messages(bootstrap, Topic.ANALYTICS_SCREENINGS, screening_id) == [deidentified]


async def test_a_redelivered_chunk_records_and_announces_nothing_new(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    ids = await consented(gateway, lab, 2)
    job_id = ok(await upload(gateway, lab, csv_batch(csv_row(ids[0]), csv_row(ids[1]))), 202)["job_id"]
    await completed(gateway, lab, job_id)
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    [requested] = await raw_messages(bootstrap, Topic.SCREENING_BATCH_REQUESTED, job_id, at_least=1)
    [classified] = await raw_messages(bootstrap, Topic.SCREENING_BATCH_CLASSIFIED, job_id, at_least=1)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2_000_000)
    await producer.start()
    try:
        for _ in range(2):
            await producer.send_and_wait(Topic.SCREENING_BATCH_REQUESTED, requested, key=job_id.encode())
            await producer.send_and_wait(Topic.SCREENING_BATCH_CLASSIFIED, classified, key=job_id.encode())
    finally:
        await producer.stop()
    # each copy of either command makes the screening service announce the chunk again: 1 + 2 + 2 times
    announced = [Envelope[ScreeningBatchRecordedV2].model_validate_json(m) for m in
                 await raw_messages(bootstrap, Topic.SCREENING_BATCH_RECORDED, job_id, at_least=5, timeout=60)]
    assert len(announced) == 5 and {e.event_id for e in announced} == {chunk_recorded_event_id(requested)}
    assert len({e.payload.model_dump_json(exclude={"recorded_at"}) for e in announced}) == 1, \
        "every copy carries the rows as first stored"
    deidentified = await raw_messages(bootstrap, Topic.ANALYTICS_SCREENINGS, job_id, at_least=5, timeout=60)
    assert len({json.loads(m)["event_id"] for m in deidentified}) == 1

    rows = await stored_rows(engine, await demo_schema(engine), job_id)
    assert [row for row, _, _ in rows] == [1, 2]
    assert await raw_messages(bootstrap, Topic.SCREENING_RECORDED, job_id) == []
    assert (await completed(gateway, lab, job_id))["recorded"] == 2
    event_id = json.loads(classified)["event_id"]

    async def ledger_entries() -> int:
        async with engine.connect() as conn:
            return await conn.scalar(text("SELECT count(*) FROM audit.entries WHERE event_id = :e"), {"e": event_id})

    assert await eventually(ledger_entries, timeout=30) == 1


async def test_rows_without_an_active_consent_are_rejected_with_consent_required(
    gateway: httpx.AsyncClient, lab: dict
) -> None:
    [with_consent] = await consented(gateway, lab, 1)
    without_consent = (await create_patient(gateway, lab))["external_id"]
    body = csv_batch(csv_row(with_consent), csv_row(without_consent), csv_row(new_patient_id()))
    accepted = ok(await upload(gateway, lab, body), 202)
    assert accepted["accepted"] == 1
    assert {row: {f: kind for f, (kind, _) in fields.items()} for row, fields in reasons(accepted["rejected_rows"]).items()
            } == {2: {"external_id": "consent_required"}, 3: {"external_id": "consent_required"}}


async def test_a_csv_gets_a_reason_for_each_missing_non_numeric_nan_and_under_18_value(
    gateway: httpx.AsyncClient, lab: dict
) -> None:
    [patient] = await consented(gateway, lab, 1)
    body = csv_batch(csv_row(patient, hb=""), csv_row(patient, mcv="eighty"), csv_row(patient, rdw="NaN"),
                     csv_row(patient, age=17), csv_row(patient))
    accepted = ok(await upload(gateway, lab, body), 202)
    found = reasons(accepted["rejected_rows"])
    assert set(found) == {1, 2, 3, 4} and accepted["accepted"] == 1
    assert found[1]["hb"][0] == "missing"
    assert "must be a number" in found[2]["mcv"][1]
    assert "finite" in found[3]["rdw"][1]
    assert "adults only" in found[4]["age"][1]
    paged = ok(await gateway.get(f"/api/screening/batch/{accepted['job_id']}/rejected", params={"limit": 3},
                                 headers=lab))
    assert [r["row"] for r in paged["items"]] == [1, 2, 3] and paged["next_after"] == 3


async def test_a_csv_without_a_required_column_is_refused_with_422_naming_it(gateway: httpx.AsyncClient,
                                                                              lab: dict) -> None:
    body = csv_batch(csv_row("P-1")).replace(b",rdw", b"", 1)
    response = await upload(gateway, lab, body)
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["field"] == "header" and error["type"] == "missing_columns" and "rdw" in error["message"]


async def test_an_empty_or_garbled_upload_is_refused_with_422(gateway: httpx.AsyncClient, lab: dict) -> None:
    for body, media in ((b"", "text/csv"), (b"\x00\xff\xfe", "text/csv"), (b"[{", "application/json"),
                        (b'{"patient": {}}', "application/json")):
        response = await upload(gateway, lab, body, media)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["errors"][0]["field"] == "body"


async def test_more_than_the_maximum_rows_is_refused_with_a_clear_error(gateway: httpx.AsyncClient,
                                                                         lab: dict) -> None:
    response = await upload(gateway, lab, csv_batch(*([csv_row("P-1")] * 100_001)))
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["type"] == "too_many_rows" and "100001 rows" in error["message"] and "at most 100000" in error["message"]


async def test_a_batch_without_any_screenable_row_is_refused_and_nothing_is_accepted(
    gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    response = await upload(gateway, lab, csv_batch(csv_row("P-1", hb="x"), csv_row(new_patient_id())))
    assert response.status_code == 422
    body = response.json()
    assert {e["field"]: e["type"] for e in body["errors"]} == {"rows.1.hb": "value_error",
                                                              "rows.2.external_id": "consent_required"}
    assert body["rejected"] == 2


async def test_only_text_csv_and_application_json_are_accepted(gateway: httpx.AsyncClient, lab: dict) -> None:
    response = await upload(gateway, lab, b"<rows/>", "application/xml")
    assert response.status_code == 415 and response.json()["errors"][0]["field"] == "header.content-type"


async def test_a_doctor_may_not_upload_a_batch(gateway: httpx.AsyncClient) -> None:
    doctor = bearer(await login(gateway, "doctor_demo"))
    assert (await upload(gateway, doctor, csv_batch(csv_row("P-1")))).status_code == 403


async def test_another_organisations_job_is_not_found_like_an_unknown_one(gateway: httpx.AsyncClient,
                                                                           lab: dict) -> None:
    [patient] = await consented(gateway, lab, 1)
    job_id = ok(await upload(gateway, lab, csv_batch(csv_row(patient))), 202)["job_id"]
    other = (await new_org(gateway, "batch", roles=("lab_technician",))).headers["lab"]
    for suffix in ("", "/rejected"):
        theirs = await gateway.get(f"/api/screening/batch/{job_id}{suffix}", headers=other)
        unknown = await gateway.get(f"/api/screening/batch/{uuid.uuid4()}{suffix}", headers=other)
        assert theirs.status_code == unknown.status_code == 404 and theirs.json() == unknown.json()


async def test_progress_reaches_completed_with_per_row_outcomes_in_row_order_and_in_pages(
    gateway: httpx.AsyncClient, lab: dict
) -> None:
    ids = await consented(gateway, lab, 3)
    rows = [csv_row(ids[i % 3]) for i in range(6)]
    rows.insert(3, csv_row(ids[0], wbc="many"))
    accepted = ok(await upload(gateway, lab, csv_batch(*rows)), 202)
    assert accepted["status"] == "queued" and accepted["url"] == f"/api/screening/batch/{accepted['job_id']}"
    job = await completed(gateway, lab, accepted["job_id"], limit=4)
    assert (job["accepted"], job["recorded"], job["rejected"], job["percent"]) == (6, 6, 1, 100.0)
    assert job["classified"] + job["not_classified"] == 6 and sum(job["risk_classes"].values()) == job["classified"]
    assert [o["row"] for o in job["outcomes"]] == [1, 2, 3, 5] and job["next_after"] == 5
    rest = ok(await gateway.get(accepted["url"], params={"after": 5, "limit": 4}, headers=lab))
    assert [o["row"] for o in rest["outcomes"]] == [6, 7] and rest["next_after"] is None
    first = job["outcomes"][0]
    assert first["status"] == "classified" and first["label"] and first["risk_class"] in (1, 2, 3)
    screening = ok(await gateway.get(f"/api/screenings/{first['screening_id']}", headers=lab))
    assert screening["assessment"]["risk_class"] == first["risk_class"]


async def test_a_json_batch_of_classify_bodies_is_screened_like_a_csv_one(
    gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    [patient] = await consented(gateway, lab, 1)
    body = [{"patient": {"external_id": patient}, "cbc": HEALTHY_CBC},
            {"patient": {"external_id": patient}, "cbc": HEALTHY_CBC | {"hb": "high"}}]
    accepted = ok(await upload(gateway, lab, json.dumps(body).encode(), "application/json"), 202)
    assert accepted["accepted"] == 1 and set(reasons(accepted["rejected_rows"])[2]) == {"cbc.hb"}
    await completed(gateway, lab, accepted["job_id"])
    assert [row for row, _, _ in await stored_rows(engine, await demo_schema(engine), accepted["job_id"])] == [1]


async def test_where_no_consent_is_required_a_batch_creates_each_new_patient_once(gateway: httpx.AsyncClient) -> None:
    org = await new_org(gateway, "bulk", roles=("lab_technician",))
    ok(await gateway.put("/api/screening/policy", json={"consent_required": False}, headers=org.headers["admin"]))
    lab = org.headers["lab"]
    patient = new_patient_id()
    body = csv_batch(csv_row(patient, "Nina Bulk"), csv_row(patient, "Nina Bulk"), csv_row(patient, "Someone Else"))
    accepted = ok(await upload(gateway, lab, body), 202)
    assert accepted["accepted"] == 2
    assert reasons(accepted["rejected_rows"])[3]["name"][0] == "patient_details_mismatch"
    await completed(gateway, lab, accepted["job_id"])
    [created] = ok(await gateway.get("/api/patients", params={"external_id": patient}, headers=lab))["items"]
    assert created["name"] == "Nina Bulk"


async def test_patient_names_of_a_batch_reach_no_topic_and_no_stored_report(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, engine: AsyncEngine
) -> None:
    name = f"Canary {uuid.uuid4().hex}"
    patient = (await consented_patient(gateway, lab, name=name))["external_id"]
    accepted = ok(await upload(gateway, lab, csv_batch(csv_row(patient, name), csv_row(patient, name, hb=name))), 202)
    assert accepted["accepted"] == 1
    await completed(gateway, lab, accepted["job_id"])
    bootstrap = platform.env["KAFKA_BOOTSTRAP_SERVERS"]
    for topic in (Topic.SCREENING_BATCH_RECORDED, Topic.ANALYTICS_SCREENINGS):  # the probe reads the job's events
        assert await raw_messages(bootstrap, topic, accepted["job_id"], at_least=1), topic
    for topic in (Topic.SCREENING_BATCH_REQUESTED, Topic.SCREENING_BATCH_CLASSIFIED, Topic.SCREENING_BATCH_RECORDED,
                  Topic.SCREENING_RECORDED, Topic.ANALYTICS_SCREENINGS):
        assert await raw_messages(bootstrap, topic, name) == [], topic
    async with engine.connect() as conn:
        leaked = await conn.scalar(
            text("SELECT count(*) FROM gateway.batch_jobs j LEFT JOIN gateway.batch_chunks c ON c.job_id = j.id "
                 "WHERE j.id = :j AND (j::text LIKE :n OR position(convert_to(:name, 'UTF8') IN c.command) > 0)"),
            {"j": accepted["job_id"], "n": f"%{name}%", "name": name})
    assert leaked == 0


async def test_the_cli_uploads_a_file_follows_it_and_prints_the_summary(
    platform: Platform, gateway: httpx.AsyncClient, lab: dict, tmp_path: Path
) -> None:
    ids = await consented(gateway, lab, 2)
    file = tmp_path / "batch.csv"
    file.write_bytes(csv_batch(csv_row(ids[0]), csv_row(ids[1], platelets="lots"), csv_row(ids[1])))
    command = [str(Path(sys.executable).parent / "clinomic"), "batch", "upload", str(file),
               "--url", platform.gateway_url, "--username", "lab_demo", "--password", "Demo@2024", "--no-progress"]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "accepted 2, rejected 1" in result.stdout and "recorded 2" in result.stdout
    assert "row 2: platelets:" in result.stdout
