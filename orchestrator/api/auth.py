"""The API's bearer token: where it comes from, and the check every endpoint but health runs.

The token is ``settings.api_token`` (``SMS_API_TOKEN``). When that is empty, the token in
``STATE_DIR/api.token`` is used; ``sms serve`` creates that file (a random token, mode
0600) on first start and prints where it is, never the token itself. The API refuses to
start with neither, and refuses tokens shorter than ``MIN_TOKEN_LENGTH`` characters.

Tokens are compared in constant time (``secrets.compare_digest``). This module must
never log, print or return a token.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.settings import Settings

TOKEN_FILE_NAME = "api.token"
MIN_TOKEN_LENGTH = 16


class ApiConfigurationError(RuntimeError):
    """The API cannot start as configured; the message says what to set."""


def token_file(settings: Settings) -> Path:
    """Where the generated API token lives: ``STATE_DIR/api.token``."""
    return settings.state_dir / TOKEN_FILE_NAME


def _check_length(token: str, where: str) -> str:
    if len(token) < MIN_TOKEN_LENGTH:
        raise ApiConfigurationError(
            f"the API token from {where} is shorter than {MIN_TOKEN_LENGTH} characters: "
            "use a long random one (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


def resolve_api_token(settings: Settings, *, create: bool = False) -> tuple[str, str]:
    """The API token and where it came from (``SMS_API_TOKEN`` or the token file's path).

    With ``create``, a missing token file is made with a fresh random token (mode 0600).
    Raises ApiConfigurationError when there is no usable token.
    """
    if settings.api_token:
        return _check_length(settings.api_token, "SMS_API_TOKEN"), "SMS_API_TOKEN"
    path = token_file(settings)
    if not path.exists() and create:
        settings.ensure_state_dir()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    if not path.exists():
        raise ApiConfigurationError(
            "no API token: set SMS_API_TOKEN (16 characters or more), or start `sms serve` once, "
            f"which writes a random token to {path} (mode 0600)")
    if path.stat().st_mode & 0o077:
        raise ApiConfigurationError(f"{path} is readable by other users: chmod 600 it")
    return _check_length(path.read_text().strip(), str(path)), str(path)


BEARER = HTTPBearer(auto_error=False, description="The API token (SMS_API_TOKEN or STATE_DIR/api.token).")


def bearer_checker(token: str):
    """A FastAPI dependency that lets a request in only with ``Authorization: Bearer <token>``."""
    expected = token.encode("utf-8")

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(BEARER)) -> None:
        if credentials is None or not credentials.credentials.strip():
            raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                "missing bearer token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.strip().encode("utf-8"), expected):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid bearer token",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    return require_token
