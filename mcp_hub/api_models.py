"""Pydantic models of the HTTP API's bodies: validated requests, documented responses.

Response models are open objects (extension fields may be added); they exist for the
OpenAPI document (`openapi.py`), while the handlers build their responses directly.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .chat_request import CredentialItem, ServerItem
from .executor import ToolResult


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorObject(_Open):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(_Open):
    """Every error: the OpenAI shape, repeated at the top level for the Dedalus SDK."""

    error: ErrorObject
    message: str
    type: str
    param: str | None
    code: str | None


class Health(_Open):
    status: str
    version: str
    servers: int
    sessions: int
    hosted_children: int


class ServerSummary(_Open):
    slug: str
    description: str
    tags: list[str]
    latest: str
    kind: str
    versions: list[Any]
    connections: list[Any]


class ServerList(_Open):
    object: str
    data: list[ServerSummary]


class ServerDetail(ServerSummary):
    limits: dict[str, Any]
    live: dict[str, Any]


class ToolCallRequest(BaseModel):
    """`POST /v1/tools/call`: one server (any `mcp_servers` item form), one tool."""

    model_config = ConfigDict(extra="forbid")

    server: ServerItem
    tool: str = Field(min_length=1, max_length=256)
    arguments: dict[str, Any] | None = None
    credentials: CredentialItem | list[CredentialItem] | None = None


class ToolRecord(ToolResult):
    model_config = ConfigDict(extra="allow")

    mcp_server_errors: dict[str, Any] | None = None


class ChatCompletion(_Open):
    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class DeferredStatus(_Open):
    """A deferred completion that is still running (`deferred: true`, and its GET while it runs)."""

    id: str
    request_id: str
    object: str
    status: str


class ModelList(_Open):
    object: str
    data: list[dict[str, Any]]


class Jwks(_Open):
    keys: list[dict[str, Any]]


class AuditToolCall(_Open):
    """One audit record (`GET /v1/audit/tool-calls/{id}`; a line of the export)."""

    object: str
    id: str
    tenant: str
    seq: int
    kind: str
    source: str
    completion_id: str | None
    correlation_id: str | None
    key_id: str | None
    server_name: str
    server_ref: str | None
    tool_name: str | None
    tool_hash: str | None
    arguments: Any
    result: Any
    result_bytes: int
    result_sha256: str
    result_truncated: bool
    is_error: bool
    error_code: str | None
    duration_ms: int
    started_at: str
    ended_at: str
    model: str | None
    turn: int | None
    prev_hash: str
    hash: str
    status: Literal["completed", "failed", "interrupted", "pruned"]


class AuditList(_Open):
    object: str
    data: list[AuditToolCall]
    has_more: bool
    next_cursor: str | None


class AuditVerification(_Open):
    object: str
    tenant: str
    ok: bool
    records_checked: int
    head: dict[str, Any]
    anchor_seq: int
    unfinished: int
    first_broken_link: dict[str, Any] | None
