"""The `POST /v1/chat/completions` request body, validated once at the edge.

Every field of PROTOCOL.md section 2 is accepted and nullable. Fields the hub does
not consume (sampling, `response_format`, provider-specific extras, ...) are kept
and passed through to the provider; `model` may be a string, a DedalusModel
`{"model", "settings"}`, or a list of either (an ordered fallback).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import RequestError

# Fields the hub itself consumes; everything else reaches the provider.
HUB_FIELDS = frozenset({
    "model", "messages", "tools", "stream", "stream_options", "mcp_servers", "credentials", "max_turns",
    "automatic_tool_execution", "handoff_mode", "correlation_id", "deferred_calls", "deferred", "handoff_config",
    "agent_attributes", "model_attributes", "n",
})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class ModelChoice(BaseModel):
    """One model of the request: `provider/name` plus default settings for it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    settings: dict[str, Any] | None = None


class ChatCompletionRequest(BaseModel):
    """The request body; unknown fields are kept (`model_extra`) for the provider."""

    model_config = ConfigDict(extra="allow")

    model: str | ModelChoice | list[str | ModelChoice]
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    mcp_servers: str | dict[str, Any] | list[str | dict[str, Any]] | None = None
    credentials: dict[str, Any] | list[dict[str, Any]] | None = None
    max_turns: int | None = Field(default=None, ge=1)
    automatic_tool_execution: bool | None = None
    handoff_mode: bool | None = None
    correlation_id: str | None = None
    deferred_calls: list[dict[str, Any]] | None = None
    deferred: bool | None = None
    handoff_config: dict[str, Any] | None = None
    agent_attributes: dict[str, float] | None = None
    model_attributes: dict[str, dict[str, float]] | dict[str, float] | None = None
    n: int | None = Field(default=None, ge=1, le=1)

    @field_validator("messages")
    @classmethod
    def _messages_have_roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, message in enumerate(messages):
            role = message.get("role")
            if role not in ROLES:
                raise ValueError(f"messages[{index}].role must be one of {sorted(ROLES)}")
            if role == "tool" and not isinstance(message.get("tool_call_id"), str):
                raise ValueError(f"messages[{index}] (role tool) needs a string tool_call_id")
        return messages

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for index, tool in enumerate(tools or []):
            function = tool.get("function")
            if tool.get("type") != "function" or not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ValueError(f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
        return tools

    @field_validator("agent_attributes")
    @classmethod
    def _unit_interval(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, number in (value or {}).items():
            if not 0.0 <= number <= 1.0:
                raise ValueError(f"agent_attributes[{key!r}] must be between 0 and 1")
        return value

    @field_validator("model_attributes")
    @classmethod
    def _nested_unit_interval(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, item in (value or {}).items():
            numbers = item.values() if isinstance(item, dict) else [item]
            if any(not 0.0 <= number <= 1.0 for number in numbers):
                raise ValueError(f"model_attributes[{key!r}] values must be between 0 and 1")
        return value

    @classmethod
    def parse(cls, data: Any) -> ChatCompletionRequest:
        """Validate a decoded JSON body; raise `RequestError` naming the field."""
        if not isinstance(data, dict):
            raise RequestError("request body must be a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [str(part) for part in first["loc"] if not str(part).startswith(("str", "list[", "dict[", "ModelChoice"))]
            param = ".".join(loc) or None
            message = first["msg"].removeprefix("Value error, ")
            raise RequestError(f"{param}: {message}" if param else message, param=param) from None

    @property
    def models(self) -> list[ModelChoice]:
        """The ordered model preference list (a one-element list behaves like the string)."""
        items = self.model if isinstance(self.model, list) else [self.model]
        if not items:
            raise RequestError("model: the list of models is empty", param="model")
        return [ModelChoice(model=item) if isinstance(item, str) else item for item in items]

    def passthrough(self, choice: ModelChoice) -> dict[str, Any]:
        """Provider parameters: the model's settings, overridden by explicit top-level fields."""
        explicit = {key: value for key, value in (self.model_extra or {}).items() if value is not None}
        defaults = {key: value for key, value in (choice.settings or {}).items() if value is not None}
        return defaults | explicit
