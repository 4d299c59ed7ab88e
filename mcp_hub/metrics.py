"""Operational metrics in the Prometheus format (`GET /metrics`), one registry per Hub.

Labels are names only (route templates, server and tool names, error codes, provider
prefixes): never an argument, a result, a credential or a raw path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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
        self._tool_children: dict[tuple[str, str, bool], tuple[Any, Any]] = {}
        self.audit_records = Counter("mcp_hub_audit_records", "Audit records committed.", registry=r)
        self.audit_commit_seconds = Histogram("mcp_hub_audit_commit_duration_seconds",
                                              "Time to commit one group of audit records.", buckets=_LATENCY, registry=r)

    def gauges(self, status: Callable[[], dict[str, Any]]) -> None:
        """Live sessions and hosted child processes, read from `status()` at each scrape."""
        Gauge("mcp_hub_sessions", "Live MCP sessions.", registry=self.registry).set_function(
            lambda: status().get("sessions", 0))
        Gauge("mcp_hub_hosted_children", "Hosted MCP server child processes.", registry=self.registry).set_function(
            lambda: status().get("hosted_children", 0))

    def request(self, route: str, method: str, status: int, seconds: float, code: str | None = None) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method, str(status)).observe(seconds)
        if status >= 400:
            self.errors.labels(code or f"http_{status}", "http").inc()

    def tool_call(self, server: str, tool: str, seconds: float, error_code: str | None, is_error: bool) -> None:
        key = (server, tool, is_error)
        children = self._tool_children.get(key)
        if children is None:  # labels() takes a lock and builds tuples: once per label set
            children = self._tool_children[key] = (self.tool_calls.labels(server, tool, "error" if is_error else "ok"),
                                                   self.tool_seconds.labels(server, tool))
        children[0].inc()
        children[1].observe(seconds)
        if is_error:
            self.errors.labels(error_code or "tool_error", "tool").inc()

    def server_errors(self, codes: Iterable[str]) -> None:
        for code in codes:
            self.errors.labels(code, "server").inc()

    def model_call(self, provider: str, seconds: float, error_code: str | None = None) -> None:
        self.model_calls.labels(provider, "error" if error_code else "ok").inc()
        self.model_seconds.labels(provider).observe(seconds)
        if error_code:
            self.errors.labels(error_code, "model").inc()

    def audit_commit(self, records: int, seconds: float) -> None:
        self.audit_records.inc(records)
        self.audit_commit_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
