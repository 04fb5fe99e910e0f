"""The de-identified stream: every recorded screening appears on ``clinomic.analytics.screenings`` without a
name, an external id or a patient record id; the pseudonymous key is stable within an organisation and
unrelated across organisations; a redelivery repeats the same event id."""

from __future__ import annotations

import json
from datetime import datetime

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from devstack.stack import Platform
from shared.events import Envelope, new_envelope
from shared.events.analytics import ScreeningBatchRecordedDeidentifiedV1, ScreeningRecordedDeidentifiedV1
from shared.events.batch import ScreeningBatchRecordedV2
from shared.kafka import encode, headers_of
from tests.analytics.conftest import Clinic
from tests.analytics.helpers import (
    ANALYTICS_TOPIC,
    CBC_BY_EXPECTED_CLASS,
    analytics_events,
    carries,
    of_tenant,
    read_topic,
)
from tests.batch.conftest import completed, csv_batch, csv_row, raw_messages, upload
from tests.conftest import HEALTHY_CBC
from tests.records.helpers import classified, consented_patient, create_doctor, create_lab, new_org, ok


def bootstrap(platform: Platform) -> str:
    return platform.env["KAFKA_BOOTSTRAP_SERVERS"]


async def clinic_events(platform: Platform, clinic: Clinic) -> dict[str, dict]:
    events = await analytics_events(bootstrap(platform), clinic.org.id, {s["id"] for s in clinic.screened()})
    return {e["payload"]["screening_id"]: e for e in events}


async def test_every_recorded_screening_is_published_de_identified(
    platform: Platform, clinic: Clinic,
) -> None:
    events = await clinic_events(platform, clinic)
    assert set(events) == {s["id"] for s in clinic.screened()}
    for key, screening in clinic.screenings:
        event = events[screening["id"]]
        assert (event["event_type"], event["event_version"]) == ("ScreeningRecordedDeidentified", 1)
        Envelope[ScreeningRecordedDeidentifiedV1].model_validate(event)
        payload, patient = event["payload"], clinic.patients[key]
        assert (payload["risk_class"], payload["label"]) == (screening["assessment"]["risk_class"],
                                                             screening["assessment"]["label"])
        assert payload["recorded_on"] == datetime.fromisoformat(screening["recorded_at"]).date().isoformat()
        assert payload["lab_id"] == patient["lab_id"]
        assert payload["doctor_id"] == patient["referring_doctor_id"]
        assert payload["model"] == screening["assessment"]["model"]


async def test_the_stream_carries_no_name_external_id_or_patient_record_id(
    platform: Platform, clinic: Clinic,
) -> None:
    records = await read_topic(bootstrap(platform), ANALYTICS_TOPIC,
                               carries(clinic.org.id, {s["id"] for s in clinic.screened()}))
    raw = b"\n".join(r.value or b"" for r in records)
    ours = [r for r in records if r.value and json.loads(r.value)["tenant_id"] == clinic.org.id]
    assert all(r.key and r.key.decode() == json.loads(r.value)["payload"]["patient_key"] for r in ours), \
        "messages are keyed by the pseudonymous patient key"
    assert clinic.org.id.encode() in raw, "the probe must read the organisation's events"
    assert clinic.canary.encode() not in raw
    for patient in clinic.patients.values():
        assert patient["external_id"].encode() not in raw and patient["id"].encode() not in raw


async def test_ages_are_banded_and_the_analytes_kept(platform: Platform, clinic: Clinic) -> None:
    events = await clinic_events(platform, clinic)
    healthy = next(events[s["id"]]["payload"] for s in clinic.screened({"referred"})
                   if s["assessment"]["risk_class"] == 1)
    assert (healthy["age_band"], healthy["sex"]) == ("45-49", "male")  # HEALTHY_CBC: 46, male
    assert healthy["cbc"] == {k: float(v) for k, v in HEALTHY_CBC.items() if k not in ("age", "sex")}


async def test_a_patient_keeps_one_key_within_the_organisation(platform: Platform, clinic: Clinic) -> None:
    events = await clinic_events(platform, clinic)
    keys = {key: {events[s["id"]]["payload"]["patient_key"] for s in clinic.screened({key})}
            for key in clinic.patients}
    assert len(keys["referred"]) == 1, "two screenings of one patient, one key"
    assert len(set.union(*keys.values())) == 3, "three patients, three keys"


async def test_the_same_patient_in_another_organisation_gets_an_unrelated_key(
    platform: Platform, gateway: httpx.AsyncClient, clinic: Clinic,
) -> None:
    """Same external id, same name, same panel in a second organisation: nothing in common but the values."""
    elsewhere = await new_org(gateway, "analytics2", roles=("lab_technician",))
    referred = clinic.patients["referred"]
    await consented_patient(gateway, elsewhere.headers["lab"], external_id=referred["external_id"],
                            name=clinic.canary)
    screening = await classified(gateway, elsewhere.headers["lab"], referred["external_id"],
                                 name=clinic.canary)
    (theirs,) = await analytics_events(bootstrap(platform), elsewhere.id, {screening["id"]})
    ours = await clinic_events(platform, clinic)
    assert theirs["payload"]["patient_key"] not in {e["payload"]["patient_key"] for e in ours.values()}


