"""Operational metrics in the Prometheus format (`GET /metrics`), one registry per Hub.

Labels are names only (route templates, server and tool names, error codes, provider
prefixes): never an argument, a result, a credential or a raw path. And every label comes
from a bounded set the caller cannot grow: a server is its registry slug (file or
published), `url` for an ad-hoc URL server and `other` for anything else, never the
caller's instance name or URL; a tool is a name its registry server lists, else `other`;
an HTTP method is a standard one, else `other`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from .sessions import ManagedSession

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER, URL = "other", "url"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_LABEL = 128  # a longer slug or tool name is `other`
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def call_labels(session: ManagedSession | None, tool: str) -> tuple[str, str]:
    """The (server, tool) labels of one tool call; see the module docstring."""
    if session is None:
        return OTHER, OTHER
    entry = session.target.entry
    if entry is None:
        return URL, OTHER  # an ad-hoc server's tool names are its own to choose
    server = entry.slug if len(entry.slug) <= MAX_LABEL else OTHER
    listed = session.cached_tools() or ()
    known = len(tool) <= MAX_LABEL and any(listed_tool.name == tool for listed_tool in listed)
    return server, tool if known else OTHER


class HubMetrics:
    """The hub's counters, histograms and gauges in a `CollectorRegistry` of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mcp_hub_http_requests", "HTTP requests by route template, method and status.",
                                ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("mcp_hub_http_request_duration_seconds", "HTTP request latency.",
                                         ["route", "method", "status"], buckets=_LATENCY, registry=r)
        self.tool_calls = Counter("mcp_hub_tool_calls", "MCP tool executions by server, tool and outcome.",
                                  ["server", "tool", "outcome"], registry=r)
        self.tool_seconds = Histogram("mcp_hub_tool_call_duration_seconds", "MCP tool execution time.",
                                      ["server", "tool"], buckets=_LATENCY, registry=r)
        self.errors = Counter("mcp_hub_errors", "Errors by code: HTTP error responses (where=http), failed tool "
                              "calls (where=tool), unreachable servers (where=server) and model calls (where=model).",
                              ["code", "where"], registry=r)
        self.model_calls = Counter("mcp_hub_model_calls", "Model (provider) calls by provider and outcome.",
                                   ["provider", "outcome"], registry=r)
        self.model_seconds = Histogram("mcp_hub_model_call_duration_seconds", "Model call time (streaming: whole stream).",
                                       ["provider"], buckets=_LATENCY, registry=r)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.audit_records = Counter("mcp_hub_audit_records", "Audit records committed.", registry=r)
        self.audit_commit_seconds = Histogram("mcp_hub_audit_commit_duration_seconds",
                                              "Time to commit one group of audit records.", buckets=_LATENCY, registry=r)

    def gauges(self, status: Callable[[], dict[str, Any]]) -> None:
        """Live sessions and hosted child processes, read from `status()` at each scrape."""
        Gauge("mcp_hub_sessions", "Live MCP sessions.", registry=self.registry).set_function(
            lambda: status().get("sessions", 0))
        Gauge("mcp_hub_hosted_children", "Hosted MCP server child processes.", registry=self.registry).set_function(
            lambda: status().get("hosted_children", 0))

    def _labelled(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once per label set (`labels()` takes a lock and builds tuples)."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def request(self, route: str, method: str, status: int, seconds: float, code: str | None = None) -> None:
        method = method if method in METHODS else OTHER
        self._labelled(self.requests, route, method, str(status)).inc()
        self._labelled(self.request_seconds, route, method, str(status)).observe(seconds)
        if status >= 400:
            self.errors.labels(code or f"http_{status}", "http").inc()

    def tool_call(self, server: str, tool: str, seconds: float, error_code: str | None, is_error: bool) -> None:
        self._labelled(self.tool_calls, server, tool, "error" if is_error else "ok").inc()
        self._labelled(self.tool_seconds, server, tool).observe(seconds)
        if is_error:
            self.errors.labels(error_code or "tool_error", "tool").inc()

    def server_errors(self, codes: Iterable[str]) -> None:
        for code in codes:
            self.errors.labels(code, "server").inc()

    def model_call(self, provider: str, seconds: float, error_code: str | None = None) -> None:
        self._labelled(self.model_calls, provider, "error" if error_code else "ok").inc()
        self._labelled(self.model_seconds, provider).observe(seconds)
        if error_code:
            self.errors.labels(error_code, "model").inc()

    def audit_commit(self, records: int, seconds: float) -> None:
        self.audit_records.inc(records)
        self.audit_commit_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
