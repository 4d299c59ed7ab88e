"""The conformance runner's client under test: performs each scenario through the hub's own upstream code.

The official runner (`conformance client --command "python tests/conformance/client.py" ...`)
starts a scenario server, then runs this script with the server URL as the last
argument and the scenario name in `MCP_CONFORMANCE_SCENARIO`. Every scenario goes
through a real `Hub` with a `{"url": ...}` target, exactly as a request naming that
URL would: `Opener` connects, `ManagedSession` handshakes and lists tools, and the
`Executor` calls tools. So the runner's checks judge the hub, not a hand-written client.

What this script adds are the two seams a deployment fills in, standing in for the end
user the conformance scenarios assume: an elicitation callback that accepts with the
schema's defaults, and a headless OAuth user agent that opens the authorization URL
and reads the code from the redirect (the scenarios' authorization servers approve at
once). `auth/*` scenarios name the server as `{"url": ..., "oauth": true}`; when the
scenario hands over a pre-registered client (`MCP_CONFORMANCE_CONTEXT`), the server is
a registry entry whose `oauth.connection` takes it from the request's credentials.

Exit status: 0 when the hub reported every step as succeeded, 1 otherwise. In suite
mode the runner judges only its own checks (`checks.json`); the exit status and the
JSON lines printed here land in `stdout.txt` for diagnosis.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mcp.types as types
    from mcp.client.context import ClientRequestContext
    from mcp.shared.auth import AuthorizationCodeResult

    from mcp_hub.credentials import Credential
    from mcp_hub.executor import ToolResult
    from mcp_hub.hub import Hub, Servers

ROOT = Path(__file__).resolve().parents[2]
# The client ID metadata document URL the CIMD scenario expects a client to present.
CLIENT_METADATA_URL = "https://conformance-test.local/client-metadata.json"
OAUTH_SLUG = "conformance/oauth-server"


def report(event: str, **fields: Any) -> None:
    """One JSON line per step on stdout."""
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


async def connect(hub: Hub, url: str, spec: Any = None,
                  credentials: list[Credential] | None = None) -> tuple[Servers, list[str]]:
    """Open the server as a request would, and list its tools (initialize + tools/list)."""
    servers = hub.open_servers(spec or {"url": url}, credentials or [])
    tools = await hub.list_tools(servers)
    if servers.errors:
        report("connect_failed", errors=servers.error_entries())
        return servers, []
    client, _ = await servers.sessions[url].client(5)
    names = [tool.name for tool in tools[url]]
    report("connected", protocol_version=client.protocol_version, tools=names)
    return servers, names


async def call(hub: Hub, servers: Servers, url: str, tool: str, arguments: dict[str, Any]) -> ToolResult:
    from mcp_hub.executor import ToolCall

    batch = await hub.execute([ToolCall(url, tool, arguments)], servers)
    result = batch.results[0]
    report("tool_result", tool=tool, is_error=result.is_error, result=result.result)
    return result


async def initialize(hub: Hub, url: str) -> bool:
    servers, _ = await connect(hub, url)
    return not servers.errors


async def tools_call(hub: Hub, url: str) -> bool:
    servers, names = await connect(hub, url)
    if "add_numbers" not in names:
        return False
    result = await call(hub, servers, url, "add_numbers", {"a": 5, "b": 3})
    return not result.is_error and "8" in json.dumps(result.result)


async def call_every_tool(hub: Hub, url: str) -> bool:
    """For scenario servers whose single tool drives the checks (sse-retry, elicitation defaults)."""
    servers, names = await connect(hub, url)
    if servers.errors or not names:
        return False
    results = [await call(hub, servers, url, name, {}) for name in names]
    return not any(result.is_error for result in results)


async def oauth_flow(hub: Hub, url: str) -> bool:
    """An OAuth-protected server: connect (authorizing on the 401), then call its first tool."""
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    if "client_id" in context:  # a pre-registered client, handed over as a request credential
        from mcp_hub.credentials import Credential

        values = {key: context[key] for key in ("client_id", "client_secret") if key in context}
        credentials = [Credential(connection_name="oauth-client", values=values)]
        servers, names = await connect(hub, url, {"slug": OAUTH_SLUG, "name": url}, credentials)
    else:
        servers, names = await connect(hub, url, {"url": url, "oauth": True, "name": url})
    if servers.errors or not names:
        return False
    result = await call(hub, servers, url, names[0], {})
    return not result.is_error


SCENARIOS = {
    "initialize": initialize,
    "tools_call": tools_call,
    "sse-retry": call_every_tool,
    "elicitation-sep1034-client-defaults": call_every_tool,
}


async def accept_with_defaults(context: ClientRequestContext,
                               params: types.ElicitRequestParams) -> types.ElicitResult:
    """The stand-in end user: accept a form elicitation with each field's schema default (SEP-1034)."""
    import mcp.types as types

    schema = params.requested_schema if isinstance(params, types.ElicitRequestFormParams) else {}
    defaults = {name: prop["default"] for name, prop in schema.get("properties", {}).items() if "default" in prop}
    return types.ElicitResult(action="accept", content=defaults)