async def test_a_redelivered_recorded_screening_is_published_again_with_the_same_event_id(
    platform: Platform, clinic: Clinic,
) -> None:
    screening_id = clinic.screened({"unassigned"})[0]["id"]

    def recorded_of(records: list[ConsumerRecord[bytes, bytes]]) -> list[ConsumerRecord[bytes, bytes]]:
        return [r for r in records
                if r.value and json.loads(r.value)["payload"]["screening_id"] == screening_id]

    recorded = recorded_of(await read_topic(bootstrap(platform), "clinomic.screening.recorded",
                                            lambda found: bool(recorded_of(found))))
    first = (await clinic_events(platform, clinic))[screening_id]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(platform))
    await producer.start()
    try:
        copy = recorded[0]
        await producer.send_and_wait("clinomic.screening.recorded", copy.value, key=copy.key,
                                     headers=list(copy.headers))
    finally:
        await producer.stop()

    def of_screening(records: list[ConsumerRecord[bytes, bytes]]) -> list[dict]:
        return [e for e in (json.loads(r.value) for r in records if r.value)
                if e["payload"].get("screening_id") == screening_id]

    published = of_screening(await read_topic(bootstrap(platform), ANALYTICS_TOPIC,
                                              lambda found: len(of_screening(found)) >= 2))
    assert {e["event_id"] for e in published} == {first["event_id"]}
    assert all(e["payload"] == first["payload"] for e in published)


async def test_a_recorded_chunk_is_one_de_identified_event_whose_elements_are_what_the_single_path_gives(
    platform: Platform, gateway: httpx.AsyncClient,
) -> None:
    """Each element is compared with what the stream publishes for that screening announced on its own (the
    per-row ``ScreeningRecorded`` a v1 producer would have sent, published here by the test)."""
    org = await new_org(gateway, "analyticsbatch", roles=("lab_technician",))
    admin, lab = org.headers["admin"], org.headers["lab"]
    placed = await consented_patient(gateway, lab, lab_id=(await create_lab(gateway, admin))["id"],
                                     referring_doctor_id=(await create_doctor(gateway, admin))["id"])
    plain = await consented_patient(gateway, lab)
    body = csv_batch(csv_row(placed["external_id"]), csv_row(plain["external_id"], **CBC_BY_EXPECTED_CLASS[3]),
                     csv_row(placed["external_id"], **CBC_BY_EXPECTED_CLASS[2]))
    job_id = ok(await upload(gateway, lab, body), 202)["job_id"]
    await completed(gateway, lab, job_id)

    def chunk_events(records: list[ConsumerRecord[bytes, bytes]]) -> list[dict]:
        return [e for e in of_tenant(records, org.id) if e["event_type"] == "ScreeningBatchRecordedDeidentified"]

    records = await read_topic(bootstrap(platform), ANALYTICS_TOPIC, lambda found: bool(chunk_events(found)))
    [event] = chunk_events(records)
    chunk = Envelope[ScreeningBatchRecordedDeidentifiedV1].model_validate(event)
    assert (event["event_version"], event["correlation_id"]) == (1, job_id)
    assert [r.key for r in records if r.value and json.loads(r.value)["event_id"] == event["event_id"]] == \
        [job_id.encode()], "keyed by the job id"
    [recorded] = await raw_messages(bootstrap(platform), "clinomic.screening.batch-recorded", job_id, at_least=1)
    rows = Envelope[ScreeningBatchRecordedV2].model_validate_json(recorded)
    assert [s.screening_id for s in chunk.payload.screenings] == [r.screening.screening_id for r in rows.payload.rows]

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(platform))
    await producer.start()
    try:
        for row in rows.payload.rows:
            single = new_envelope(row.screening, event_type="ScreeningRecorded", event_version=1,
                                  tenant_id=rows.tenant_id, actor=rows.actor, causation=rows)
            await producer.send_and_wait("clinomic.screening.recorded", encode(single),
                                         key=str(row.screening.screening_id).encode(),
                                         headers=[(k, v.encode()) for k, v in headers_of(single).items()])
    finally:
        await producer.stop()
    singles = {e["payload"]["screening_id"]: e["payload"] for e in await analytics_events(
        bootstrap(platform), org.id, {str(s.screening_id) for s in chunk.payload.screenings})
        if e["event_type"] == "ScreeningRecordedDeidentified"}
    assert [s.model_dump(mode="json") for s in chunk.payload.screenings] == \
        [singles[str(s.screening_id)] for s in chunk.payload.screenings]
    assert chunk.payload.screenings[0].lab_id is not None and chunk.payload.screenings[0].doctor_id is not None
