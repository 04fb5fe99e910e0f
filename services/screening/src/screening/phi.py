"""The screening service's PHI vault: encrypt, decrypt and index names and consent texts of a tenant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.crypto import BlindIndex, PhiCipher


@dataclass(frozen=True)
class SealedName:
    ciphertext: str
    key_id: str
    index: str


class PhiVault:
    def __init__(self, cipher: PhiCipher, index: BlindIndex) -> None:
        self.cipher = cipher
        self.index = index

    def seal_name(self, tenant: uuid.UUID, name: str) -> SealedName:
        return SealedName(self.cipher.encrypt(name), self.cipher.current_key_id, self.index.digest(tenant, name))

    def seal_text(self, text: str) -> tuple[str, str]:
        return self.cipher.encrypt(text), self.cipher.current_key_id

    def name_index(self, tenant: uuid.UUID, name: str) -> str:
        return self.index.digest(tenant, name)

    def open(self, ciphertext: str | None) -> str | None:
        return self.cipher.decrypt(ciphertext) if ciphertext else None
