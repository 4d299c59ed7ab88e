"""The OAuth broker against a real OAuth-protected MCP server on a socket: flows, keys, policy, secrecy.

`ProtectedServer` is a tiny MCP server (plain JSON responses) that answers 401 until it
sees a token it issued, with its own authorization server on the same origin: protected
resource metadata, authorization server metadata, dynamic registration, an authorize
endpoint that approves at once, and a token endpoint for both grants.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
import uvicorn
from mcp.shared.auth import AuthorizationCodeResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from mcp_hub.credentials import Binding, Credential
from mcp_hub.errors import AuthRequired, CredentialError
from mcp_hub.hub import Hub
from mcp_hub.oauth import ClientIdentity, OAuthBroker, TokenKey, TokenRecord
from mcp_hub.registry import Registry
from mcp_hub.resolution import resolve
from mcp_hub.settings import Settings
from mcp_hub.transports import decline_elicitation

from .conftest import ROOT, free_port

SLUG = "acme/crm"


class ProtectedServer:
    """An OAuth-protected MCP endpoint at `/mcp` and its authorization server, recording what clients did."""

    def __init__(self) -> None:
        self.base = ""
        self.tokens: dict[str, str] = {}  # access token -> client id it was issued to
        self.token_requests: list[dict[str, Any]] = []
        self.registrations = 0
        self.authorizations = 0
        self._serial = itertools.count(1)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/mcp", self.mcp, methods=["POST", "GET", "DELETE"]),
            Route("/.well-known/oauth-protected-resource/mcp", self.resource_metadata),
            Route("/.well-known/oauth-authorization-server", self.server_metadata),
            Route("/register", self.register, methods=["POST"]),
            Route("/authorize", self.authorize),
            Route("/token", self.token, methods=["POST"]),
        ])

    async def mcp(self, request: Request) -> Response:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if bearer not in self.tokens:
            challenge = f'Bearer resource_metadata="{self.base}/.well-known/oauth-protected-resource/mcp"'
            return JSONResponse({"error": "invalid_token"}, 401, headers={"WWW-Authenticate": challenge})
        if request.method != "POST":
            return Response(status_code=405)
        message = await request.json()
        if "id" not in message:
            return Response(status_code=202)
        method = message["method"]
        if method == "initialize":
            result: dict[str, Any] = {"protocolVersion": message["params"]["protocolVersion"],
                                      "capabilities": {"tools": {}}, "serverInfo": {"name": "crm", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": [{"name": "whoami", "inputSchema": {"type": "object"}}]}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": f"{self.tokens[bearer]} via {bearer}"}]}
        else:
            result = {}
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": result})

    async def resource_metadata(self, request: Request) -> Response:
        return JSONResponse({"resource": f"{self.base}/mcp", "authorization_servers": [self.base]})

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({
            "issuer": self.base, "authorization_endpoint": f"{self.base}/authorize",
            "token_endpoint": f"{self.base}/token", "registration_endpoint": f"{self.base}/register",
            "response_types_supported": ["code"], "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
        })

    async def register(self, request: Request) -> Response:
        self.registrations += 1
        body = await request.json()
        return JSONResponse({"client_id": f"dynamic-{next(self._serial)}", "redirect_uris": body["redirect_uris"],
                             "token_endpoint_auth_method": "none"}, 201)

    async def authorize(self, request: Request) -> Response:
        self.authorizations += 1
        query = request.query_params
        back = {"code": f"code-{next(self._serial)}", "state": query["state"]}
        return RedirectResponse(f"{query['redirect_uri']}?{urlencode(back)}", 302)

    async def token(self, request: Request) -> Response:
        form = {key: values[0] for key, values in parse_qs((await request.body()).decode()).items()}
        basic = request.headers.get("authorization", "")
        client_id = form.get("client_id", "")
        if basic.startswith("Basic "):
            client_id = base64.b64decode(basic[6:]).decode().split(":")[0]
        self.token_requests.append({**form, "basic": basic.startswith("Basic "), "client": client_id})
        token = f"token-{next(self._serial)}"
        self.tokens[token] = client_id
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": 3600})


@pytest.fixture
def server() -> Iterator[ProtectedServer]:
    """A `ProtectedServer` on a real socket, served by uvicorn on a thread of its own."""
    protected = ProtectedServer()
    port = free_port()
    protected.base = f"http://127.0.0.1:{port}"
    uv = uvicorn.Server(uvicorn.Config(protected.app(), host="127.0.0.1", port=port, log_level="warning",
                                       lifespan="off"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        while not uv.started:
            if not thread.is_alive():
                raise RuntimeError("the protected server did not start")
            threading.Event().wait(0.01)
        yield protected
    finally:
        uv.should_exit = True
        thread.join(10)


class ApprovingUserAgent:
    """A user who approves every authorization request: follow the URL, read code and state off the redirect."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    async def authorize(self, authorization_url: str) -> AuthorizationCodeResult:
        self.urls.append(authorization_url)
        async with httpx2.AsyncClient(follow_redirects=False) as client:
            response = await client.get(authorization_url)
        query = parse_qs(urlsplit(response.headers["location"]).query)
        return AuthorizationCodeResult(code=query["code"][0], state=query["state"][0])