class HeadlessUserAgent:
    """The stand-in user of the authorization-code flow: open the URL, read code and state off the redirect."""

    async def authorize(self, authorization_url: str) -> AuthorizationCodeResult:
        from urllib.parse import parse_qs, urlsplit

        import httpx2
        from mcp.shared.auth import AuthorizationCodeResult

        async with httpx2.AsyncClient(follow_redirects=False, timeout=10) as client:
            response = await client.get(authorization_url)
        location = response.headers.get("location")
        if not response.is_redirect or not location:
            raise RuntimeError(f"authorization endpoint answered {response.status_code} without a redirect")
        query = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
        if "code" not in query:
            raise RuntimeError(f"authorization redirect carries no code: {query.get('error', 'no error given')}")
        return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))


def registry(url: str) -> Any:
    """One OAuth server entry whose pre-registered client arrives as the `oauth-client` credential."""
    from mcp_hub.registry import Registry

    connection = {"fields": ["client_id", "client_secret"], "required": True}
    version = {"url": url, "oauth": {"connection": "oauth-client"}}
    raw = {"servers": {OAUTH_SLUG: {"connections": {"oauth-client": connection}, "versions": {"1.0.0": version}}}}
    return Registry.from_data(raw, root=ROOT)


async def run(scenario: str, url: str) -> bool:
    from mcp_hub.hub import Hub
    from mcp_hub.oauth import ClientIdentity
    from mcp_hub.settings import Settings

    # A scenario this script does not know still gets an honest try: connect and list tools.
    perform = oauth_flow if scenario.startswith("auth/") else SCENARIOS.get(scenario, initialize)
    with tempfile.TemporaryDirectory(prefix="mcp-hub-conformance-") as data_dir:
        # The scenario servers listen on localhost, which the egress guard blocks unless allowlisted.
        settings = Settings.load(data_dir=Path(data_dir), connect_timeout=15, call_timeout=20,
                                 egress_allow=["127.0.0.0/8", "::1", "localhost"])
        identity = ClientIdentity(client_name="mcp-hub", redirect_uri="http://localhost:3000/callback",
                                  client_metadata_url=CLIENT_METADATA_URL)
        async with Hub(settings, registry(url), oauth_identity=identity, user_agent=HeadlessUserAgent(),
                       elicitation=accept_with_defaults) as hub:
            return await perform(hub, url)


def main() -> int:
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    url = sys.argv[-1]
    report("start", scenario=scenario, url=url)
    if str(ROOT) not in sys.path:  # run as a script by the runner: make the checkout importable
        sys.path.insert(0, str(ROOT))
    import anyio

    ok = anyio.run(run, scenario, url)
    report("done", scenario=scenario, ok=ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
