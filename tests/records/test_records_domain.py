"""Pure rules of the clinical records: admission, the patient rule, blind index, cursors, key checks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st

from screening import domain
from shared.crypto import BlindIndex, PhiCipher, key_id, normalise_name

PATIENT = domain.StoredPatient(uuid.uuid4(), "idx-a", True, "female")
CONSENT = uuid.uuid4()


def test_a_known_patient_with_consent_and_matching_details_is_admitted() -> None:
    verdict = domain.admit(consent_required=True, patient=PATIENT, consent_id=CONSENT, name_index="idx-a",
                           sex="female")
    assert verdict == domain.Admitted(PATIENT.id, CONSENT)


def test_without_consent_a_required_consent_refuses() -> None:
    verdict = domain.admit(consent_required=True, patient=PATIENT, consent_id=None, name_index=None, sex=None)
    assert verdict == domain.Refused("consent_required", PATIENT.id)


def test_an_unknown_patient_is_refused_when_consent_is_required_and_new_otherwise() -> None:
    assert domain.admit(consent_required=True, patient=None, consent_id=None, name_index="x", sex="male") == \
        domain.Refused("consent_required", None)
    assert domain.admit(consent_required=False, patient=None, consent_id=None, name_index="x", sex="male") == \
        domain.Admitted(None, None)


def test_a_mismatch_is_reported_before_a_missing_consent() -> None:
    verdict = domain.admit(consent_required=True, patient=PATIENT, consent_id=None, name_index="idx-b", sex="male")
    assert verdict == domain.Refused("patient_details_mismatch", PATIENT.id, ("name", "sex"))


@given(name=st.one_of(st.none(), st.text(max_size=5)),
       sex=st.one_of(st.none(), st.sampled_from(["male", "female"])))
def test_details_left_out_are_never_a_mismatch(name: str | None, sex: str | None) -> None:
    mismatches = domain.patient_mismatches(PATIENT, name_index=None, sex=None)
    assert mismatches == []
    stored = domain.StoredPatient(uuid.uuid4(), None, False, None)
    assert "sex" not in domain.patient_mismatches(stored, name_index=None, sex=sex)
    assert ("name" in domain.patient_mismatches(stored, name_index=name, sex=None)) == (name is not None)


@given(st.text(max_size=40))
def test_name_normalisation_is_idempotent_and_ignores_case_and_spacing(name: str) -> None:
    once = normalise_name(name)
    assert normalise_name(once) == once
    assert normalise_name(f"  {name.upper()}  ") == normalise_name(name.upper())
    assert "  " not in once and once == once.strip()


def test_the_blind_index_depends_on_the_key_and_the_tenant_not_on_spelling() -> None:
    key, org, other = b"k" * 32, uuid.uuid4(), uuid.uuid4()
    index = BlindIndex(key)
    assert index.digest(org, "Ada  Lovelace") == index.digest(org, "ada lovelace")
    assert index.digest(org, "Ada Lovelace") != index.digest(other, "Ada Lovelace")
    assert index.digest(org, "Ada Lovelace") != BlindIndex(b"q" * 32).digest(org, "Ada Lovelace")
    with pytest.raises(ValueError):
        BlindIndex(b"short")


def test_the_cipher_names_the_key_each_ciphertext_was_made_with() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    token = PhiCipher([old]).encrypt("x")
    both = PhiCipher([new, old])
    assert both.current_key_id == key_id(new) and both.key_id_of(token) == key_id(old)
    assert both.key_id_of(both.rotate(token)) == key_id(new)
    assert PhiCipher([new]).key_id_of(token) is None


def test_missing_keys_are_the_stored_ones_not_configured() -> None:
    assert domain.missing_keys(["a", "b", None], ["a"]) == {"b"}
    assert domain.missing_keys([None], ["a"]) == set()


@given(st.datetimes(timezones=st.just(UTC)), st.uuids())
def test_a_cursor_round_trips(moment: datetime, ident: uuid.UUID) -> None:
    assert domain.decode_cursor(domain.encode_cursor(moment, ident)) == (moment, ident)


@pytest.mark.parametrize("cursor", ["", "bm9wZQ==", "!!!", "MjAyNC0wMS0wMXxub3QtYS11dWlk"])
def test_a_foreign_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(domain.BadCursor):
        domain.decode_cursor(cursor)


def test_changed_fields_name_only_what_differs() -> None:
    assert domain.changed_fields({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": None}) == ["b"]
