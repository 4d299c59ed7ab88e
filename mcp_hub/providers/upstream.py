"""One upstream model API over HTTP: its client, its key, and the one place its failures are translated.

Both wire formats (OpenAI chat completions, Anthropic Messages) send JSON over the
hub's pooled aiohttp session, stream SSE, and report errors as `{"error": {"message": ...}}`,
so one boundary serves both: `Upstream.open` maps every transport error and non-2xx
status to a `ProviderError`, with the upstream's own message shortened and scrubbed of
credentials. Nothing from the request headers is ever echoed.

aiohttp rather than httpx2 (which the MCP SDK uses for MCP servers): model calls are the
hub's hottest path, two per completion, and aiohttp spends about a third of httpx2's CPU on one.
"""

from __future__ import annotations

import email.utils
import re
import time
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
from pydantic import BaseModel, SecretStr, ValidationError
from yarl import URL

from .. import jsoncodec
from ..errors import ProviderError, ProviderRateLimited, ProviderTimeout

MAX_MESSAGE = 300
MAX_CONNECTIONS = 200
# Idle connections are dropped before the 5 s after which uvicorn and Node.js servers close them,
# so a request rarely meets a connection the server is closing (`Upstream._send` resends once if it does).
KEEPALIVE_EXPIRY = 4.0
# Methods that aiohttp itself sends once more when a pooled connection fails (`aiohttp.client.IDEMPOTENT_METHODS`).
_RESENT_BY_AIOHTTP = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Keys that upstreams quote back (OpenAI: "Incorrect API key provided: sk-proj-ab***cd").
_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk|key|ak)-[A-Za-z0-9_\-*.]{4,}")


@dataclass
class SSEEvent:
    event: str
    data: str


class _ErrorDetail(BaseModel):
    message: str = ""
    type: str | None = None


class _ErrorBody(BaseModel):
    error: _ErrorDetail | str


