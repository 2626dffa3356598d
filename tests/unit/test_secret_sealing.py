"""Webhook secrets sealed at rest with the operator's keys, and the rotation of those keys; pure."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from shared.webhooks.sealing import SecretBox, SecretUnreadable, generate_key, is_sealed
from shared.webhooks.signing import mask_secret

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaXY9Q"
OLD, NEW = generate_key(), generate_key()

DB = {"DATABASE_URL": "postgresql://db/sluice"}


def test_sealed_value_hides_the_secret_but_keeps_its_mask() -> None:
    sealed = SecretBox([OLD]).seal(SECRET)
    assert is_sealed(sealed) and SECRET not in sealed and "MfKQ9r8GKYqr" not in sealed
    assert sealed.startswith("whsec_…XY9Q ")
    assert mask_secret(sealed) == mask_secret(SECRET) == "whsec_…XY9Q"
    assert SecretBox([OLD]).open(sealed) == SECRET
    assert SecretBox([OLD]).seal(sealed) == sealed  # already sealed: left alone


def test_a_plain_secret_stored_before_encryption_is_read_as_it_is() -> None:
    box = SecretBox([OLD])
    assert not is_sealed(SECRET) and box.open(SECRET) == SECRET
    assert box.open(box.reseal(SECRET)) == SECRET and is_sealed(box.reseal(SECRET))


def test_key_rotation_old_ciphertexts_open_with_the_previous_key_and_reseal_under_the_new() -> None:
    sealed_old = SecretBox([OLD]).seal(SECRET)
    rotated = SecretBox([NEW, OLD])
    assert rotated.open(sealed_old) == SECRET
    resealed = rotated.reseal(sealed_old)
    assert resealed != sealed_old and mask_secret(resealed) == mask_secret(sealed_old)
    assert rotated.reseal(resealed) == resealed  # already under the current key
    assert SecretBox([NEW]).open(resealed) == SECRET  # the old key may now go
    with pytest.raises(SecretUnreadable):
        SecretBox([NEW]).open(sealed_old)


def test_unicode_secret_round_trips() -> None:
    secret = "ünïcødé-密钥-secret-😀-Zz9é"
    box = SecretBox([NEW])
    assert box.open(box.seal(secret)) == secret and mask_secret(box.seal(secret)) == mask_secret(secret)


def test_keys_from_the_environment_or_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert Settings.from_env({**DB, "SLUICE_SECRET_KEY": f"{NEW}, {OLD}"}).secret_keys == (NEW, OLD)
    key_file = tmp_path / "keys"
    key_file.write_text(f"# current\n{NEW}\n{OLD}  # until reencrypt has run\n")
    settings = Settings.from_env({**DB, "SLUICE_SECRET_KEY_FILE": str(key_file)})
    assert settings.secret_keys == (NEW, OLD)
    assert settings.secret_box.open(SecretBox([OLD]).seal(SECRET)) == SECRET
    assert NEW not in repr(settings)


@pytest.mark.parametrize(("env", "fragment"), [
    ({"SLUICE_SECRET_KEY": "not-a-key"}, "SLUICE_SECRET_KEY: key 1 is not a valid key"),
    ({"SLUICE_SECRET_KEY": f"{NEW},short"}, "SLUICE_SECRET_KEY: key 2 is not a valid key"),
    ({"SLUICE_SECRET_KEY": NEW, "SLUICE_SECRET_KEY_FILE": "/x"}, "both set"),
    ({"SLUICE_SECRET_KEY_FILE": "/nonexistent/sluice-key"}, "SLUICE_SECRET_KEY_FILE: cannot read"),
])
def test_bad_key_settings_are_refused(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**DB, **env})
    assert fragment in caught.value.message


def test_no_key_means_no_box() -> None:
    with pytest.raises(ConfigError, match="SLUICE_SECRET_KEY or SLUICE_SECRET_KEY_FILE must be set"):
        _ = Settings.from_env(DB).secret_box