def crm_registry(url: str, **oauth: Any) -> Registry:
    connection = {"fields": ["client_id", "client_secret"], "required": False}
    version = {"url": url, "oauth": {"connection": "crm-oauth", **oauth}}
    entry = {"connections": {"crm-oauth": connection}, "versions": {"1.0.0": version}}
    return Registry.from_data({"servers": {SLUG: entry}}, root=ROOT)


def client_credential(client_id: str, secret: str) -> list[Credential]:
    values = {"client_id": client_id, "client_secret": secret}
    return [Credential.model_validate({"connection_name": "crm-oauth", "values": values})]


async def whoami(hub: Hub, spec: Any, credentials: list[Credential] | None = None, tenant: str = "default") -> Any:
    result, servers = await hub.call_tool(spec, "whoami", {}, credentials or [], tenant=tenant)
    assert not servers.errors, servers.error_entries()
    assert not result.is_error, result.result
    return result.result[0]["text"]


async def test_authorization_code_flow_then_token_reuse(server: ProtectedServer, settings: Settings) -> None:
    agent = ApprovingUserAgent()
    spec = {"url": f"{server.base}/mcp", "oauth": True}
    async with Hub(settings, Registry({}, root=ROOT), user_agent=agent) as hub:
        first = await whoami(hub, spec)
        assert first.startswith("dynamic-") and server.registrations == 1 and server.authorizations == 1
        [request] = server.token_requests
        assert request["grant_type"] == "authorization_code" and request["code_verifier"]
        assert request["resource"] == f"{server.base}/mcp"  # RFC 8707
        assert "code_challenge_method=S256" in agent.urls[0]
        # A new session for the same key (the old one was closed) starts with the stored token.
        [session] = hub.pool.sessions()
        session.stop()
        await session.finished.wait()
        assert await whoami(hub, spec) == first
        assert server.authorizations == 1


async def test_tokens_are_never_shared_between_tenants(server: ProtectedServer, settings: Settings) -> None:
    spec = {"url": f"{server.base}/mcp", "oauth": True}
    async with Hub(settings, Registry({}, root=ROOT), user_agent=ApprovingUserAgent()) as hub:
        alice, bob = await whoami(hub, spec, tenant="alice"), await whoami(hub, spec, tenant="bob")
        assert alice.split(" via ")[1] != bob.split(" via ")[1]
        assert server.authorizations == 2
        assert await whoami(hub, spec, tenant="alice") == alice


async def test_without_a_user_agent_the_flow_fails_fast_with_auth_required(server: ProtectedServer,
                                                                           settings: Settings) -> None:
    async with Hub(settings, Registry({}, root=ROOT)) as hub:
        servers = hub.open_servers({"url": f"{server.base}/mcp", "oauth": True, "name": "crm"})
        await hub.list_tools(servers)
    error = servers.errors["crm"]
    assert isinstance(error, AuthRequired)
    assert (error.status, error.code) == (401, "auth_required")
    assert error.authorization_url.startswith(f"{server.base}/authorize?")
    assert error.authorization_url in error.to_entry()["recommendation"]
    assert server.authorizations == 0 and server.token_requests == []


async def test_plain_url_targets_send_no_oauth(server: ProtectedServer, settings: Settings) -> None:
    async with Hub(settings, Registry({}, root=ROOT), user_agent=ApprovingUserAgent()) as hub:
        servers = hub.open_servers({"url": f"{server.base}/mcp", "name": "crm"})
        await hub.list_tools(servers)
    assert servers.errors["crm"].code == "connect_failed"
    assert server.registrations == 0