def scrub(text: str, secrets: list[str]) -> str:
    """`text` shortened, with every secret and anything shaped like an API key masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    text = _KEY_LIKE.sub("[REDACTED]", text)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def upstream_message(body: bytes | str) -> str:
    """The upstream's own error message, if its body has the usual `{"error": ...}` shape."""
    try:
        parsed = _ErrorBody.model_validate_json(body)
    except ValidationError:
        return ""
    return parsed.error if isinstance(parsed.error, str) else parsed.error.message


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms`, or `retry-after` as seconds or an HTTP date."""
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def client_session() -> aiohttp.ClientSession:
    """The pooled HTTP client of the model providers; the hub opens one and closes it on exit.

    No cookie jar (nothing carries over between callers), no environment lookups per call
    (`trust_env` would read ~/.netrc and the proxy variables on every request; `Upstream`
    resolves its proxy once), and httpx2's TLS context, so both stacks trust the same CAs.
    """
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_EXPIRY,
                                     ssl=httpx2.create_ssl_context())
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 timeout=aiohttp.ClientTimeout(), raise_for_status=False, auto_decompress=True)


def environment_proxy(url: str) -> URL | None:
    """The proxy that `HTTP_PROXY`/`HTTPS_PROXY` name for `url`, unless `NO_PROXY` exempts it.

    Credentials in its URL stay there: aiohttp sends them to the proxy only (`Proxy-Authorization`).
    """
    target = URL(url)
    if not target.host or urllib.request.proxy_bypass(target.host):
        return None
    proxy = urllib.request.getproxies().get(target.scheme)
    if not proxy:
        return None
    return URL(proxy if "://" in proxy else f"http://{proxy}")


async def lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """The lines of a byte stream, split on CRLF, LF or CR, however long (no reader line limit)."""
    partial: list[bytes] = []
    after_cr = False  # a CR ended the last chunk: an LF opening the next one belongs to it
    async for chunk in chunks:
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        if not chunk:
            continue
        after_cr = chunk.endswith(b"\r")
        if b"\n" not in chunk and b"\r" not in chunk:
            partial.append(chunk)
            continue
        if partial:
            partial.append(chunk)
            chunk, partial = b"".join(partial), []
        split = chunk.splitlines()
        if not chunk.endswith((b"\n", b"\r")):
            partial.append(split.pop())
        for line in split:
            yield line.decode("utf-8", "replace")
    if partial:
        yield b"".join(partial).decode("utf-8", "replace")


class Upstream:
    """The HTTP side of one provider: base URL, default key, timeout, and the error boundary."""

    def __init__(self, provider: str, base_url: str, http: aiohttp.ClientSession, *, api_key: SecretStr | None,
                 key_required: bool, key_source: str, timeout: float) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._api_key = api_key
        self._key_required = key_required
        self._key_source = key_source
        self.timeout = timeout
        self._proxy = environment_proxy(self.base_url)
        # Built once: a whole call has one deadline (reading the answer included); a stream times out per step.
        self._whole = aiohttp.ClientTimeout(total=timeout)
        self._streamed = aiohttp.ClientTimeout(connect=timeout, sock_read=timeout)

    def key(self, override: SecretStr | None) -> str | None:
        """The key for one call: the caller's own (BYOK), else the configured one."""
        key = override if override is not None else self._api_key
        if key is not None and key.get_secret_value():
            return key.get_secret_value()
        if self._key_required:
            raise ProviderError(f"no API key for provider {self.provider!r}: set {self._key_source} or send X-Provider-Key",
                                provider=self.provider, code="provider_auth")
        return None

    def failure(self, message: str, *, status: int | None = None, kind: str | None = None,
                secrets: list[str] | None = None, headers: Mapping[str, str] | None = None) -> ProviderError:
        """The `ProviderError` for an upstream status (or an in-stream error `kind`)."""
        text = scrub(message, secrets or []) or "no message"
        where = f"provider {self.provider!r}"
        if status == 429 or kind == "rate_limit_error":
            limited = ProviderRateLimited(f"{where} is rate limiting: {text}", provider=self.provider, retryable=True,
                                          upstream_status=status)
            limited.retry_after = retry_after(headers) if headers is not None else None
            return limited
        if status in (408, 504):
            return ProviderTimeout(f"{where} timed out: {text}", provider=self.provider, retryable=True,
                                   upstream_status=status)
        if status is not None and 400 <= status < 500:
            code = "provider_auth" if status in (401, 403) else None
            return ProviderError(f"{where} rejected the request ({status}): {text}", provider=self.provider,
                                 retryable=False, upstream_status=status, code=code)
        suffix = f" ({status})" if status is not None else ""
        return ProviderError(f"{where} failed{suffix}: {text}", provider=self.provider, retryable=True,
                             upstream_status=status)

    @asynccontextmanager
    async def open(self, method: str, path: str, *, headers: dict[str, str], secrets: list[str],
                   json_body: Any = None, params: dict[str, Any] | None = None,
                   stream: bool = False) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request and yield its 2xx response, unread; the error boundary of this provider.

        Non-streaming calls run under one overall deadline of `timeout`; streaming calls
        time out on connecting and on each read (so on the first byte, and on a stalled stream).
        """
        where = f"provider {self.provider!r}"
        data = None
        if json_body is not None:
            data = jsoncodec.dumps(json_body)
            headers = headers | {"content-type": "application/json"}
        try:
            response = await self._send(method, self.base_url + path, headers, data, params,
                                        self._streamed if stream else self._whole)
            try:
                if response.status >= 300:
                    body = await response.read()
                    message = upstream_message(body) or response.reason or ""
                    raise self.failure(message, status=response.status, secrets=secrets, headers=response.headers)
                yield response
            finally:
                response.release()  # back to the pool when read to the end, else the connection is closed
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            raise ProviderTimeout(f"{where} did not answer within {self.timeout:g}s", provider=self.provider,
                                  retryable=True) from None
        except aiohttp.ClientError as exc:
            # The exception's text names the host at most; keep its type, which says what went wrong.
            raise ProviderError(f"{where} is unreachable ({type(exc).__name__})", provider=self.provider,
                                retryable=True) from None

    async def _send(self, method: str, url: str, headers: dict[str, str], data: bytes | None,
                    params: dict[str, Any] | None, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        async def send() -> aiohttp.ClientResponse:
            return await self._http.request(method, url, headers=headers, data=data, params=params, timeout=timeout,
                                            allow_redirects=False, proxy=self._proxy)

        try:
            return await send()
        except aiohttp.ClientConnectorError:
            raise  # no connection was made, so none was stale
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientConnectionResetError):
            # A pooled keep-alive connection that the server closed while idle fails before any
            # answer; a model call has no side effects, so it is sent once more, on a new connection.
            if method in _RESENT_BY_AIOHTTP:
                raise  # aiohttp has done that already
            return await send()

    async def read(self, path: str, *, headers: dict[str, str], secrets: list[str],
                   params: dict[str, Any] | None = None, json_body: Any = None, method: str = "GET") -> bytes:
        """A whole answer's body (non-streaming)."""
        async with self.open(method, path, headers=headers, secrets=secrets, json_body=json_body,
                             params=params) as response:
            return await response.read()

    async def get_json(self, path: str, *, headers: dict[str, str], secrets: list[str],
                       params: dict[str, Any] | None = None, json_body: Any = None, method: str = "GET") -> Any:
        """A whole JSON answer (non-streaming)."""
        body = await self.read(path, headers=headers, secrets=secrets, params=params, json_body=json_body, method=method)
        try:
            return jsoncodec.loads(body)
        except ValueError:
            raise self.failure("the answer is not JSON") from None

    async def events(self, response: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
        """The server-sent events of a streaming response (`event:` name defaults to "message")."""
        event, data = "message", list[str]()
        async for line in lines(response.content.iter_any()):
            if not line:
                if data:
                    yield SSEEvent(event, "\n".join(data))
                event, data = "message", list[str]()
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name == "event":
                    event = value
        if data:
            yield SSEEvent(event, "\n".join(data))
