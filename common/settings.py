"""The one typed place where configuration comes from.

Every setting has a default that works on a single machine (the *embedded defaults*: a
SQLite database and a SQLite-backed broker in a state directory) and an ``SMS_*``
environment variable that overrides it, e.g. ``SMS_DATABASE_URL=postgresql://...`` or
``SMS_BROKER_URL=redis://127.0.0.1:6379/0``. Nothing else in the code base reads the
environment for configuration.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of an orchestrator or proxy worker process."""

    model_config = SettingsConfigDict(env_prefix="SMS_", extra="ignore")

    state_dir: Path = Field(
        default=Path.home() / ".local" / "state" / "sms",
        description="Where the embedded database, broker, key file and logs live.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the job database; default: SQLite in state_dir.",
    )
    broker_url: str = Field(
        default="",
        description="Celery broker URL; default: an embedded SQLite broker in state_dir.",
    )
    secret_key: str = Field(
        default="",
        description="Fernet key that encrypts stored credentials; default: read from key_file.",
    )
    key_file: Path | None = Field(
        default=None,
        description="File holding the credential key; default state_dir/secret.key (made 0600).",
    )
    queue_prefix: str = Field(default="sms", description="Prefix of every queue name.")
    orchestrator_queue: str = Field(
        default="sms.orchestrator", description="Queue of the orchestrator's own tasks."
    )
    worker_concurrency: int = Field(default=2, ge=1, description="Prefork processes per proxy worker.")
    orchestrator_concurrency: int = Field(
        default_factory=lambda: (os.cpu_count() or 1) + 1,
        ge=1,
        description="Prefork processes of the orchestrator worker (default: cores + 1; its scan "
                    "tasks alternate between waiting for an SMB server and for the database).",
    )
    visibility_timeout: int = Field(
        default=3600,
        ge=60,
        description="Seconds before the Redis broker redelivers an unacknowledged message.",
    )
    batch_lease_seconds: int = Field(
        default=120,
        ge=5,
        description="A batch whose worker sent no heartbeat for this long is leased again.",
    )
    batch_max_files: int = Field(default=500, ge=1, description="Files per batch at most.")
    batch_max_bytes: int = Field(default=256 << 20, ge=1, description="Bytes per batch at most (a larger file is a batch of its own).")
    smb_require_signing: bool = Field(default=True, description="Refuse unsigned SMB sessions.")
    smb_encrypt: bool = Field(default=False, description="Encrypt SMB traffic (SMB 3).")
    api_token: str = Field(default="", description="Bearer token for the REST API and UI.")
    api_host: str = Field(default="127.0.0.1", description="Address `sms serve` listens on.")
    api_port: int = Field(default=8080, ge=1, le=65535, description="Port `sms serve` listens on.")
    flower_host: str = Field(default="127.0.0.1", description="Address `sms flower` listens on.")
    flower_port: int = Field(default=5555, ge=1, le=65535, description="Port `sms flower` listens on.")
    flower_user: str = Field(default="", description="Basic-auth user of Flower (required to start it).")
    flower_password: str = Field(
        default="", description="Basic-auth password of Flower (required to start it)."
    )

    @model_validator(mode="after")
    def _fill_state_defaults(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{self.state_dir / 'sms.sqlite'}"
        # psycopg2 is the PostgreSQL driver we ship; SQLAlchemy 2.1 would otherwise pick
        # psycopg 3 for a plain postgresql:// URL, which is not installed.
        for plain in ("postgresql://", "postgres://"):
            if self.database_url.startswith(plain):
                self.database_url = "postgresql+psycopg2://" + self.database_url[len(plain):]
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.state_dir / 'broker.sqlite'}"
        if self.key_file is None:
            self.key_file = self.state_dir / "secret.key"
        return self

    @property
    def broker_is_embedded(self) -> bool:
        """True when the broker is the SQLite one, which has no visibility timeout."""
        return self.broker_url.startswith("sqla+")

    def destination_queue(self, destination_name: str) -> str:
        """The queue a destination's proxy workers consume."""
        return f"{self.queue_prefix}.dest.{destination_name}"

    def ensure_state_dir(self) -> Path:
        """Create the state directory (private to the user) and return it."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.state_dir


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings, so the next get_settings() reads the environment again."""
    get_settings.cache_clear()