async def test_pre_registered_client_comes_from_credentials(server: ProtectedServer, settings: Settings,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    registry = crm_registry(f"{server.base}/mcp")
    async with Hub(settings, registry, user_agent=ApprovingUserAgent()) as hub:
        text = await whoami(hub, SLUG, client_credential("crm-app", "s3cret-one"))
        # The server saw the pre-registered client; the client id, a credential value, is scrubbed on the way back.
        assert text.startswith("[REDACTED] via ")
        assert server.registrations == 0
        assert server.token_requests[0]["basic"] and "client_secret" not in server.token_requests[0]
        # Another secret is another session and another token record, even for the same tenant.
        await whoami(hub, SLUG, client_credential("crm-app", "s3cret-two"))
        assert server.authorizations == 2 and len(hub.pool.sessions()) == 2
    issued = list(server.tokens)
    assert not any(secret in caplog.text for secret in [*issued, "s3cret-one", "s3cret-two"])


async def test_client_credentials_grant(server: ProtectedServer, settings: Settings) -> None:
    registry = crm_registry(f"{server.base}/mcp", grant="client_credentials", issuer=server.base)
    async with Hub(settings, registry) as hub:  # machine-to-machine: no user agent needed
        assert (await whoami(hub, SLUG, client_credential("svc", "svc-secret"))).startswith("svc via ")
        result, servers = await hub.call_tool(SLUG, "whoami", {}, [])
    [request] = server.token_requests
    assert (request["grant_type"], request["client"], request["basic"]) == ("client_credentials", "svc", True)
    assert server.authorizations == 0
    assert result.is_error and isinstance(servers.errors[SLUG], CredentialError)


def test_prepare_keys_records_by_tenant_server_and_client() -> None:
    registry = crm_registry("https://crm.example/mcp")
    [target], _ = resolve(SLUG, registry)
    broker = OAuthBroker(ClientIdentity(redirect_uri="https://hub.example/oauth/callback"))
    one = broker.prepare("t1", target, Binding(), client_credential("app", "secret-1"))
    two = broker.prepare("t1", target, Binding(), client_credential("app", "secret-2"))
    assert one.fingerprint != two.fingerprint and Binding().fingerprint == ""
    assert broker.prepare("t1", target, Binding(), []) == Binding()  # no client: registration happens later
    record = broker.store.record(TokenKey("t1", target.ident, one.fingerprint))
    assert record.client is not None and record.client.client_id == "app"
    assert record.client.token_endpoint_auth_method == "client_secret_basic"
    assert len(broker.store) == 2 and "secret-1" not in repr(record)


def test_auth_only_for_oauth_targets() -> None:
    broker = OAuthBroker()
    [plain, oauth], _ = resolve(["https://a.example/mcp", {"url": "https://a.example/mcp", "oauth": True,
                                                            "name": "a-oauth"}], Registry({}))
    assert broker.auth("t", plain, Binding()) is None
    assert isinstance(broker.auth("t", oauth, Binding()), httpx2.Auth)
    assert plain.ident != oauth.ident  # never the same session or token record


def test_client_metadata_url_must_be_https_with_a_path() -> None:
    from mcp_hub.errors import ConfigError

    with pytest.raises(ConfigError):
        OAuthBroker(ClientIdentity(client_metadata_url="http://hub.example/client.json"))
    OAuthBroker(ClientIdentity(client_metadata_url="https://hub.example/oauth/client.json"))


@pytest.mark.parametrize(("version", "message"), [
    ({"command": "x", "oauth": {}}, "remote (`url`) servers only"),
    ({"url": "https://a/mcp", "oauth": {"connection": "nope"}}, "not one of the declared connections"),
    ({"url": "https://a/mcp", "oauth": {"grant": "client_credentials", "connection": "c"}}, "needs `connection`"),
])
def test_registry_validates_oauth(version: dict[str, Any], message: str) -> None:
    from mcp_hub.errors import ConfigError

    entry = {"connections": {"c": {"fields": ["client_id"]}}, "versions": {"1.0.0": version}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        Registry.from_data({"servers": {SLUG: entry}})


async def test_token_record_is_the_sdk_token_storage() -> None:
    from mcp.shared.auth import OAuthToken

    record = TokenRecord()
    await record.set_tokens(OAuthToken(access_token="at-123", token_type="Bearer"))
    assert (await record.get_tokens()) is not None
    assert "at-123" not in repr(record) and "at-123" not in str(record)


async def test_default_elicitation_policy_declines() -> None:
    import mcp.types as types

    params = types.ElicitRequestFormParams(message="Your name?", requested_schema={"type": "object", "properties": {}})
    result = await decline_elicitation(None, params)  # type: ignore[arg-type]
    assert result.action == "decline" and result.content is None


def test_auth_required_carries_no_secret() -> None:
    error = AuthRequired("crm", "https://auth.example/authorize?client_id=hub&state=xyz")
    body = json.dumps(error.to_entry())
    assert "auth_required" in body and "https://auth.example/authorize?client_id=hub&state=xyz" in body
