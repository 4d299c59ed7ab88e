"""One audit record of a tool execution (or of a server that could not be reached), and its hash.

A record's `hash` is SHA-256 over the hash of the tenant's previous record and the
canonical JSON of every other field (`chain_hash`), so the records of a tenant form a
chain: editing, inserting or deleting one breaks the link at that point. Arguments and
results are stored as JSON text, exactly as hashed, already scrubbed of secrets.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import jsoncodec
from ..tool_hash import tool_hash

if TYPE_CHECKING:  # annotations only: the audit writer process (child.py) must not import the MCP SDK
    from ..errors import ServerError
    from ..executor import CallContext, ToolResult
    from ..sessions import ManagedSession

GENESIS = "0" * 64  # the "previous hash" of a tenant's first record
MAX_NAME = 256  # characters kept of a caller-chosen name (server instance, tool, model, correlation id)
# kind: a tool execution; a server that failed; retention removing the chain's oldest records
# (the record says through which seq and hash, so the anchor verification starts from is vouched
# for by the chain itself).
TOOL_CALL, SERVER_ERROR, RETENTION = "tool_call", "server_error", "retention"


@dataclass
class AuditRecord:
    """A row of `audit_records`. `seq`, `prev_hash` and `hash` are set when it joins the chain."""

    id: str
    tenant: str
    kind: str  # tool_call | server_error (a server that failed: no tool, an error code) | retention
    source: str  # completion | handoff | deferred | direct | gateway | retention
    completion_id: str | None
    correlation_id: str | None
    key_id: str | None
    server_name: str
    server_ref: str | None  # slug@version, or the URL's host
    tool_name: str | None
    tool_hash: str | None  # tool_hash() of the definition as the server listed it
    arguments: str  # JSON text, scrubbed, cut at the audit limit
    result: str  # JSON text, scrubbed, cut at the audit limit
    result_bytes: int  # size of the full result's JSON
    result_sha256: str  # SHA-256 of the full result's JSON
    result_truncated: bool
    is_error: bool
    error_code: str | None
    duration_ms: int
    started_at: int  # microseconds since the epoch (UTC)
    ended_at: int
    model: str | None
    turn: int | None
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""

    def content(self) -> dict[str, Any]:
        """Every field but `hash`: what the hash covers."""
        return {name: getattr(self, name) for name in CONTENT}

    def view(self) -> dict[str, Any]:
        """The API shape: JSON values parsed, times as RFC 3339."""
        fields = {**self.content(), "hash": self.hash}
        fields["arguments"] = json.loads(self.arguments)
        fields["result"] = json.loads(self.result)
        fields["started_at"] = _rfc3339(self.started_at)
        fields["ended_at"] = _rfc3339(self.ended_at)
        return {"object": "audit.tool_call", **fields, "status": self.status}

    @property
    def status(self) -> str:
        """completed | failed | interrupted (the hub stopped while the call ran) | pruned (a retention record)."""
        if self.kind == RETENTION:
            return "pruned"
        if self.error_code == INTERRUPTED:
            return "interrupted"
        return "failed" if self.is_error else "completed"

    def pruned_through(self) -> tuple[int, str] | None:
        """A retention record's (seq, hash) of the last record it removed; None for other records."""
        if self.kind != RETENTION:
            return None
        try:
            data = json.loads(self.result)
            return int(data["pruned_through_seq"]), str(data["pruned_through_hash"])
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AuditRecord:
        record = cls(**row)
        record.result_truncated, record.is_error = bool(record.result_truncated), bool(record.is_error)
        return record


CONTENT = tuple(f.name for f in dataclass_fields(AuditRecord) if f.name != "hash")
INTERRUPTED = "interrupted"  # error_code of a call whose hub stopped while it ran (see intents in store.py)


