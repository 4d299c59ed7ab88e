"""The hub's one typed settings object, built at the edge (CLI or app factory).

Precedence, highest first: explicit arguments (CLI flags), `MCP_HUB_*` environment
variables, the optional config file (YAML or TOML, `--config` / `MCP_HUB_CONFIG`),
then the defaults below. Nothing else in the hub reads `os.environ`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from .egress import Allowlist
from .errors import ConfigError
from .sandbox import SandboxLimits

# The host's variables a hosted server inherits (nothing else of the hub's environment reaches it).
INHERITED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS",
                 "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT")
PROVIDER_PREFIX = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class ProviderConfig(BaseModel):
    """One model provider declared in configuration, reached as `<prefix>/<model>`.

    `api_key_env` names the environment variable holding its key (optional: local servers
    such as Ollama need none); `Settings` reads it once and stores the value in `api_key`.
    `api` is the wire format: any OpenAI-compatible chat completions API, or Anthropic Messages.
    `models` are names to list in `GET /v1/models` instead of asking the provider.
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(min_length=1)
    api: Literal["openai", "anthropic"] = "openai"
    api_key_env: str | None = None
    api_key: SecretStr | None = None
    models: list[str] = Field(default_factory=list)


def _env_alias(field: str, *plain: str) -> AliasChoices:
    """Read a field from its `MCP_HUB_*` name, then the provider's own variable names."""
    return AliasChoices(field, f"MCP_HUB_{field.upper()}", *plain)


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
    # The sandbox of hosted servers (mcp_hub.sandbox); registry limits override the defaults per server.
    sandbox: bool = Field(True, description="Run hosted servers in a bubblewrap sandbox; a registry.yaml entry "
                          "may opt out with `sandbox: false`.")
    sandbox_bwrap: str = Field("bwrap", min_length=1, description="The bubblewrap executable (name or path).")
    sandbox_uid: int = Field(65534, ge=1, description="The unprivileged uid (and gid) hosted servers run as.")
    sandbox_memory_mb: int = Field(2048, ge=16, description="Per child: data memory (RLIMIT_DATA) in MiB.")
    sandbox_cpu_seconds: int = Field(3600, ge=1, description="Per child: CPU seconds over its life (RLIMIT_CPU).")
    sandbox_processes: int = Field(256, ge=8, description="Per child: processes and threads (RLIMIT_NPROC).")
    sandbox_open_files: int = Field(1024, ge=32, description="Per child: open files (RLIMIT_NOFILE).")
    sandbox_file_size_mb: int = Field(256, ge=1, description="Per child: largest file it may write (RLIMIT_FSIZE), MiB.")
    sandbox_disk_mb: int = Field(512, ge=1, description="Per child: MiB in its data folder (checked by the hub), "
                                 "and the size of each of its private /tmp and HOME.")
    sandbox_stderr_kb: int = Field(1024, ge=16, description="Per server: KiB of stderr log before it rotates to .1.")
    sandbox_base_env: dict[str, str] = Field(
        default_factory=dict, description="Variables every hosted server gets besides PATH/HOME/TMPDIR: by default "
        "the hub's own LANG, LC_ALL, TZ and CA settings (SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, ...), when set; the CA "
        "settings reach only servers with `network: egress`.")
    prewarm: bool = Field(False, description="Start every hosted server's latest version at start-up.")
    package_install_timeout: float = Field(
        300.0, gt=0, description="Seconds to install a published npm/PyPI package version (once, into data_dir/packages).")
    # Hosted (stdio) servers' output: what the hub buffers, and how it tells a wedged child.
    stdio_message_max_bytes: int = Field(
        32 * 1024 * 1024, ge=64 * 1024, description="Largest message a hosted server may write; the hub never buffers "
        "more, and a result over it fails its call with result_too_large. Results over tool_output_max_bytes are cut "
        "anyway: this bounds memory per child, not what callers see.")
    busy_probe_timeout: float = Field(
        5.0, gt=0, description="After a hosted server's call times out, seconds it has to answer a probe "
        "(tools/list); one that does not is still busy and is restarted.")
    egress_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts, *.domains and CIDRs that MCP server URLs may reach although "
        "private (comma-separated or JSON in MCP_HUB_EGRESS_ALLOW); unset: only public addresses.")
    allow_unauthenticated: bool = Field(
        False, description="Serve on a non-loopback address although no API key exists (anyone can use the hub).")

    # Model providers (`provider/model` in chat completions). The built-in ones also read the
    # providers' usual variable names, so an existing OPENAI_API_KEY just works.
    openai_base_url: str = Field("https://api.openai.com/v1", validation_alias=_env_alias("openai_base_url", "OPENAI_BASE_URL"))
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env_alias("openai_api_key", "OPENAI_API_KEY"))
    anthropic_base_url: str = Field("https://api.anthropic.com",
                                    validation_alias=_env_alias("anthropic_base_url", "ANTHROPIC_BASE_URL"))
    anthropic_api_key: SecretStr | None = Field(None, validation_alias=_env_alias("anthropic_api_key", "ANTHROPIC_API_KEY"))
    providers: dict[str, ProviderConfig] = Field(
        default_factory=dict, description="Further providers by prefix (JSON in MCP_HUB_PROVIDERS); may replace a built-in.")
    default_provider: str | None = Field(None, description="Prefix for model names without one; unset: such names are a 400.")
    provider_timeout: float = Field(120.0, gt=0, description="Seconds for one model call (streaming: until the first byte).")

    # Chat completions.
    max_turns_default: int = Field(10, ge=1, description="Model calls per request when the request sets no max_turns.")
    max_turns_cap: int = Field(50, ge=1, description="Hard cap on a request's max_turns.")
    tool_result_max_chars: int = Field(16_000, ge=256, description="Tool result text given to the model, at most.")
    tool_output_max_bytes: int = Field(1 << 20, ge=1024, description="A tool result's JSON over this is cut, marked truncated.")
    idempotency_ttl: float = Field(24 * 3600.0, gt=0, description="Seconds an Idempotency-Key's response is kept.")

    # State shared by hub instances (idempotency records, rate-limit counts): memory:// or redis://.
    state_url: SecretStr = Field(
        SecretStr("memory://"), description="Where shared state lives: memory:// (this process) or "
        "redis://[:password@]host:port/db (also rediss://, unix://) for several hubs that act as one.")
    state_prefix: str = Field("mcp-hub:", min_length=1, description="Prefix of every key the hub writes to Redis.")

    # Client-tool handoffs and deferred completions (state kept in the state store).
    handoff_ttl: float = Field(3600.0, gt=0, description="Seconds a handoff's saved loop state (correlation_id) is kept.")
    deferred_ttl: float = Field(3600.0, gt=0, description="Seconds a finished deferred completion can be fetched.")
    deferred_lease: float = Field(30.0, gt=0, description="Seconds a running deferred completion's record outlives "
                                  "its last heartbeat (an instance that dies leaves it for at most this long).")
    instance_name: str | None = Field(None, min_length=1, max_length=128, description="This hub's name in the "
                                      "X-Hub-Instance response header; default host:pid.")

    # Durable records (API keys, audit trail, marketplace registrations): SQLite in data_dir, or PostgreSQL.
    database_url: SecretStr | None = Field(
        None, description="postgresql://user:password@host:port/db for records shared by several hubs; "
        "unset: the SQLite file data_dir/records.sqlite3 (WAL mode).")
    sqlite_synchronous: Literal["normal", "full"] = Field(
        "normal", description="SQLite records file: normal (a commit survives the hub being killed; an OS crash or "
        "power loss may lose the last ones) or full (each commit waits for fsync: several times the cost).")

    # Audit trail of tool executions (in the records database above) and observability.
    audit_enabled: bool = Field(True, description="Record every tool execution; off: nothing is recorded (benchmarks).")
    audit_retention_days: float | None = Field(
        None, gt=0, description="Days after which audit records are pruned (an anchor keeps the rest verifiable); "
        "unset: kept forever.")
    audit_result_max_bytes: int = Field(
        16 * 1024, ge=256, description="A recorded result (or arguments) JSON over this is cut; its full size and "
        "SHA-256 are recorded.")
    audit_batch_max: int = Field(512, ge=1, description="Most records committed in one transaction (group commit).")
    audit_commit_delay: float = Field(
        0.015, ge=0, le=0.5, description="Seconds an audit transaction may wait for more records once writes arrive "
        "concurrently: fewer commits under load; 0: never wait.")
    audit_instance_timeout: float = Field(
        60.0, gt=0, description="Seconds without a heartbeat after which a hub instance counts as gone: the tool calls "
        "it had started and not finished are recorded as `interrupted` (by any hub on the records database).")
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per log line, each with the request's X-Request-Id.")

    # Limits (each refused with an error naming the limit; per-call timeouts are `call_timeout` above).
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body; over it: 413 body_too_large.")
    max_servers_per_request: int = Field(
        16, ge=1, description="Most mcp_servers items in one request; over it: 400 too_many_servers.")
    max_tools_per_request: int = Field(
        256, ge=1, description="Most tools (MCP + the request's own) offered to the model; over it: 400 too_many_tools.")
    request_timeout: float = Field(
        600.0, gt=0, description="Seconds for a whole chat completion, every turn and tool; over it: 504 request_timeout.")
    rate_limit_per_minute: int = Field(
        0, ge=0, description="Requests per minute per API key (anonymous: per client address); 0: no limit.")
    rate_limit_burst: int | None = Field(
        None, ge=1, description="Requests a caller may make at once (bucket size); unset: rate_limit_per_minute.")

    # Encrypted credentials (PROTOCOL.md section 4): the RSA key published at /.well-known/jwks.json.
    encryption_key_file: Path | None = Field(
        None, description="PEM private key (RSA >= 2048 bits, unencrypted) to publish; unset: generated in data_dir/keys.")
    encryption_key_bits: int = Field(3072, ge=2048, le=8192, description="Size of generated keys.")
    encryption_key_max_age: float | None = Field(
        None, gt=0, description="Seconds after which a generated key is rotated automatically; unset: only by hand.")
    encryption_key_grace: float = Field(
        7 * 24 * 3600.0, ge=0, description="Seconds a rotated-out key still decrypts before it is deleted.")

    # The MCP gateway (/mcp/{org}/{name}): which Host and Origin headers it answers (DNS rebinding).
    gateway_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host headers the MCP gateway accepts besides loopback names and `host` "
        "(`name:port`, `name:*`; comma-separated); `*` turns the check off (behind a proxy that checks Host).")
    gateway_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origin headers the MCP gateway accepts besides loopback origins "
        "(`https://app.example`, `http://name:*`); requests without an Origin are always accepted.")
    # Gateway sessions (handshake-era clients; 2026-era requests keep none): each bound to the tenant that
    # opened it, capped, and closed when idle. Over a cap, opening one more is refused (429 per tenant, 503 in all).
    gateway_sessions_max: int = Field(1000, ge=1, description="Open MCP gateway sessions at most, all tenants together.")
    gateway_sessions_per_tenant: int = Field(100, ge=1, description="Open MCP gateway sessions at most per tenant.")
    gateway_session_idle_timeout: float = Field(
        300.0, gt=0, description="Seconds without a request after which a gateway session is closed (its id then 404s).")

    # The HTTP edge: what anonymous callers may do, which proxies are believed, request-head caps and timeouts.
    anonymous_admin: bool = Field(
        False, description="DANGEROUS: on a hub that never had an API key, anonymous callers get the admin role "
        "(register raw commands that run on this machine, approve pins, read /metrics); off: they are members.")
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Proxy addresses (IPs or CIDRs, comma-separated) whose X-Forwarded-For, "
        "X-Forwarded-Proto and Forwarded headers are believed; unset: nobody's (the socket's peer is the client).")
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest request line plus headers; over it: 431 and the connection closes.")
    max_header_count: int = Field(100, ge=8, description="Most header lines in a request; over it: 431.")
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send a request's line and headers; then it is disconnected.")
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a request body may stall between two chunks; then it is disconnected.")
    max_connections: int | None = Field(
        None, ge=1, description="Open connections plus running requests the server takes before answering 503; "
        "unset: no cap (the header and body timeouts still close idle half-sent requests).")

    _config_file: ClassVar[Path | None] = None

    @field_validator("providers")
    @classmethod
    def _valid_prefixes(cls, value: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        for prefix in value:
            if not re.fullmatch(PROVIDER_PREFIX, prefix):
                raise ValueError(f"provider prefix {prefix!r} must match {PROVIDER_PREFIX}")
        return value

    @model_validator(mode="after")
    def _read_provider_keys(self) -> Settings:
        """Resolve each extra provider's `api_key_env` here, at the edge, and nowhere else."""
        for config in self.providers.values():
            if config.api_key is None and config.api_key_env and os.environ.get(config.api_key_env):
                config.api_key = SecretStr(os.environ[config.api_key_env])
        return self

    @model_validator(mode="after")
    def _read_base_env(self) -> Settings:
        """The host's locale and CA settings that hosted servers inherit, read here, at the edge."""
        if not self.sandbox_base_env:
            self.sandbox_base_env = {name: os.environ[name] for name in INHERITED_ENV if os.environ.get(name)}
        return self

    @property
    def sandbox_limits(self) -> SandboxLimits:
        """The operator's default limits for every sandboxed child."""
        return SandboxLimits(memory_mb=self.sandbox_memory_mb, cpu_seconds=self.sandbox_cpu_seconds,
                             processes=self.sandbox_processes, open_files=self.sandbox_open_files,
                             file_size_mb=self.sandbox_file_size_mb, disk_mb=self.sandbox_disk_mb,
                             stderr_kb=self.sandbox_stderr_kb)

    @field_validator("egress_allow", mode="before")
    @classmethod
    def _allow_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, list):
            Allowlist.parse(str(item) for item in value)  # a bad entry fails at start-up, named
        return value

    @field_validator("gateway_allowed_hosts", "gateway_allowed_origins", "forwarded_allow_ips", mode="before")
    @classmethod
    def _name_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("state_url")
    @classmethod
    def _known_state_scheme(cls, value: SecretStr) -> SecretStr:
        from .state import BACKENDS  # the backends themselves are imported only when opened

        scheme = value.get_secret_value().split("://", 1)[0] if "://" in value.get_secret_value() else ""
        if scheme not in BACKENDS:
            raise ValueError(f"scheme must be one of {', '.join(sorted(BACKENDS))}")
        return value

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
        except ValidationError as exc:
            # Without the offending values: a key or a password in a URL may be among them.
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                                 for e in exc.errors(include_input=False, include_url=False))
            raise ConfigError(f"invalid settings: {problems}") from None
        except ValueError as exc:
            raise ConfigError(f"invalid settings: {exc}") from None

    @property
    def keys_path(self) -> Path:
        """The SQLite file of hub API keys of earlier versions (imported once into the records database)."""
        return self.data_dir / "hub.sqlite3"

    @property
    def records_path(self) -> Path:
        """The SQLite file of durable records when `database_url` is unset."""
        return self.data_dir / "records.sqlite3"

    @property
    def logs_dir(self) -> Path:
        """Where hosted servers' stderr goes."""
        return self.data_dir / "logs"

    @property
    def encryption_keys_dir(self) -> Path:
        """Where generated credential-encryption keys live (owner-only; not the hub's API keys)."""
        return self.data_dir / "encryption-keys"
