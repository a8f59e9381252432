"""Credential encryption at rest, and a credential type that never shows its secret.

Server passwords are stored only as Fernet tokens (``cryptography``'s authenticated
symmetric encryption). The key comes from ``settings.secret_key`` (``SMS_SECRET_KEY``) or,
failing that, from ``settings.key_file``, which is created with a fresh key and mode 0600
when absent.

This module must never log, print or put in an exception message a secret or the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from common.settings import Settings, get_settings

__all__ = ["Credential", "InvalidToken", "credential_key", "decrypt_secret", "encrypt_secret"]


def _read_or_create_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


def credential_key(settings: Settings | None = None) -> bytes:
    """The Fernet key from settings.secret_key, else from settings.key_file (made if absent)."""
    settings = settings or get_settings()
    if settings.secret_key:
        return settings.secret_key.encode("ascii")
    assert settings.key_file is not None  # filled in by Settings
    return _read_or_create_key_file(settings.key_file)


def encrypt_secret(secret: str, settings: Settings | None = None) -> bytes:
    """Encrypt ``secret`` for storage; returns a Fernet token."""
    return Fernet(credential_key(settings)).encrypt(secret.encode("utf-8"))


def decrypt_secret(token: bytes, settings: Settings | None = None) -> str:
    """Decrypt a token made by encrypt_secret; raises InvalidToken for a wrong key or tampering."""
    return Fernet(credential_key(settings)).decrypt(token).decode("utf-8")


@dataclass(frozen=True)
class Credential:
    """A user name and its password; repr and str show the user only, never the password."""

    username: str
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"{self.username} (password hidden)"

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, password=<hidden>)"

    def encrypted_password(self, settings: Settings | None = None) -> bytes:
        """The password as a Fernet token, ready for ``Server.credential``."""
        return encrypt_secret(self.password, settings)

    @classmethod
    def from_stored(
        cls, username: str, token: bytes, settings: Settings | None = None
    ) -> "Credential":
        """Rebuild a credential from a user name and a stored token."""
        return cls(username, decrypt_secret(token, settings))
