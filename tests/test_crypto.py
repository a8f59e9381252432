"""Credentials are encrypted at rest and never shown: common.crypto."""

from __future__ import annotations

import stat

import pytest
from cryptography.fernet import Fernet

from common.crypto import Credential, InvalidToken, credential_key, decrypt_secret, encrypt_secret
from common.settings import Settings

SECRET = "S3cret-Pässword!"


def test_round_trip_with_key_from_settings(tmp_path):
    key = Fernet.generate_key().decode()
    settings = Settings(state_dir=tmp_path, secret_key=key)
    token = encrypt_secret(SECRET, settings)
    assert SECRET.encode() not in token
    assert decrypt_secret(token, settings) == SECRET
    assert not (tmp_path / "secret.key").exists(), "an explicit key must not create a key file"


def test_key_file_is_created_private_and_reused(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    token = encrypt_secret(SECRET, settings)
    key_file = tmp_path / "state" / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().strip() == credential_key(settings)
    # A new process (new Settings) with the same key file decrypts what the first stored.
    assert decrypt_secret(token, Settings(state_dir=tmp_path / "state")) == SECRET


def test_wrong_key_or_tampering_is_refused(tmp_path):
    settings = Settings(state_dir=tmp_path, secret_key=Fernet.generate_key().decode())
    other = Settings(state_dir=tmp_path, secret_key=Fernet.generate_key().decode())
    token = encrypt_secret(SECRET, settings)
    with pytest.raises(InvalidToken):
        decrypt_secret(token, other)
    tampered = bytearray(token)
    tampered[len(tampered) // 2] ^= 0x01
    with pytest.raises(InvalidToken):
        decrypt_secret(bytes(tampered), settings)


def test_credential_never_shows_its_password(tmp_path):
    settings = Settings(state_dir=tmp_path, secret_key=Fernet.generate_key().decode())
    credential = Credential("migrator", SECRET)
    for shown in (repr(credential), str(credential), f"{credential}", f"{credential!r}",
                  repr([credential]), repr({"c": credential})):
        assert SECRET not in shown
        assert "migrator" in shown
    stored = credential.encrypted_password(settings)
    assert Credential.from_stored("migrator", stored, settings) == credential
