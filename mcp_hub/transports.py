"""Opening MCP client connections for resolved targets, over stdio, streamable HTTP or SSE.

`Opener` owns what every connection shares (one pooled HTTP transport, the log
folder for hosted servers' stderr, the OAuth broker, the elicitation policy, the egress
guard) and turns a target plus its credential binding into an entered `Client`; how a hosted
child is launched (sandbox, environment, session folder) is `mcp_hub.hosting`'s. A URL
target's host is checked and pinned before connecting (`mcp_hub.egress`), and every request
of its session, the SDK's and the OAuth flow's alike, dials only checked addresses. Hosted
children are launched under `setpriv --pdeathsig KILL` where available, so even a
hub killed with SIGKILL takes them down; `mcp_hub.stdio` runs each child in its
own process group and kills the group on close.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as types
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.client.session import ElicitationFnT, MessageHandlerFnT
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from . import __version__
from .backchannel import BackChannel
from .childlog import child_stderr
from .credentials import Binding
from .egress import EgressGuard, EgressSession, pinned
from .egress_proxy import EgressProxy
from .errors import AuthRequired, ServerError, UrlBlocked
from .hosting import Hosting
from .installer import PackageStore
from .oauth import OAuthBroker
from .private_files import private_dir
from .resolution import Target
from .sandbox import Sandbox, SandboxLimits
from .scrubbing import Scrubber
from .stdio import stdio_client


async def decline_elicitation(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
    """The hub's elicitation policy while no end user can be asked: decline.

    A decline is an answer the server's tool can act on ("the user said no"), where the
    SDK's default, a -32600 "not supported" error, usually fails the whole tool call.
    """
    return types.ElicitResult(action="decline")


class SharedTransport(httpx2.AsyncBaseTransport):
    """Delegates to the hub's pooled transport and ignores `aclose`, so per-session clients can be closed freely.

    With an `EgressSession`, each request is admitted by it first (a new host is resolved,
    checked and pinned; credentials need https) and its connection dials the pinned address.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport, egress: EgressSession | None = None) -> None:
        self._inner = inner
        self._egress = egress

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._egress is None:
            response = await self._inner.handle_async_request(request)
        else:
            await self._egress.admit(request)
            with pinned(self._egress):
                response = await self._inner.handle_async_request(request)
        if request.method == "POST" and response.headers.get("content-type", "").startswith("text/event-stream"):
            response.stream = _DrainOnClose(response.stream)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        """The hub closes the inner transport itself, once, at shutdown."""


class _EofWatch:
    """A transport's read stream that sets `closed` when it ends (the child exited, the peer closed).

    A thin wrapper rather than a pump task: no extra task switch or buffer per message.
    """

    def __init__(self, inner: Any, closed: anyio.Event) -> None:
        self._inner = inner
        self._closed = closed

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._closed.set()
            raise

    def __aiter__(self) -> _EofWatch:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _EofWatch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)


@asynccontextmanager
async def _watch_eof(transport: Any, closed: anyio.Event) -> AsyncIterator[Any]:
    """Pass a transport through, setting `closed` when its read side ends."""
    async with transport as (read, write):
        try:
            yield _EofWatch(read, closed), write
        finally:
            closed.set()


class _DrainOnClose(httpx2.AsyncByteStream):
    """Finishes reading a short response body on close, so its keep-alive connection is reused.

    The SDK closes a POST's event stream as soon as the JSON-RPC response arrives, a few
    bytes before the body ends; httpcore then drops the connection, and every call would
    open a new one (and leave a socket in TIME_WAIT). The caller already has its answer,
    so the bounded drain adds no latency to it.
    """

    def __init__(self, inner: httpx2.AsyncByteStream) -> None:
        self._inner = inner
        self._chunks = inner.__aiter__()
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._done = True
                return
            yield chunk

    async def aclose(self) -> None:
        try:
            if not self._done:
                with anyio.move_on_after(0.05):
                    seen = 0
                    while seen < 65536:
                        seen += len(await self._chunks.__anext__())
        except StopAsyncIteration:
            self._done = True
        except Exception:  # boundary: a failed drain only costs the connection
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self._inner.aclose()


def sends_credentials(target: Target, binding: Binding) -> bool:
    """Whether a session to `target` carries credentials (header credentials or OAuth tokens)."""
    return bool(binding.headers) or target.version.oauth is not None


def _verdict(exc: BaseException) -> ServerError | None:
    """The `AuthRequired` or `UrlBlocked` somewhere inside (nested) exception groups, if any."""
    if isinstance(exc, AuthRequired | UrlBlocked):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        return next((found for inner in exc.exceptions if (found := _verdict(inner)) is not None), None)
    return None


