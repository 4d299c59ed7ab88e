"""The hub's one typed settings object, built at the edge (CLI or app factory).

Precedence, highest first: explicit arguments (CLI flags), `MCP_HUB_*` environment
variables, the optional config file (YAML or TOML, `--config` / `MCP_HUB_CONFIG`),
then the defaults below. Nothing else in the hub reads `os.environ`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from .errors import ConfigError


class Settings(BaseSettings):
    """Everything the hub can be configured with."""

    model_config = SettingsConfigDict(env_prefix="MCP_HUB_", extra="forbid", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    registry: Path = Path("registry.yaml")
    data_dir: Path = Path(".mcp-hub")
    log_level: str = "info"

    # Sessions and child processes.
    connect_timeout: float = Field(20.0, gt=0, description="Seconds to spawn/connect and handshake.")
    call_timeout: float = Field(60.0, gt=0, description="Default per-call timeout; registry limits override.")
    concurrency: int = Field(16, ge=1, description="Default in-flight calls per server session.")
    idle_timeout: float = Field(600.0, gt=0, description="Seconds an unused session lives before it is reaped.")
    max_children: int = Field(32, ge=1, description="Cap on hosted stdio child processes.")
    max_sessions: int = Field(256, ge=1, description="Cap on live sessions of every kind.")
    restart_backoff: float = Field(0.25, ge=0, description="First delay before respawning a crashed child.")
    restart_backoff_max: float = Field(30.0, ge=0)
    prewarm: bool = Field(False, description="Start every hosted server's latest version at start-up.")

    _config_file: ClassVar[Path | None] = None

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"critical", "error", "warning", "info", "debug"}:
            raise ValueError("must be one of critical, error, warning, info, debug")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = cls._config_file
        if path is not None:
            if path.suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Build settings from flags (`overrides`, None = not given), environment and config file."""
        if config_file is None:
            config_file = os.environ.get("MCP_HUB_CONFIG")
        path = Path(config_file) if config_file else None
        if path is not None and not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        given = {key: value for key, value in overrides.items() if value is not None}
        # The config file is chosen per call; a subclass keeps the choice off the shared class.
        bound = type("Settings", (cls,), {"_config_file": path})
        try:
            return bound(**given)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise ConfigError(f"invalid settings: {exc}") from None

    @property
    def logs_dir(self) -> Path:
        """Where hosted servers' stderr goes."""
        return self.data_dir / "logs"
