"""OAuth 2.1 for remote MCP servers: the broker that gives each session its `httpx2.Auth`.

A target uses OAuth when its registry version has an `oauth:` block or its URL spec says
`"oauth": true`. For those, `OAuthBroker.auth` returns the MCP SDK's provider, which does
the protocol work on the session's HTTP client: protected-resource and authorization-server
discovery from the 401 challenge, client registration (a pre-registered client, a client
ID metadata document, or dynamic registration), PKCE, scope selection and step-up, the
RFC 8707 `resource` parameter, and token refresh.

Every request those flows make (discovery, registration, token) goes out on the session's
own HTTP client, so through the egress guard (`mcp_hub.egress`): the authorization server's
host is resolved, checked and pinned like the MCP server's, nothing is redirected, and tokens
and client secrets travel only over https unless the host is allowlisted.

What the hub owns is around that:

* **Token storage**, in memory, one record per `(tenant, server ident, credential
  fingerprint)`. Records are never shared between keys, and nothing here logs or formats
  a token or a client secret (`TokenRecord`'s repr hides them).
* **Pre-registered clients**: a version's `oauth.connection` names a declared connection
  whose request credential holds `client_id` (and `client_secret`). `prepare` reads it,
  folds it into the binding's fingerprint (so another secret means another session and
  another record) and seeds the record.
* **The user step** of the authorization-code flow, a seam: a `UserAgent` sends someone
  to the authorization URL and returns the redirect's code and state. With none
  configured (the default: the hub has no one to ask yet) the flow stops at once with
  `AuthRequired`, whose recommendation names the URL to open.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.auth.utils import is_valid_client_metadata_url
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

from .credentials import Binding, Credential, find
from .errors import AuthRequired, ConfigError, CredentialError
from .registry import OAuth
from .resolution import Target


class UserAgent(Protocol):
    """The person-facing step of the authorization-code flow.

    Send a user to `authorization_url` and return what the authorization server's redirect
    carried back: `code`, `state` and, when sent, the RFC 9207 `iss`.
    """

    async def authorize(self, authorization_url: str) -> AuthorizationCodeResult: ...


@dataclass(frozen=True)
class ClientIdentity:
    """The hub as an OAuth client: the name it registers under and where users return.

    `client_metadata_url` is an https URL where the hub publishes its client ID metadata
    document; authorization servers that support CIMD then take it as the client ID, with
    no registration. The default `redirect_uri` is a loopback placeholder until the hub
    serves a callback route of its own.
    """

    client_name: str = "mcp-hub"
    redirect_uri: str = "http://127.0.0.1/oauth/callback"
    client_metadata_url: str | None = None


class TokenKey(NamedTuple):
    """Whose tokens: one tenant's session to one server with one set of credentials."""

    tenant: str
    ident: str
    credential: str


@dataclass
class TokenRecord:
    """The SDK's `TokenStorage` for one key: its tokens and its client registration."""

    tokens: OAuthToken | None = field(default=None, repr=False)
    client: OAuthClientInformationFull | None = field(default=None, repr=False)

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class TokenStore:
    """In-memory `TokenRecord`s by key. They live as long as the hub does."""

    def __init__(self) -> None:
        self._records: dict[TokenKey, TokenRecord] = {}

    def record(self, key: TokenKey) -> TokenRecord:
        """The key's record, created empty on first use."""
        return self._records.setdefault(key, TokenRecord())

    def forget(self, key: TokenKey) -> None:
        self._records.pop(key, None)

    def __len__(self) -> int:
        return len(self._records)


class _AuthorizationStep:
    """Adapts a `UserAgent` to the SDK's redirect/callback handler pair, for one provider."""

    def __init__(self, user_agent: UserAgent | None, server: str) -> None:
        self._user_agent = user_agent
        self._server = server
        self._result: AuthorizationCodeResult | None = None

    async def redirect(self, authorization_url: str) -> None:
        if self._user_agent is None:
            raise AuthRequired(self._server, authorization_url)
        self._result = await self._user_agent.authorize(authorization_url)

    async def callback(self) -> AuthorizationCodeResult:
        result, self._result = self._result, None
        if result is None:
            raise RuntimeError("the OAuth callback ran before the authorization redirect")
        return result


class OAuthBroker:
    """Hands out `httpx2.Auth`s for OAuth targets and keeps their tokens apart."""

    def __init__(self, identity: ClientIdentity | None = None, *, user_agent: UserAgent | None = None,
                 store: TokenStore | None = None) -> None:
        self.identity = identity or ClientIdentity()
        url = self.identity.client_metadata_url
        if url is not None and not is_valid_client_metadata_url(url):
            raise ConfigError(f"OAuth client_metadata_url {url!r} must be an https URL with a path")
        self.user_agent = user_agent
        self.store = store if store is not None else TokenStore()

    def prepare(self, tenant: str, target: Target, binding: Binding, credentials: Iterable[Credential]) -> Binding:
        """Bind a pre-registered OAuth client from the request's credentials, if the target declares one.

        Returns the binding to open the session with: its fingerprint covers the client, so a
        different client ID or secret never reuses another's session or tokens.
        """
        config = target.version.oauth
        if config is None:
            return binding
        client = self._registered_client(target, config, credentials)
        if client is None:
            if config.grant == "client_credentials":
                raise CredentialError(f"server {target.name!r} needs an OAuth client_id and client_secret "
                                      f"(connection {config.connection!r})", server=target.name)
            return binding
        digest = hashlib.sha256(f"{binding.fingerprint}\0{client.client_id}\0{client.client_secret or ''}".encode())
        binding = replace(binding, fingerprint=digest.hexdigest()[:32])
        record = self.store.record(TokenKey(tenant, target.ident, binding.fingerprint))
        if record.client is None:
            record.client = client
        return binding

    def auth(self, tenant: str, target: Target, binding: Binding) -> httpx2.Auth | None:
        """The auth for one session to `target` (None when it does not use OAuth)."""
        config, url = target.version.oauth, target.version.url
        if config is None or url is None:
            return None
        record = self.store.record(TokenKey(tenant, target.ident, binding.fingerprint))
        if config.grant == "client_credentials":
            client = record.client
            if client is None or client.client_secret is None:
                raise CredentialError(f"server {target.name!r} has no OAuth client credentials bound",
                                      server=target.name)
            return ClientCredentialsOAuthProvider(url, record, client.client_id, client.client_secret,
                                                  issuer=config.issuer)
        metadata = OAuthClientMetadata(
            client_name=config.client_name or self.identity.client_name,
            redirect_uris=[AnyUrl(self.identity.redirect_uri)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        )
        step = _AuthorizationStep(self.user_agent, target.name)
        return OAuthClientProvider(url, metadata, record, redirect_handler=step.redirect,
                                   callback_handler=step.callback,
                                   client_metadata_url=self.identity.client_metadata_url)

    def _registered_client(self, target: Target, config: OAuth,
                           credentials: Iterable[Credential]) -> OAuthClientInformationFull | None:
        """The pre-registered client in the credential for `config.connection`."""
        if config.connection is None or target.entry is None:
            return None
        cred = find(target.entry, config.connection, credentials)
        if cred is None or "client_id" not in cred.values:
            return None
        secret = cred.values.get("client_secret")
        client_secret = secret.get_secret_value() if secret is not None else None
        return OAuthClientInformationFull(
            client_id=cred.values["client_id"].get_secret_value(),
            client_secret=client_secret,
            redirect_uris=[AnyUrl(self.identity.redirect_uri)],
            token_endpoint_auth_method="client_secret_basic" if client_secret else "none",
            issuer=config.issuer,
        )
