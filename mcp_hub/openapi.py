"""The OpenAPI 3.1 document of the hub's HTTP API, served at `/openapi.json`.

Request bodies come from the same pydantic models the handlers validate with; the
response schemas describe what the handlers return (open objects: extension fields
may be added). Every route documents every status it can answer, so a fuzzer can
hold the hub to it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from . import __version__
from .api_models import (
    AuditList,
    AuditToolCall,
    AuditVerification,
    ChatCompletion,
    DeferredStatus,
    ErrorBody,
    Health,
    Jwks,
    ModelList,
    ServerDetail,
    ServerList,
    ToolCallRequest,
    ToolRecord,
)
from .chat_request import ChatCompletionRequest, ModelChoice
from .registry import SLUG_PATTERN

_REF = "#/components/schemas/{model}"


_MODELS: list[type[BaseModel]] = [ErrorBody, Health, ServerList, ServerDetail, ToolCallRequest, ToolRecord,
                                  ChatCompletionRequest, ChatCompletion, ModelList, Jwks, DeferredStatus, AuditToolCall,
                                  AuditList, AuditVerification]
_ERRORS = {
    "400": "Malformed input", "401": "Missing or invalid API key", "403": "The API key lacks the role",
    "404": "Not found",
    "413": "Body too large", "415": "The body is not JSON (Content-Type)", "422": "Idempotency-Key reused",
    "429": "Rate limited: this API key's requests per minute (or the model provider's) are used up",
    "409": "Exists already (slug, immutable version)",
    "502": "Model provider failed", "504": "Model provider or the request's time budget timed out",
    "503": "The hub running a deferred completion shut down (deferred_interrupted)",
}
# Sent with every response of a rate-limited route while rate limiting is on.
_RATE_HEADERS = {name: {"description": description, "schema": {"type": "string"}} for name, description in [
    ("x-ratelimit-limit-requests", "requests allowed per minute"),
    ("x-ratelimit-remaining-requests", "requests left now"),
    ("x-ratelimit-reset-requests", "time until the allowance is full again, e.g. `12s`"),
]}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*statuses: str) -> dict[str, Any]:
    responses = {status: _json(ErrorBody, _ERRORS[status]) for status in statuses}
    if "429" in responses:
        responses["429"]["headers"] = {"retry-after": {"description": "seconds to wait before retrying",
                                                       "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                                       **_RATE_HEADERS}
    return responses


def _components(prefixes: list[str]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    # Model names must start with a configured provider prefix.
    pattern = "^(" + "|".join(re.escape(prefix) for prefix in prefixes) + ")/.+$"
    named = {"type": "string", "pattern": pattern}
    schemas["ModelChoice"]["properties"]["model"] = named
    schemas["ChatCompletionRequest"]["properties"]["model"] = {"anyOf": [
        named, _ref(ModelChoice), {"type": "array", "minItems": 1, "items": {"anyOf": [named, _ref(ModelChoice)]}}]}
    return schemas


def document(prefixes: list[str]) -> dict[str, Any]:
    """The whole OpenAPI document; `prefixes` are the configured model providers."""
    auth: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}, {}]
    query = lambda name, description: {"name": name, "in": "query", "required": False,  # noqa: E731
                                       "schema": {"type": "string"}, "description": description}
    path = lambda name: {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}  # noqa: E731
    chat_ok = _json(ChatCompletion)
    when = {"anyOf": [{"type": "string", "format": "date-time"},
                      {"type": "string", "pattern": "^-?[0-9]{1,11}(\\.[0-9]{1,9})?$"}]}
    typed = lambda name, description, schema: {**query(name, description), "schema": schema}  # noqa: E731
    audit_filters = [query("server", "server instance name"), query("tool", "tool name"),
                     typed("is_error", "only failed (true) or successful (false) calls", {"enum": ["true", "false"]}),
                     typed("since", "started at or after: RFC 3339 or epoch seconds", when),
                     typed("until", "started before: RFC 3339 or epoch seconds", when),
                     query("completion_id", "completion id"), query("correlation_id", "correlation id")]
    # Each event's data: a chunk object, an `error` object, or the string [DONE].
    chat_ok["content"]["text/event-stream"] = {"schema": {"anyOf": [{"type": "object"}, {"const": "[DONE]"}]}}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "mcp-hub", "version": __version__,
                 "description": "Host and route MCP servers; OpenAI-compatible chat completions with server-side tools."},
        "components": {
            "schemas": _components(prefixes),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        },
        "paths": {
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": _json(Health)}}},
            "/.well-known/jwks.json": {"get": {"operationId": "jwks", "responses": {"200": _json(Jwks)}}},
            "/v1/servers": {"get": {"operationId": "listServers", "security": auth,
                                    "parameters": [query("tag", "only servers with this tag")],
                                    "responses": {"200": _json(ServerList), **_errors("400", "401", "429")}}},
            "/v1/servers/{org}/{name}": {"get": {
                "operationId": "getServer", "security": auth,
                "parameters": [path("org"), path("name"), query("version", "exact version or semver range")],
                "responses": {"200": _json(ServerDetail), **_errors("400", "401", "404", "429")}}},
            "/v1/tools/call": {"post": {
                "operationId": "callTool", "security": auth,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(ToolCallRequest)}}},
                "responses": {"200": _json(ToolRecord), **_errors("400", "401", "404", "413", "415", "429")}}},
            "/v1/chat/completions": {"post": {
                "operationId": "createChatCompletion", "security": auth,
                "description": "An OpenAI-compatible chat completion whose MCP tool calls run in the hub. "
                               "An `Idempotency-Key` header makes a retry return the first response; "
                               "the same key with another body is a 422. Limits: `max_servers_per_request` "
                               "(400 too_many_servers), `max_tools_per_request` (400 too_many_tools), "
                               "`max_body_bytes` (413), `request_timeout` for the whole loop (504 request_timeout), "
                               "`rate_limit_per_minute` per API key (429 rate_limited with retry-after).",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref(ChatCompletionRequest)}}},
                "responses": {"200": chat_ok, "202": _json(DeferredStatus, "Deferred: running in the background"),
                              **_errors("400", "401", "404", "413", "415", "422", "429", "502", "504")}}},
            "/v1/chat/deferred-completion/{request_id}": {"get": {
                "operationId": "getDeferredCompletion", "security": auth, "parameters": [path("request_id")],
                "description": "A deferred completion (`deferred: true`): 202 while it runs, 200 with the "
                               "completion, the error's status and body if it failed, 404 unknown or expired.",
                "responses": {"200": _json(ChatCompletion), "202": _json(DeferredStatus, "Still running"),
                              **_errors("400", "401", "404", "429", "502", "503", "504")}}},
            "/v1/models": {"get": {"operationId": "listModels", "security": auth,
                                   "responses": {"200": _json(ModelList), **_errors("401", "429")}}},
            "/v1/audit/tool-calls": {"get": {
                "operationId": "listAuditToolCalls", "security": auth,
                "description": "The caller's tenant's audit records, newest first (404 audit_disabled when off).",
                "parameters": [*audit_filters,
                               typed("limit", "page size (default 50)", {"type": "integer", "minimum": 1, "maximum": 500}),
                               typed("cursor", "`next_cursor` of the previous page",
                                     {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"})],
                "responses": {"200": _json(AuditList), **_errors("400", "401", "404", "429")}}},
            "/v1/audit/tool-calls/{id}": {"get": {
                "operationId": "getAuditToolCall", "security": auth, "parameters": [path("id")],
                "responses": {"200": _json(AuditToolCall), **_errors("401", "404", "429")}}},
            "/v1/audit/verify": {"get": {
                "operationId": "verifyAuditTrail", "security": auth,
                "description": "Walks the tenant's hash chain and reports the first broken link.",
                "responses": {"200": _json(AuditVerification), **_errors("401", "404", "429")}}},
            "/v1/audit/export": {"get": {
                "operationId": "exportAuditTrail", "security": auth, "parameters": audit_filters,
                "description": "JSON lines, oldest first: one AuditToolCall per line.",
                "responses": {"200": {"description": "OK", "content": {"application/x-ndjson": {
                    "schema": {"type": "string"}}}}, **_errors("400", "401", "404", "429")}}},
            "/metrics": {"get": {
                "operationId": "metrics", "security": auth, "description": "Prometheus metrics (admin keys).",
                "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
                              **_errors("401", "403", "429")}}},
        },
    }
    doc["paths"]["/v1/servers"]["get"]["parameters"] += [query("q", "search slugs, descriptions and tags"),
                                                         query("include_unlisted", "true: unlisted servers too")]
    for route, item in _marketplace_paths(auth, path, query).items():
        doc["paths"].setdefault(route, {}).update(item)
    return doc


def _object(description: str, required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "description": description}
    if required:
        schema["required"] = required
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_SLUG = SLUG_PATTERN


def _exact(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _marketplace_paths(auth: Any, path: Any, query: Any) -> dict[str, Any]:
    """Publishing (registrations, server.json import) and tool pins; see README "Publishing servers"."""
    body = lambda description, required: {"required": True, **_object(description, required)}  # noqa: E731
    written = {"201": _object("Registered; `pinned` says whether its tools were pinned"),
               **_errors("400", "401", "403", "404", "409", "413", "415", "429"),
               "422": _json(ErrorBody, "The server cannot be reached to list its tools")}
    changed = {"200": _object("Changed"), **_errors("400", "401", "403", "404", "409", "413", "415", "429")}
    strings = {"type": "array", "items": {"type": "string"}}
    return {
        "/v1/servers": {"post": {"operationId": "registerServer", "security": auth, "responses": written,
                                 "requestBody": body("slug, description, tags, connections, limits, version "
                                                     "({version, url | package | command}), credentials?",
                                                     ["slug", "version"])}},
        "/v1/servers/import": {"post": {"operationId": "importServerJson", "security": auth, "responses": written,
                                        "requestBody": body("server_json (the official MCP Registry format), slug?, "
                                                            "prefer?, variables?, tags?, credentials?", ["server_json"])}},
        "/v1/servers/{org}/{name}/versions": {"post": {
            "operationId": "addServerVersion", "security": auth, "parameters": [path("org"), path("name")],
            "responses": written, "requestBody": body("version, url | package | command, credentials?", ["version"])}},
        "/v1/servers/{org}/{name}/versions/{version}": {"patch": {
            "operationId": "deprecateServerVersion", "security": auth,
            "parameters": [path("org"), path("name"), path("version")], "responses": changed,
            "requestBody": _exact({"deprecated": {"type": "boolean"}}, ["deprecated"])}},
        "/v1/servers/{org}/{name}": {"patch": {
            "operationId": "updateServer", "security": auth, "parameters": [path("org"), path("name")],
            "responses": changed, "requestBody": _exact(
                {"unlisted": {"type": "boolean"}, "description": {"type": "string"}, "tags": strings}, [])}},
        "/v1/pins": {"get": {"operationId": "listPins", "security": auth,
                             "parameters": [{**query("server", "org/name or org/name@version"), "required": True,
                                             "schema": {"type": "string", "pattern": f"^{_SLUG}(@.+)?$"}}],
                             "responses": {"200": _object("Pins: tool, status, hashes, pending definition"),
                                           **_errors("400", "401", "404", "429")}}},
        "/v1/pins/approve": {"post": {"operationId": "approvePins", "security": auth, "responses": changed,
                                      "requestBody": _exact({"server": {"type": "string", "pattern": f"^{_SLUG}@.+$"},
                                                             "tools": strings}, ["server"])}},
    }
