"""Encryption of PHI (patient names) with versioned Fernet keys, and the keyed blind index used to find them.

* :class:`PhiCipher` encrypts with the newest key and decrypts with any configured key (MultiFernet). Every
  key has a public *key id* (a fingerprint), stored next to each ciphertext, so a rotation can tell what is
  left to re-encrypt and a service can refuse to start without a key that stored data needs.
* :class:`BlindIndex` is an HMAC-SHA256 of the normalised name under a key of its own, derived per tenant,
  so that an exact-match search never decrypts the table and equal names of two tenants do not correlate.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
import uuid

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


def key_id(key: bytes) -> str:
    """A public fingerprint of a Fernet key (SHA-256 of a 256-bit random key reveals nothing of it)."""
    return hashlib.sha256(b"clinomic-phi-key|" + key).hexdigest()[:16]


class PhiCipher:
    """Encrypts with the newest key, decrypts with any; ``rotate`` re-encrypts under the newest key."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._fernets = [Fernet(k) for k in keys]
        self._fernet = MultiFernet(self._fernets)
        self.key_ids: list[str] = [key_id(k) for k in keys]

    @property
    def current_key_id(self) -> str:
        """The id of the key every new ciphertext is made with (the first, newest key)."""
        return self.key_ids[0]

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("ciphertext is not readable with the configured keys") from exc

    def rotate(self, token: str) -> str:
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("ciphertext is not readable with the configured keys") from exc

    def key_id_of(self, token: str) -> str | None:
        """Which configured key made ``token`` (``None``: none of them)."""
        for kid, fernet in zip(self.key_ids, self._fernets, strict=True):
            try:
                fernet.decrypt(token.encode())
            except InvalidToken:
                continue
            return kid
        return None


def normalise_name(name: str) -> str:
    """The form a name is indexed in: Unicode NFKC, case-folded, inner whitespace collapsed, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


class BlindIndex:
    """Keyed digests of names for exact-match search (HMAC-SHA256, one derived key per tenant)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the blind-index key must be at least 32 bytes")
        self._key = key
        self._tenant_keys: dict[uuid.UUID, bytes] = {}

    def _tenant_key(self, tenant: uuid.UUID) -> bytes:
        derived = self._tenant_keys.get(tenant)
        if derived is None:
            derived = hmac.new(self._key, b"clinomic-blind-index|" + tenant.bytes, hashlib.sha256).digest()
            self._tenant_keys[tenant] = derived
        return derived

    def digest(self, tenant: uuid.UUID, name: str) -> str:
        return hmac.new(self._tenant_key(tenant), normalise_name(name).encode(), hashlib.sha256).hexdigest()
