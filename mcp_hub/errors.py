"""The one exception tree of mcp-hub.

::

    HubError                       base; carries an HTTP status and an error `code`
    ├── ConfigError                bad settings or registry file (start-up only)
    ├── RequestError (400)         the caller's input is malformed (invalid_json;
    │   │                          json_too_deep: nested past jsoncodec.MAX_DEPTH)
    │   ├── NotFound (404)         a route object (server, record) does not exist
    │   ├── Forbidden (403)        forbidden: the caller's key lacks the role
    │   │   └── ForbiddenOrigin (403) forbidden_host / forbidden_origin: a keyless loopback hub (or
    │   │                          the MCP gateway) refuses a foreign Host or Origin (DNS rebinding, CSRF)
    │   ├── Conflict (409)         conflict: it exists already (a slug, an immutable version);
    │   │                          connection_name_taken: another owner's server claims it
    │   ├── Unprocessable (422)    well-formed, but cannot be done (a server to register is unreachable)
    │   │   └── EnvNotAllowed (422) env_not_allowed: a version or connection sets an environment
    │   │                          variable that changes how a runtime or loader behaves
    │   ├── TooLarge (413)         the request body is over the limit
    │   ├── UnsupportedMediaType (415) unsupported_media_type: a body that is not application/json
    │   ├── HeadersTooLarge (431)  headers_too_large: request line and headers over the cap
    │   ├── IdempotencyConflict (422) an Idempotency-Key reused for another body
    │   └── RateLimited (429)      rate_limited: the caller's key is over its
    │                              per-minute limit (`retry-after` says when)
    ├── RequestTimeout (504)       request_timeout: the request's time budget ran out
    ├── DeferredInterrupted (503)  deferred_interrupted: the hub running a deferred
    │                              completion shut down before it finished
    ├── AuditUnavailable (503)     audit_unavailable: a tool ran but its audit record
    │                              could not be committed, so the result is withheld
    ├── KeysUnavailable (503)      keys_unavailable: the records database holding the
    │                              API keys cannot be read, so the caller is unknown
    ├── StateUnavailable (503)     state_unavailable: the shared state store (Redis)
    │                              cannot be reached; nothing that needed it ran
    ├── ProviderError (502)        the model provider failed (provider_error);
    │   │                          `retryable` drives fallback to the next model
    │   ├── ProviderTimeout (504)  provider_timeout
    │   └── ProviderRateLimited (429) provider_rate_limited
    └── ServerError                one MCP server cannot serve; becomes an
        │                          `mcp_server_errors` entry, never an HTTP 5xx
        ├── ResolutionError        the spec names nothing we can reach
        │                          (server_not_found, version_not_found, invalid_spec)
        ├── CredentialError        missing_credentials
        │   └── CredentialsInvalid credentials_invalid: an encrypted credential
        │                          that cannot be decrypted or parsed, or a value
        │                          its header or env variable cannot carry (CR/LF)
        ├── ConnectError           connect_failed (spawn, handshake, network)
        ├── PackageInstallFailed   package_install_failed: npm/pip could not install
        │                          a hosted version's package (its last stderr lines)
        ├── SandboxUnavailable     sandbox_unavailable: bubblewrap (or util-linux) is missing,
        │                          so a sandboxed hosted server is not started
        ├── AuthRequired (401)     auth_required: an OAuth server needs a user
        │                          to authorize the hub first
        ├── UrlBlocked (403)       url_blocked: the egress guard refuses the URL
        │                          (private address, metadata, cleartext credentials)
        ├── CapacityError          capacity (child/session caps reached)
        ├── ToolsChanged           tool_definitions_changed: tools whose definitions differ
        │                          from their pins are withheld until an admin approves
        ├── SessionLost            the live session died under a call
        └── ResultTooLarge         result_too_large: a hosted server's answer was over
                                   stdio_message_max_bytes (an error for that call only)

Every exception carries context (server name, connection name) and a
recommendation for the caller. None of them ever carries a secret: messages are
built from names, not values.
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    """Base of every error mcp-hub raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error shape, duplicated at the top level for the Dedalus SDK."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error, **error}

    def headers(self) -> dict[str, str]:
        """Response headers that go with this error (none by default)."""
        return {}


class ConfigError(HubError):
    """Invalid settings or registry; raised at start-up with the entry and field named."""

    code = "invalid_config"


class RequestError(HubError):
    """Malformed caller input (HTTP 400)."""

    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class NotFound(RequestError):
    """A named object does not exist (HTTP 404)."""

    status = 404
    code = "not_found"


