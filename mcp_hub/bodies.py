"""Reading request bodies at the HTTP edge: size-capped, JSON-decoded, errors in the hub's shape."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from .errors import RequestError, TooLarge

MAX_BODY = 4 * 1024 * 1024


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The raw body, refused past `limit` bytes without reading it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"request body exceeds {limit} bytes")
    return bytes(body)


def decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("request body is not valid JSON", code="invalid_json") from None


async def json_body(request: Request) -> Any:
    return decode_json(await read_body(request))
