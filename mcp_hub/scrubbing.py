"""Scrubbing secrets out of everything the hub emits.

A `Scrubber` knows the secret values of one session or one request (credential values
as sent, and as rendered into headers and environment variables) and replaces every
occurrence with `[REDACTED]`: in tool results (a server may echo a secret back), error
messages, stream events, stored responses and hosted servers' stderr logs.

A secret can be escaped on its way into a message (a JSON string, a `repr`, a URL), so each
is also looked for in those forms: JSON-escaped (ASCII and not), `repr` of the text and of
its UTF-8 bytes, and percent-encoded (`quote` and `quote_plus`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
MIN_SECRET = 4  # shorter values would mangle ordinary text; they are no secrets worth the name


def escaped_forms(secret: str) -> set[str]:
    """`secret` and the forms it takes when escaped into a JSON string, a `repr` or a URL."""
    return {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1],
            repr(secret.encode("utf-8", "surrogatepass"))[2:-1], quote(secret, safe=""), quote_plus(secret, safe="")}


class Scrubber:
    """Replaces known secret values, raw or escaped (`escaped_forms`), in text and JSON values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = {form for s in secrets if len(s) >= MIN_SECRET for form in escaped_forms(s)}
        unique = sorted({s for s in forms if len(s) >= MIN_SECRET}, key=len, reverse=True)
        self._secrets = unique
        self._pattern = re.compile("|".join(re.escape(s) for s in unique)) if unique else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __repr__(self) -> str:
        return "<Scrubber>"

    def held_back(self, text: str) -> int:
        """How many trailing characters of `text` could be the start of a secret (for streams)."""
        longest = 0
        for secret in self._secrets:
            for size in range(min(len(text), len(secret) - 1), longest, -1):
                if secret.startswith(text[-size:]):
                    longest = size
                    break
        return longest

    def text(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern is not None else text

    def value(self, value: Any) -> Any:
        """A copy of a JSON value with every string (keys included) scrubbed."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(item) for item in value]
        return value


class TextStream:
    """Scrubs a text that arrives in pieces (streamed model output).

    A secret may be split across pieces, so a tail that could be the start of a secret is held
    back until the next piece shows whether it is one; `flush()` releases the rest at the end.
    Text with no secret-like tail passes through at once.
    """

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber
        self._held = ""

    def feed(self, piece: str) -> str:
        if not self.scrubber:
            return piece
        text = self.scrubber.text(self._held + piece)
        keep = self.scrubber.held_back(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        text, self._held = self.scrubber.text(self._held), ""
        return text


# Third-party loggers write whole MCP messages at DEBUG (the MCP SDK's HTTP transports log
# "SSE message: ..." / "Sending client message: ..." with tool results and arguments), so a
# server echoing its credential would reach any DEBUG log. `LiveSecretsFilter`, put on exactly
# those loggers (a logger's filters do not apply to its children's records) by the hub while it
# runs, replaces the secrets of every live session in the record's message and traceback. It
# runs only for records that pass the level check: no cost unless DEBUG is on.
PAYLOAD_LOGGERS = ("mcp.client.streamable_http", "mcp.client.sse", "mcp.client.stdio", "mcp.client.session",
                   "mcp.shared.session", "mcp.shared.jsonrpc_dispatcher")


class LiveSecretsFilter(logging.Filter):
    """Scrubs log records with the scrubbers `live()` returns at the time of each record."""

    def __init__(self, live: Callable[[], Iterable[Scrubber]]) -> None:
        super().__init__()
        self._live = live

    def filter(self, record: logging.LogRecord) -> bool:
        scrubbers = [scrubber for scrubber in self._live() if scrubber]
        if not scrubbers:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for scrubber in scrubbers:
            message = scrubber.text(message)
            if record.exc_text:
                record.exc_text = scrubber.text(record.exc_text)
        record.msg, record.args = message, None
        return True

    def install(self) -> None:
        for name in PAYLOAD_LOGGERS:
            logging.getLogger(name).addFilter(self)

    def remove(self) -> None:
        for name in PAYLOAD_LOGGERS:
            logging.getLogger(name).removeFilter(self)
