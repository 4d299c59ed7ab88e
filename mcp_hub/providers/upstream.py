"""One upstream model API over HTTP: its client, its key, and the one place its failures are translated.

Both wire formats (OpenAI chat completions, Anthropic Messages) send JSON over the
hub's pooled transport, stream SSE, and report errors as `{"error": {"message": ...}}`,
so one boundary serves both: `Upstream.open` maps every transport error and non-2xx
status to a `ProviderError`, with the upstream's own message shortened and scrubbed of
credentials. Nothing from the request headers is ever echoed.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from pydantic import BaseModel, SecretStr, ValidationError

from ..errors import ProviderError, ProviderRateLimited, ProviderTimeout

MAX_MESSAGE = 300
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


def retry_after(headers: httpx2.Headers) -> float | None:
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


class Upstream:
    """The HTTP side of one provider: base URL, default key, timeout, and the error boundary."""

    def __init__(self, provider: str, base_url: str, http: httpx2.AsyncClient, *, api_key: SecretStr | None,
                 key_required: bool, key_source: str, timeout: float) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._api_key = api_key
        self._key_required = key_required
        self._key_source = key_source
        self.timeout = timeout

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
                secrets: list[str] | None = None, headers: httpx2.Headers | None = None) -> ProviderError:
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
                   stream: bool = False) -> AsyncIterator[httpx2.Response]:
        """Send one request and yield its 2xx response, unread; the error boundary of this provider.

        Non-streaming calls run under one overall deadline of `timeout`; streaming calls
        time out on connecting and on each read (so on the first byte, and on a stalled stream).
        """
        url = self.base_url + path
        where = f"provider {self.provider!r}"
        # No cancel scope around a stream: it would span the consumer's yields (an async generator).
        deadline = nullcontext() if stream else anyio.fail_after(self.timeout)
        try:
            with deadline:
                request = self._http.build_request(method, url, headers=headers, json=json_body, params=params,
                                                   timeout=httpx2.Timeout(self.timeout))
                response = await self._send(request)
                try:
                    if response.status_code >= 300:
                        body = await response.aread()
                        message = upstream_message(body) or response.reason_phrase
                        raise self.failure(message, status=response.status_code, secrets=secrets,
                                           headers=response.headers)
                    yield response
                finally:
                    await response.aclose()
        except (TimeoutError, httpx2.TimeoutException):
            raise ProviderTimeout(f"{where} did not answer within {self.timeout:g}s", provider=self.provider,
                                  retryable=True) from None
        except httpx2.TransportError as exc:
            # The exception's text names the host at most; keep its type, which says what went wrong.
            raise ProviderError(f"{where} is unreachable ({type(exc).__name__})", provider=self.provider,
                                retryable=True) from None

    async def _send(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return await self._http.send(request, stream=True)
        except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError):
            # A pooled keep-alive connection that the server closed while idle fails before any
            # answer; a model call has no side effects, so it is sent once more, on a new connection.
            return await self._http.send(request, stream=True)

    async def get_json(self, path: str, *, headers: dict[str, str], secrets: list[str],
                       params: dict[str, Any] | None = None, json_body: Any = None, method: str = "GET") -> Any:
        """A whole JSON answer (non-streaming)."""
        async with self.open(method, path, headers=headers, secrets=secrets, json_body=json_body,
                             params=params) as response:
            body = await response.aread()
            try:
                return json.loads(body)
            except ValueError:
                raise self.failure("the answer is not JSON") from None

    async def events(self, response: httpx2.Response) -> AsyncIterator[SSEEvent]:
        """The server-sent events of a streaming response (`event:` name defaults to "message")."""
        event, data = "message", list[str]()
        async for line in response.aiter_lines():
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
