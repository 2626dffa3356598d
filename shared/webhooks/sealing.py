"""Webhook secrets at rest: sealed with the operator's key, opened only to sign.

A stored secret (in the job row and in every version snapshot) is *sealed*: its mask, a space, and a
Fernet token of the secret (AES-128-CBC with HMAC-SHA256, from ``cryptography``) under the first of the
operator's keys (``SLUICE_SECRET_KEY`` / ``SLUICE_SECRET_KEY_FILE``). The mask leads so that rendering a
job never needs the key (``mask_secret`` reads it off), and because a secret a client sends never
contains ``…``, a sealed value is never mistaken for a plain one. Every listed key opens a token, so a
new key goes first and the old one stays listed until ``sluice secrets reencrypt`` has sealed every
stored secret under the new one.

A value without the mask is a plain secret stored before encryption existed: it is read as it is and
sealed on the job's next change, or by ``sluice secrets reencrypt``.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.errors import ConfigError, Conflict
from shared.webhooks.signing import MASKED_CHARS, is_masked_value, mask_secret

KEY_SETTINGS = "SLUICE_SECRET_KEY or SLUICE_SECRET_KEY_FILE"
GENERATE_HINT = "generate one with `sluice secrets generate-key`"


class SecretUnreadable(Conflict):
    """A sealed secret that none of the configured keys opens (a key was dropped too early). In the API a
    409: the job's stored secret is unusable until a new one is sent or the old key is restored."""


def generate_key() -> str:
    """A new random key in the form the settings take (32 bytes, URL-safe base64)."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(keys: Sequence[str], setting: str) -> tuple[str, ...]:
    """The keys, each checked; ``ConfigError`` names the setting and the position of a bad one."""
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ConfigError(f"{setting}: key {position} is not a valid key (32 bytes, URL-safe base64); "
                              f"{GENERATE_HINT}") from None
    return tuple(keys)


def is_sealed(stored: str) -> bool:
    """True for a sealed value, False for a plain secret stored before encryption."""
    return is_masked_value(stored)


class SecretBox:
    """Seals and opens webhook secrets with the operator's keys (the first seals, every one opens)."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError(f"{KEY_SETTINGS} must be set: webhook secrets are stored encrypted with it; "
                              f"{GENERATE_HINT}")
        self._current = Fernet(keys[0])
        self._all = MultiFernet([Fernet(key) for key in keys])

    def seal(self, secret: str) -> str:
        """The stored form of ``secret``; a value already sealed is returned as it is."""
        if is_sealed(secret):
            return secret
        token = self._current.encrypt(secret.encode("utf-8")).decode("ascii")
        return f"{mask_secret(secret)} {token}"

    def open(self, stored: str) -> str:
        """The secret a stored value holds (a plain one as it is); ``SecretUnreadable`` when no key opens it."""
        if not is_sealed(stored):
            return stored
        try:
            return self._all.decrypt(stored[MASKED_CHARS + 1:].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretUnreadable("the job's stored webhook secret cannot be decrypted with the configured keys: "
                                   "send a new webhook_secret, or restore the key it was sealed with") from None

    def reseal(self, stored: str) -> str:
        """``stored`` sealed under the current key (a plain secret gets sealed); unchanged if it already is."""
        if is_sealed(stored):
            try:
                self._current.decrypt(stored[MASKED_CHARS + 1:].encode("ascii"))
                return stored
            except InvalidToken:
                pass
        return self.seal(self.open(stored))

    def open_all(self, *stored: str | None) -> tuple[str, ...]:
        """The secrets of the given stored values that are set, opened, in order."""
        return tuple(self.open(value) for value in stored if value)