def chain_hash(prev_hash: str, content: dict[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{text}".encode()).hexdigest()


def micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


def _rfc3339(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def capped(value: Any, limit: int) -> tuple[str, bool]:
    """`value` as JSON text, or when over `limit` bytes, a JSON string of its first bytes and a marker."""
    data = jsoncodec.dumps(value)
    if len(data) <= limit:
        return data.decode(), False
    kept = data[:limit].decode("utf-8", "ignore")
    return json.dumps(f"{kept}\n[truncated for the audit trail: {len(data)} bytes]", ensure_ascii=False), True


def short(text: str | None) -> str | None:
    """A caller-chosen name for the audit trail: cut at `MAX_NAME` characters, marked when cut."""
    if text is None or len(text) <= MAX_NAME:
        return text
    return f"{text[:MAX_NAME]}...[truncated: {len(text)} characters]"


def instance_name(name: str) -> str:
    """A server's instance name for the audit trail: an ad-hoc URL's user, password, query and
    fragment (where API keys travel) replaced by `[REDACTED]`, then `short`."""
    if name.startswith(("http://", "https://")):
        try:
            parts = urlsplit(name)
            host = parts.hostname or ""
            port = parts.port
        except ValueError:
            return short(name.split("://", 1)[0] + "://[REDACTED]") or ""
        if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
            netloc = ("[REDACTED]@" if "@" in parts.netloc else "") + (f"[{host}]" if ":" in host else host)
            netloc += f":{port}" if port is not None else ""
            query = "?[REDACTED]" if parts.query else ""
            name = f"{parts.scheme}://{netloc}{parts.path}{query}" + ("#[REDACTED]" if parts.fragment else "")
    return short(name) or ""


def server_ref(session: ManagedSession | None) -> str | None:
    if session is None:
        return None
    target = session.target
    if target.slug is not None:
        return f"{target.slug}@{target.version_key}" if target.version_key else target.slug
    return urlsplit(target.version.url).hostname if target.version.url else None


def _new_id() -> str:
    """Time-ordered (so that new ids append to the index) and unguessable: `audit_<µs hex><64 random bits>`."""
    return f"audit_{time.time_ns() // 1000:014x}{os.urandom(8).hex()}"


class ToolHashes:
    """`tool_hash` of listed tools, computed once per tool list a session holds."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        # id(list) -> (the list itself, so that its id is not reused while cached; name -> hash)
        self._cache: dict[int, tuple[list[Any], dict[str, str]]] = {}

    def of(self, session: ManagedSession | None, tool: str) -> str | None:
        listed = session.cached_tools() if session is not None else None
        if not listed:
            return None
        cached = self._cache.get(id(listed))
        if cached is None or cached[0] is not listed:
            if len(self._cache) >= self._size:
                self._cache.clear()
            cached = self._cache[id(listed)] = (listed, {t.name: tool_hash(t) for t in listed})
        return cached[1].get(tool)


def tool_call_record(result: ToolResult, session: ManagedSession | None, context: CallContext, limit: int,
                     hashes: ToolHashes | None = None, record_id: str | None = None) -> AuditRecord:
    """The outcome record of a call; `record_id`: its intent's id (see intents.py), if one was committed."""
    arguments, _ = capped(result.arguments, limit)
    text, cut = capped(result.result, limit)
    started = result.started_at or time.time() - result.duration_ms / 1000
    return AuditRecord(
        id=record_id or _new_id(), tenant=context.tenant, kind=TOOL_CALL, source=context.source,
        completion_id=context.request_id, correlation_id=short(context.correlation_id), key_id=context.key_id,
        server_name=instance_name(result.server_name), server_ref=short(server_ref(session)),
        tool_name=short(result.tool_name),
        tool_hash=(hashes or ToolHashes()).of(session, result.tool_name), arguments=arguments, result=text,
        result_bytes=result.result_bytes, result_sha256=result.result_sha256,
        result_truncated=cut or result.truncated, is_error=result.is_error, error_code=result.error_code,
        duration_ms=result.duration_ms, started_at=micros(started), ended_at=micros(started) + result.duration_ms * 1000,
        model=short(context.model), turn=context.turn)


def server_error_record(name: str, error: ServerError, context: CallContext, limit: int = 65536) -> AuditRecord:
    """A server of the request that could not be opened, listed or reached (its error cut at `limit` bytes:
    a message may quote the caller's spec)."""
    data, _ = capped({"error": error.to_entry()}, limit)
    now = micros(time.time())
    return AuditRecord(
        id=_new_id(), tenant=context.tenant, kind=SERVER_ERROR, source=context.source,
        completion_id=context.request_id, correlation_id=short(context.correlation_id), key_id=context.key_id,
        server_name=instance_name(name), server_ref=None, tool_name=None, tool_hash=None, arguments="{}", result=data,
        result_bytes=len(data.encode()), result_sha256=hashlib.sha256(data.encode()).hexdigest(),
        result_truncated=False, is_error=True, error_code=error.code, duration_ms=0, started_at=now, ended_at=now,
        model=short(context.model), turn=context.turn)


def retention_record(tenant: str, through_seq: int, through_hash: str, removed: int | None, cutoff: int) -> AuditRecord:
    """The chained record of one retention run: records up to `through_seq` (hash `through_hash`) removed."""
    data = json.dumps({"pruned_through_seq": through_seq, "pruned_through_hash": through_hash,
                       "records_removed": removed, "cutoff": _rfc3339(cutoff)}, separators=(",", ":"))
    now = micros(time.time())
    return AuditRecord(
        id=_new_id(), tenant=tenant, kind=RETENTION, source=RETENTION, completion_id=None, correlation_id=None,
        key_id=None, server_name="", server_ref=None, tool_name=None, tool_hash=None, arguments="{}", result=data,
        result_bytes=len(data), result_sha256=hashlib.sha256(data.encode()).hexdigest(), result_truncated=False,
        is_error=False, error_code=None, duration_ms=0, started_at=now, ended_at=now, model=None, turn=None)
