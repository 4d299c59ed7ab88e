"""Reading request bodies at the HTTP edge: size-capped, JSON-decoded, errors in the hub's shape.

The cap is the `max_body_bytes` setting (default 4 MiB), passed in by each handler.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from . import jsoncodec
from .errors import RequestError, TooLarge, UnsupportedMediaType


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"request body exceeds {limit} bytes (max_body_bytes)")


def is_json_type(content_type: str) -> bool:
    """`application/json` or `application/*+json`, parameters (charset) aside."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def json_type_refusal(content_type: str) -> UnsupportedMediaType | None:
    """Why a body of this Content-Type is refused (checked for every POST/PUT/PATCH by `origins.CrossSiteGuard`):
    a browser page sends text/plain or a form cross-site without asking the hub, never application/json."""
    if is_json_type(content_type):
        return None
    return UnsupportedMediaType("request bodies must be JSON (Content-Type: application/json)", param="content-type")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused past `limit` bytes without reading it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def decode_json(raw: bytes) -> Any:
    try:
        return jsoncodec.loads_within(raw)  # strict: NaN and Infinity are not JSON; depth-capped
    except jsoncodec.TooDeep as exc:
        param = None if exc.where is None else str(exc.where)
        raise RequestError(f"request body is nested deeper than {exc.limit} levels" + (f" (in `{param}`)" if param else ""),
                           code="json_too_deep", param=param) from None
    except (ValueError, UnicodeDecodeError):
        raise RequestError("request body is not valid JSON", code="invalid_json") from None


async def json_body(request: Request, limit: int) -> Any:
    return decode_json(await read_body(request, limit))


def validated(model: type[BaseModel], data: Any) -> Any:
    """`data` as `model`, or a 400 naming the first bad field."""
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", code="invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise RequestError(f"{param}: {first['msg']}" if param else first["msg"], param=param) from None
