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
from shared.events import Envelope
from shared.events.analytics import ScreeningRecordedDeidentifiedV1
from tests.analytics.conftest import Clinic
from tests.analytics.helpers import ANALYTICS_TOPIC, analytics_events, carries, read_topic
from tests.conftest import HEALTHY_CBC
from tests.records.helpers import classified, consented_patient, new_org


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
                if e["payload"]["screening_id"] == screening_id]

    published = of_screening(await read_topic(bootstrap(platform), ANALYTICS_TOPIC,
                                              lambda found: len(of_screening(found)) >= 2))
    assert {e["event_id"] for e in published} == {first["event_id"]}
    assert all(e["payload"] == first["payload"] for e in published)
