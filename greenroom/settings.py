"""One typed settings object, read from GREENROOM_* environment variables."""

from __future__ import annotations

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from greenroom.errors import ConfigError

DEFAULT_DB = "sqlite:///.greenroom/greenroom.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GREENROOM_", frozen=True)

    db: str = Field(DEFAULT_DB, description="sqlite:///path or postgresql://…")
    lease_seconds: float = Field(10.0, gt=0, description="how long a lease lasts unrenewed")
    heartbeat_seconds: float = Field(2.0, gt=0, description="how often a worker renews its leases")
    poll_seconds: float = Field(
        0.25, gt=0, description="maintenance tick: recovery, delays, polling"
    )
    max_stalls: int = Field(3, ge=1, description="lease losses before a run fails")
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    concurrency: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _heartbeat_fits_lease(self) -> Settings:
        if self.heartbeat_seconds >= self.lease_seconds / 2:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds}) must be less than half of "
                f"lease_seconds ({self.lease_seconds}) so a lease survives one missed beat"
            )
        return self


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment and overrides; errors become one clear ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
