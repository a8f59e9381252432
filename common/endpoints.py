"""SMB endpoints of stored servers, with their credential decrypted only when needed.

Both the orchestrator (walking sources, PreExistingData, mirror deletes) and proxy
workers (copying) reach a server's share from its ``Server`` row: address, port, user
name and the Fernet-encrypted password, decrypted here with the key from this process's
own settings. This is the one place that turns a stored credential into a live one.

It must never log, print or return the password other than inside the ``SmbEndpoint``
(whose repr hides it), and never accept a clear-text password from a message.
"""

from __future__ import annotations

from common.crypto import decrypt_secret
from common.models import Server
from common.settings import Settings, get_settings
from common.smb.connection import SmbEndpoint


def server_endpoint(server: Server, share: str, settings: Settings | None = None) -> SmbEndpoint:
    """The endpoint of ``share`` on ``server``, logged on as the server's stored account."""
    settings = settings or get_settings()
    password = decrypt_secret(server.credential, settings) if server.credential else ""
    return SmbEndpoint(
        host=server.address,
        share=share,
        username=server.username,
        password=password,
        port=server.port or 445,
        encrypt=settings.smb_encrypt,
        require_signing=settings.smb_require_signing,
    )