class Forbidden(RequestError):
    """The caller's API key lacks the role a route needs (HTTP 403)."""

    status = 403
    code = "forbidden"
    type = "permission_error"


class ForbiddenOrigin(Forbidden):
    """A Host or Origin header a keyless loopback hub (or the MCP gateway) does not serve (HTTP 403)."""

    code = "forbidden_origin"


class Conflict(RequestError):
    """What the request would create exists already (a registered slug, an immutable version)."""

    status = 409
    code = "conflict"


class Unprocessable(RequestError):
    """Well-formed, but the hub cannot do it (e.g. a server being registered cannot be reached)."""

    status = 422
    code = "unprocessable"


class EnvNotAllowed(Unprocessable):
    """A version or connection template sets an environment variable `envpolicy` refuses (HTTP 422).

    `param` names the field (`version.env.NODE_OPTIONS`); the message names the variable,
    never its value.
    """

    code = "env_not_allowed"


class TooLarge(RequestError):
    """The request body exceeds the configured limit (HTTP 413)."""

    status = 413
    code = "body_too_large"


class UnsupportedMediaType(RequestError):
    """A request body that is not JSON by its Content-Type (HTTP 415): no form or text/plain from a browser."""

    status = 415
    code = "unsupported_media_type"


class HeadersTooLarge(RequestError):
    """The request line and headers exceed `max_header_bytes` or `max_header_count` (HTTP 431)."""

    status = 431
    code = "headers_too_large"


class IdempotencyConflict(RequestError):
    """An Idempotency-Key was reused with a different request (HTTP 422: SDKs do not retry it)."""

    status = 422
    code = "idempotency_key_reused"


class RateLimited(RequestError):
    """The caller (API key, or address when anonymous) is over its request rate (HTTP 429).

    The SDKs retry a 429 after `retry-after` seconds; `mcp_hub.ratelimit` adds the header.
    """

    status = 429
    code = "rate_limited"
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(HubError):
    """The whole request (every model turn and tool call) outlived its time budget (HTTP 504).

    `tools_executed` names the MCP tools that completed before the budget ran out, so that
    the caller knows what already happened. SDK retries are stopped (`x-should-retry: false`):
    the same request would most likely run out of time again, and tools may have run.
    """

    status = 504
    code = "request_timeout"
    type = "timeout_error"

    def __init__(self, message: str, *, tools_executed: list[str] | None = None) -> None:
        super().__init__(message)
        self.tools_executed = list(tools_executed or [])

    def to_body(self) -> dict[str, Any]:
        return {**super().to_body(), "tools_executed": self.tools_executed}

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "false"}


class DeferredInterrupted(HubError):
    """A deferred completion's hub instance shut down before it finished (recorded, HTTP 503)."""

    status = 503
    code = "deferred_interrupted"
class KeysUnavailable(HubError):
    """The API keys could not be read from the records database (HTTP 503; nothing ran)."""

    status = 503
    code = "keys_unavailable"
    type = "server_error"


class StateUnavailable(HubError):
    """The state store (Redis) could not be reached (HTTP 503): the request that needed it did not proceed.

    Raised by the store itself, the one place that talks to Redis; the store reconnects on its
    next use, so the same request succeeds once Redis is back.
    """

    status = 503
    code = "state_unavailable"
    type = "server_error"


class AuditUnavailable(HubError):
    """The audit trail could not commit a tool execution's record (HTTP 503).

    The tool has run; the response that would report it is withheld rather than sent
    unrecorded. `x-should-retry: false`: a retry would run the tool again.
    """

    status = 503
    code = "audit_unavailable"
    type = "server_error"

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "false"}


