"""Patient names are encrypted with the newest key and stay readable across key rotation."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from shared.crypto import PhiCipher
from shared.settings import SecretProblem, fernet_keys


def test_a_name_round_trips_and_the_ciphertext_does_not_contain_it() -> None:
    cipher = PhiCipher([Fernet.generate_key()])
    token = cipher.encrypt("Ada Lovelace")
    assert "Ada" not in token and cipher.decrypt(token) == "Ada Lovelace"


def test_a_name_encrypted_under_an_old_key_is_readable_and_rotates_to_the_new_key() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    token = PhiCipher([old]).encrypt("Grace Hopper")
    rotated = PhiCipher([new, old]).rotate(token)
    assert PhiCipher([new]).decrypt(rotated) == "Grace Hopper"


def test_a_ciphertext_from_an_unknown_key_is_refused() -> None:
    token = PhiCipher([Fernet.generate_key()]).encrypt("x")
    with pytest.raises(ValueError):
        PhiCipher([Fernet.generate_key()]).decrypt(token)


@pytest.mark.parametrize("raw", ["", "not-a-key", "c2hvcnQ="])
def test_missing_or_malformed_master_keys_are_refused(raw: str) -> None:
    with pytest.raises(SecretProblem):
        fernet_keys(SecretStr(raw), "MASTER_ENCRYPTION_KEY")
