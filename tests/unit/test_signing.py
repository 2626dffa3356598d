"""Standard Webhooks signing and ``webhook_secret`` rules (CONTRACT §10.3, §2.1, §2.3); pure, no sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.webhooks.signing import (
    is_masked_value,
    mask_secret,
    sign,
    signature_headers,
    signing_key,
    webhook_secret_problem,
)

KEY_BYTES = bytes(range(32))
WHSEC = "whsec_" + base64.b64encode(KEY_BYTES).decode()
PLAIN = "a plain shared secret, not base64!"
BODY = b'{"order":42,"note":"caf\xc3\xa9"}'


def test_whsec_key_is_base64_decoded() -> None:
    assert signing_key(WHSEC) == KEY_BYTES


def test_plain_key_is_utf8_of_the_whole_secret() -> None:
    assert signing_key("pässwörd-0123456789") == "pässwörd-0123456789".encode()
    # A secret that merely looks like base64 is still taken literally without the prefix.
    raw = base64.b64encode(KEY_BYTES).decode()
    assert signing_key(raw) == raw.encode()


def test_official_library_verifies_whsec_signature() -> None:
    now = int(time.time())  # the library checks a 5-minute tolerance against its own clock
    headers = signature_headers((WHSEC,), "run_123:2", now, BODY)
    assert headers["webhook-id"] == "run_123:2"
    assert headers["webhook-timestamp"] == str(now)
    assert headers["webhook-signature"].startswith("v1,")
    Webhook(WHSEC).verify(BODY, headers, json_parse=False)


def test_official_library_rejects_tampered_body_and_other_secret() -> None:
    now = int(time.time())
    headers = signature_headers((WHSEC,), "msg_1", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC).verify(BODY + b" ", headers, json_parse=False)
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers, json_parse=False)


def test_two_secrets_give_two_signatures_each_verifiable() -> None:
    """A rotation: receivers holding either the new or the previous secret verify the same request."""
    now = int(time.time())
    headers = signature_headers((WHSEC, PLAIN), "run_1:1", now, BODY)
    first, second = headers["webhook-signature"].split(" ")
    assert first == sign(WHSEC, "run_1:1", now, BODY) and second == sign(PLAIN, "run_1:1", now, BODY)
    Webhook(WHSEC).verify(BODY, headers, json_parse=False)
    Webhook("whsec_" + base64.b64encode(PLAIN.encode()).decode()).verify(BODY, headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(bytes(32)).decode()).verify(BODY, headers, json_parse=False)


def test_plain_secret_signature_recomputed_by_hand() -> None:
    expected = hmac.new(PLAIN.encode("utf-8"), b"msg_9.1700000000." + BODY, hashlib.sha256).digest()
    sig = sign(PLAIN, "msg_9", 1700000000, BODY)
    assert sig == "v1," + base64.b64encode(expected).decode()
    # Standard (not URL-safe) base64, padded: 32 bytes -> 44 chars ending in "=".
    assert len(sig) == 3 + 44 and sig.endswith("=")


def test_signature_covers_id_and_timestamp() -> None:
    base = sign(WHSEC, "m", 1, BODY)
    assert sign(WHSEC, "n", 1, BODY) != base
    assert sign(WHSEC, "m", 2, BODY) != base


def test_no_secret_no_headers() -> None:
    assert signature_headers((), "m", 1, BODY) == {}


@pytest.mark.parametrize("secret", [
    "x" * 16,
    "x" * 1024,
    WHSEC,
    "whsec_" + base64.b64encode(bytes(16)).decode(),  # exactly 16 bytes
])
def test_valid_secrets(secret: str) -> None:
    assert webhook_secret_problem(secret) is None


@pytest.mark.parametrize(("secret", "fragment"), [
    ("x" * 15, "16 to 1024"),
    ("x" * 1025, "16 to 1024"),
    ("whsec_" + base64.b64encode(bytes(15)).decode(), "at least 16 bytes"),
    ("whsec_" + "not base64 at all!!", "standard base64"),
    ("whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 12).decode(), "standard base64"),  # -_ alphabet
    ("whsec_" + base64.b64encode(bytes(20)).decode().rstrip("="), "standard base64"),  # unpadded
    ("whsec_\u2026abcdefghijklmnop", "masked"),
])
def test_invalid_secrets(secret: str, fragment: str) -> None:
    problem = webhook_secret_problem(secret)
    assert problem is not None and fragment in problem


def test_mask_secret() -> None:
    assert mask_secret(WHSEC) == "whsec_\u2026" + WHSEC[-4:]
    assert mask_secret("plain-secret-Xy9Q") == "whsec_\u2026Xy9Q"
    assert mask_secret(None) is None
    masked = mask_secret(WHSEC)
    assert masked is not None and is_masked_value(masked)
    assert KEY_BYTES.hex() not in masked and WHSEC not in masked


def test_is_masked_value() -> None:
    assert is_masked_value("whsec_\u2026abcd")
    assert not is_masked_value(WHSEC)
    assert not is_masked_value("whsec_...abcd")  # three ASCII dots are not the mask character
