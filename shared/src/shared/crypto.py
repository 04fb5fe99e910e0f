"""Encryption of PHI (patient names) with versioned Fernet keys (MultiFernet: newest key first)."""

from __future__ import annotations


from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class PhiCipher:
    """Encrypts with the newest key, decrypts with any; ``rotate`` re-encrypts under the newest key."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("ciphertext is not readable with the configured keys") from exc

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()

