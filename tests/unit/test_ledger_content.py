"""What the audit ledger keeps: the event, with PHI ciphertexts reduced to digests."""

from __future__ import annotations

from audit.domain import ledger_content


def test_name_ciphertexts_are_replaced_by_their_digest_at_any_depth() -> None:
    event = {"payload": {"request": {"patient": {"external_id": "P1", "name_ciphertext": "gAAAAAsecret"}}}}
    kept = ledger_content(event)
    patient = kept["payload"]["request"]["patient"]
    assert patient["external_id"] == "P1"
    assert set(patient["name_ciphertext"]) == {"sha256"} and "gAAAA" not in str(kept)


def test_events_without_phi_are_kept_unchanged() -> None:
    event = {"event_type": "LoginSucceeded", "payload": {"user_id": "u", "items": [1, {"a": None}]}}
    assert ledger_content(event) == event