class Opener:
    """Builds entered `Client`s for targets; owns the shared HTTP transport."""

    def __init__(self, *, logs_dir: Path, data_dir: Path, registry_root: Path, http: httpx2.AsyncBaseTransport,
                 http_timeout: float = 30.0, oauth: OAuthBroker | None = None,
                 elicitation: ElicitationFnT = decline_elicitation, egress: EgressGuard | None = None,
                 egress_proxy: EgressProxy | None = None, sandbox: Sandbox | None = None,
                 limits: SandboxLimits | None = None, base_env: Mapping[str, str] | None = None,
                 packages: PackageStore | None = None, stdio_message_max_bytes: int = 32 << 20) -> None:
        """`http` should come from `egress.transport()`, so connections dial only pinned addresses;
        `egress_proxy` (the hub's, on its exit stack) is what sandboxed children reach the network through;
        `sandbox` None runs hosted children unsandboxed; `packages` installs published packages once."""
        self.logs_dir = logs_dir
        self.data_dir = data_dir
        self.registry_root = registry_root
        self._inner = http
        self._http = SharedTransport(http)
        self.egress = egress or EgressGuard()
        self.egress_proxy = egress_proxy or EgressProxy(self.egress)
        self._timeout = httpx2.Timeout(http_timeout, read=300.0)
        setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
        self.packages = packages or PackageStore(data_dir / "packages")
        self.hosting = Hosting(data_dir=data_dir, registry_root=registry_root, sandbox=sandbox, limits=limits,
                               base_env=base_env, egress_proxy=self.egress_proxy, setpriv=setpriv,
                               packages=self.packages)
        self.oauth = oauth or OAuthBroker()
        self.elicitation = elicitation
        self.stdio_message_max_bytes = stdio_message_max_bytes

    def http_client(self, headers: dict[str, str], auth: httpx2.Auth | None = None,
                    egress: EgressSession | None = None) -> httpx2.AsyncClient:
        """A client over the shared connection pool; cheap to make (no TLS context of its own).

        Redirects are never followed by the client (the SDK follows same-origin ones itself).
        """
        transport = self._http if egress is None else SharedTransport(self._inner, egress)
        return httpx2.AsyncClient(transport=transport, headers=headers, timeout=self._timeout, follow_redirects=False,
                                  auth=auth)

    async def prepare(self, target: Target) -> None:
        """Install a package version's files once (outside the connect deadline: a first install takes a while)."""
        if target.version.package is not None:
            await self.packages.install(target.version.package, server=target.name)

    def log_path(self, target: Target) -> Path:
        return self.logs_dir / (re.sub(r"[^A-Za-z0-9._@-]+", "_", target.ident).strip("_") + ".log")

    def stderr_tail(self, target: Target, since: int, binding: Binding, lines: int = 3) -> str:
        """The last lines a hosted server wrote to stderr since offset `since`, secrets masked."""
        try:
            with open(self.log_path(target), "rb") as log:
                log.seek(since)
                text = log.read()[-4096:].decode("utf-8", "replace")
        except OSError:
            return ""
        for secret in binding.secrets():
            text = text.replace(secret, "[REDACTED]")
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def log_offset(self, target: Target) -> int:
        try:
            return self.log_path(target).stat().st_size
        except OSError:
            return 0

    @asynccontextmanager
    async def open(self, target: Target, binding: Binding, *, on_message: MessageHandlerFnT, closed: anyio.Event,
                   tenant: str = "default", backchannel: BackChannel | None = None) -> AsyncIterator[Client]:
        """Connect and handshake; the caller's task must also be the one that exits this context.

        An `AuthRequired` (from the OAuth flow) or `UrlBlocked` (from the egress guard) raised
        inside the transport leaves as itself, not wrapped in the transport's exception group,
        so callers see its reason and recommendation.
        """
        try:
            async with self._open(target, binding, on_message=on_message, closed=closed, tenant=tenant,
                                  backchannel=backchannel) as client:
                yield client
        except BaseExceptionGroup as group:
            verdict = _verdict(group)
            if verdict is None:
                raise
            raise verdict from None

    @asynccontextmanager
    async def _open(self, target: Target, binding: Binding, *, on_message: MessageHandlerFnT, closed: anyio.Event,
                    tenant: str, backchannel: BackChannel | None = None) -> AsyncIterator[Client]:
        version = target.version
        async with AsyncExitStack() as stack:
            if version.kind == "stdio":
                private_dir(self.logs_dir)
                params = await self.hosting.plan(target, binding, tenant, stack, closed)
                # Through the hub always: a server may print its credential, or flood its log.
                errlog = await stack.enter_async_context(child_stderr(
                    self.log_path(target), Scrubber(binding.secrets()), self.hosting.limits_for(target).stderr_kb * 1024))
                transport: Any = stdio_client(params, errlog=errlog,
                                              max_message_bytes=self.stdio_message_max_bytes)
            else:
                assert version.url is not None
                headers = version.headers | binding.headers
                # Resolved once and checked here; the session's connections dial what this pinned.
                egress = await self.egress.session(target.name, version.url,
                                                   credentials=sends_credentials(target, binding))
                auth = self.oauth.auth(tenant, target, binding)
                if version.kind == "sse":
                    def factory(headers: dict[str, str] | None = None, timeout: Any = None,
                                auth: httpx2.Auth | None = None) -> httpx2.AsyncClient:
                        return self.http_client(headers or {}, auth, egress)

                    transport = sse_client(version.url, headers=headers, httpx_client_factory=factory, auth=auth)
                else:
                    client = await stack.enter_async_context(self.http_client(headers, auth, egress))
                    transport = streamable_http_client(version.url, http_client=client)
            # "2025-11-25" is the handshake era, which the SDK calls legacy mode.
            mode = "legacy" if version.protocol == "2025-11-25" else version.protocol
            # With a back-channel, the server's sampling, elicitation and logs can reach a gateway client.
            relayed: dict[str, Any] = {} if backchannel is None else {
                "sampling_callback": backchannel.sampling, "logging_callback": backchannel.logging}
            session = Client(_watch_eof(transport, closed), mode=mode, message_handler=on_message, cache=None,
                             elicitation_callback=backchannel.elicitation if backchannel else self.elicitation,
                             **relayed,
                             client_info=types.Implementation(name="mcp-hub", version=__version__))
            yield await stack.enter_async_context(session)

