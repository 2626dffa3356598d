"""Standard Webhooks signatures (CONTRACT §10.3) and the rules for the ``webhook_secret`` field (§2.1, §2.3).

A job's secrets (``webhook_secret`` and, during a rotation, ``webhook_secret_previous``) sign both endpoint
calls (§5.2) and terminal webhooks (§5.15): one ``v1,`` signature per secret, space-separated, as Standard
Webhooks allows, so a receiver holding either secret verifies. Signing is pure: the caller passes the
message id and the timestamp (it owns the clock). The secret itself never leaves this module in any form
but ``mask_secret``'s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
MASK_CHAR = "\u2026"  # "…": marks a masked value, which is never a secret a client meant to send
MASKED_CHARS = len(SECRET_PREFIX) + 1 + 4  # whsec_, …, the last four characters
SECRET_MIN_CHARS = 16
SECRET_MAX_CHARS = 1024
WHSEC_MIN_KEY_BYTES = 16


def _decode_whsec(rest: str) -> bytes:
    """Strict standard base64 (``+/``, padded); raises ``binascii.Error`` otherwise."""
    # validate=True rejects URL-safe characters and whitespace instead of silently dropping them, so the
    # key a receiver derives with any Standard Webhooks library is exactly the key we sign with.
    return base64.b64decode(rest, validate=True)


def signing_key(secret: str) -> bytes:
    """HMAC key for ``secret``: base64 decoding of the rest after ``whsec_``, else the UTF-8 of it all.

    Raises ``ValueError`` for a ``whsec_`` secret whose rest is not standard base64 (which
    ``webhook_secret_problem`` refuses at write time, so stored secrets never do).
    """
    if secret.startswith(SECRET_PREFIX):
        return _decode_whsec(secret[len(SECRET_PREFIX):])
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "<msg_id>.<timestamp>.<body>")>``; ``body`` is the bytes as sent."""
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(secrets: tuple[str, ...], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three ``webhook-*`` headers for one request, or ``{}`` when the job has no secret.

    ``secrets``: the job's secrets, current first; each adds its ``v1,`` signature to ``webhook-signature``
    (space-separated). ``timestamp`` is integer Unix seconds of this request; ``msg_id`` is
    ``<run id>:<attempt>`` for endpoint calls (§5.2) and the delivery's id for terminal webhooks.
    """
    if not secrets:
        return {}
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets),
    }


def webhook_secret_problem(secret: str) -> str | None:
    """None if ``secret`` may be stored, else the 422 message for the ``webhook_secret`` field.

    Callers first treat ``""`` as null and an exact echo of the current mask as "unchanged" (§2.3); any
    other value containing ``…`` is refused here as a masked value, before the shape rules.
    """
    if is_masked_value(secret):
        return "looks like a masked value; send the full secret"
    if not SECRET_MIN_CHARS <= len(secret) <= SECRET_MAX_CHARS:
        return f"must be {SECRET_MIN_CHARS} to {SECRET_MAX_CHARS} characters"
    if secret.startswith(SECRET_PREFIX):
        try:
            key = _decode_whsec(secret[len(SECRET_PREFIX):])
        except (binascii.Error, ValueError):
            return f"after {SECRET_PREFIX} must be standard base64"
        if len(key) < WHSEC_MIN_KEY_BYTES:
            return f"after {SECRET_PREFIX} must decode to at least {WHSEC_MIN_KEY_BYTES} bytes"
    return None


def mask_secret(secret: str | None) -> str | None:
    """``whsec_…`` + the last 4 characters (whatever the secret's form), or None when unset (§2.3).

    A sealed secret (``shared.webhooks.sealing``) starts with its mask, which is read off it: rendering a
    job never needs the key.
    """
    if not secret:
        return None
    if MASK_CHAR in secret:
        return secret[:MASKED_CHARS]
    return f"{SECRET_PREFIX}{MASK_CHAR}{secret[-4:]}"


def is_masked_value(value: str) -> bool:
    """True when ``value`` contains ``…`` (U+2026), i.e. it looks like something ``mask_secret`` produced."""
    return MASK_CHAR in value
