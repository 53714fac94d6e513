"""Settings from the environment, read once at the edge (CLI) and passed down explicitly."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("vapi-reconciler"))


class Settings(BaseSettings):
    """What an operator may set; every field has an environment variable."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    database_url: SecretStr | None = Field(default=None, alias="RECONCILER_DATABASE_URL")
    data_dir: Path = Field(default_factory=default_data_dir, alias="RECONCILER_DATA_DIR")
    vapi_base_url: str = Field(default="https://api.vapi.ai", alias="VAPI_BASE_URL")
    master_key: SecretStr | None = Field(default=None, alias="RECONCILER_MASTER_KEY")
    concurrency: int = Field(default=16, ge=1, le=256, alias="RECONCILER_CONCURRENCY")
    vapi_timeout_s: float = Field(default=30.0, gt=0, alias="RECONCILER_VAPI_TIMEOUT")