class ProviderError(HubError):
    """A model provider failed. Never carries upstream credentials or raw upstream bodies."""

    status = 502
    code = "provider_error"
    type = "api_error"

    def __init__(self, message: str, *, provider: str, retryable: bool = False, upstream_status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.provider = provider
        self.retryable = retryable
        self.upstream_status = upstream_status


class ProviderTimeout(ProviderError):
    """The provider did not answer in time (retryable)."""

    status = 504
    code = "provider_timeout"


class ProviderRateLimited(ProviderError):
    """The provider answered 429 (retryable); `retry_after` in seconds when it said."""

    status = 429
    code = "provider_rate_limited"
    type = "rate_limit_error"
    retry_after: float | None = None


class ServerError(HubError):
    """One MCP server cannot serve this request.

    Reported per server in `mcp_server_errors` (`{message, code, recommendation}`);
    the request itself still succeeds with the servers that work.
    """

    status = 502
    code = "server_error"
    recommendation = "Retry later, or remove this server from the request."

    def __init__(self, message: str, *, server: str, code: str | None = None, recommendation: str | None = None) -> None:
        super().__init__(message, code=code)
        self.server = server
        if recommendation is not None:
            self.recommendation = recommendation

    def to_entry(self) -> dict[str, str]:
        """The `mcp_server_errors[server_name]` value."""
        return {"message": self.message, "code": self.code, "recommendation": self.recommendation}


class ResolutionError(ServerError):
    """The spec names no reachable server (server_not_found, version_not_found, invalid_spec)."""

    code = "server_not_found"

    @property
    def status(self) -> int:  # type: ignore[override]
        return 400 if self.code == "invalid_spec" else 404


class CredentialError(ServerError):
    """A connection the server requires has no credential."""

    status = 400
    code = "missing_credentials"


class CredentialsInvalid(CredentialError):
    """An encrypted credential (PROTOCOL.md section 4) for this server cannot be decrypted or parsed,
    or a credential value holds a character its header (CR, LF, other controls) or env variable (NUL)
    cannot carry.

    Names the server and connection (and field) only: never the envelope, and never anything decrypted from it.
    """

    code = "credentials_invalid"
    recommendation = ("Encrypt the credential again with the key published at /.well-known/jwks.json "
                      "(the Dedalus SDK does so when `as_base_url` points at this hub).")

    def __init__(self, message: str, *, server: str, connection: str, recommendation: str | None = None) -> None:
        super().__init__(message, server=server, recommendation=recommendation)
        self.connection = connection


class ConnectError(ServerError):
    """Spawning, handshaking with or reaching the server failed."""

    code = "connect_failed"
    recommendation = "The server could not be started or reached; retry later or check the hub's server logs."


class PackageInstallFailed(ServerError):
    """Installing a hosted version's npm or PyPI package failed (the installer's last stderr lines, scrubbed)."""

    code = "package_install_failed"
    recommendation = ("The package version could not be installed from the registries this hub is configured for; "
                      "check that it exists, or retry later.")


class SandboxUnavailable(ServerError):
    """A hosted server must run sandboxed and the sandbox's tools (bubblewrap) are not installed."""

    status = 503
    code = "sandbox_unavailable"
    recommendation = "Install bubblewrap on the hub's machine (`apt-get install bubblewrap`)."


class AuthRequired(ServerError):
    """An OAuth-protected server needs a user to approve the hub, and no one can be asked now.

    The recommendation names the authorization URL to open. That URL is public (endpoint,
    client id, PKCE challenge, state); tokens and client secrets never appear here.
    """

    status = 401
    code = "auth_required"

    def __init__(self, server: str, authorization_url: str) -> None:
        super().__init__(f"server {server!r} requires OAuth authorization", server=server,
                         recommendation=f"Open {authorization_url} to authorize the hub, then retry.")
        self.authorization_url = authorization_url


class UrlBlocked(ServerError):
    """The egress guard refuses a server URL (see `mcp_hub.egress`); the message names the reason."""

    status = 403
    code = "url_blocked"
    recommendation = "Use a public https URL, or ask the hub's operator to allowlist this host."


class CapacityError(ServerError):
    """The hub's caps on live sessions or child processes are reached."""

    status = 503
    code = "capacity"
    recommendation = "The hub is at its session limit; retry shortly."


class SessionLost(ServerError):
    """The live session died while a call was in flight (child crashed, HTTP session expired)."""

    code = "session_lost"
    delivered = True  # whether the call may have reached the server (then retrying is unsafe)
    recommendation = "The server restarted during the call; the call was not retried because it may have side effects."


class ResultTooLarge(ServerError):
    """A hosted server's answer to one call was over `stdio_message_max_bytes`; the hub dropped it unread."""

    code = "result_too_large"
    recommendation = "Ask for less (a narrower query, a smaller page), or have the operator raise stdio_message_max_bytes."


class ToolsChanged(ServerError):
    """Tools whose definitions differ from their pins (or appeared since): withheld from models."""

    status = 409
    code = "tool_definitions_changed"

    def __init__(self, server: str, ref: str, tools: list[str]) -> None:
        self.tools = tools
        super().__init__(
            f"server {server!r} ({ref}) changed the definitions of tools since they were approved: {', '.join(tools)}; "
            "they are withheld", server=server,
            recommendation=f"An admin reviews and re-approves them: `mcp-hub pins approve {ref}` or "
                           f"POST /v1/pins/approve {{\"server\": \"{ref}\"}}.")
