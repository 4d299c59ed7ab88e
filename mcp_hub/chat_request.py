"""The `POST /v1/chat/completions` request body, validated once at the edge.

Every field of PROTOCOL.md section 2 is accepted and nullable. Fields the hub does
not consume (sampling, `response_format`, provider-specific extras, ...) are kept
and passed through to the provider; `model` may be a string, a DedalusModel
`{"model", "settings"}`, or a list of either (an ordered fallback).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, WithJsonSchema, field_validator

from .errors import RequestError
from .registry import SLUG_PATTERN

# Fields the hub itself consumes; everything else reaches the provider.
HUB_FIELDS = frozenset({
    "model", "messages", "tools", "stream", "stream_options", "mcp_servers", "credentials", "max_turns",
    "automatic_tool_execution", "handoff_mode", "correlation_id", "deferred_calls", "deferred", "handoff_config",
    "agent_attributes", "model_attributes", "n",
})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# JSON Schemas for the OpenAPI document: what the validators below accept, said precisely.
SLUG = SLUG_PATTERN
SLUG_OR_URL = rf"^(https?://\S+|{SLUG}(@\S+)?)$"
MESSAGE_SCHEMA = {
    "type": "object",
    "required": ["role"],
    "properties": {"role": {"enum": sorted(ROLES)}},
    "if": {"properties": {"role": {"const": "tool"}}},
    "then": {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string"}}},
}
TOOL_SCHEMA = {
    "type": "object",
    "required": ["type", "function"],
    "properties": {"type": {"const": "function"},
                   "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}},
}
SERVER_SCHEMA = {"anyOf": [
    {"type": "string", "pattern": SLUG_OR_URL},
    {"type": "object", "required": ["slug"],
     "properties": {"slug": {"type": "string", "pattern": rf"^{SLUG}(@\S+)?$"},
                    "name": {"type": ["string", "null"], "minLength": 1}, "version": {"type": ["string", "null"]}},
     # `org/name@version` inside `slug` only when `version` is not given separately.
     "if": {"required": ["version"], "properties": {"version": {"type": "string"}}},
     "then": {"properties": {"slug": {"pattern": rf"^{SLUG}$"}}}},
    {"type": "object", "required": ["url"], "properties": {
        "url": {"type": "string", "pattern": r"^https?://\S+$"}, "name": {"type": ["string", "null"], "minLength": 1}}},
]}
CREDENTIAL_SCHEMA = {
    "type": "object", "required": ["connection_name", "values"], "additionalProperties": False,
    "properties": {"connection_name": {"type": "string"},
                   "values": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                   "server": {"type": ["string", "null"], "description": "the slug or instance name this credential is for "
                              "(needed only when servers of different owners declare the same connection name)"}},
}
Message = Annotated[dict[str, Any], WithJsonSchema(MESSAGE_SCHEMA)]
FunctionTool = Annotated[dict[str, Any], WithJsonSchema(TOOL_SCHEMA)]
ServerItem = Annotated[str | dict[str, Any], WithJsonSchema(SERVER_SCHEMA)]
CredentialItem = Annotated[dict[str, Any], WithJsonSchema(CREDENTIAL_SCHEMA)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]


def _whole_number(value: Any) -> int:
    """JSON integers, including `2.0`, but not booleans or numeric strings."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("must be an integer")
    return int(value)


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


class DeferredCall(BaseModel):
    """An MCP call waiting on client output: a response's `deferred` item, echoed in `deferred_calls`."""

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: Any = None
    blocked_by: list[str] = Field(default_factory=list)
    dependencies: list[str] = Field(default_factory=list)
    venue: str = "server"
    server_name: str | None = None
    tool_name: str | None = None


class ModelChoice(BaseModel):
    """One model of the request: `provider/name` plus default settings for it."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    settings: dict[str, Any] | None = None


class ChatCompletionRequest(BaseModel):
    """The request body; unknown fields are kept (`model_extra`) for the provider."""

    model_config = ConfigDict(extra="allow")

    model: str | ModelChoice | list[str | ModelChoice]
    messages: list[Message] = Field(min_length=1)
    tools: list[FunctionTool] | None = None
    stream: StrictBool | None = None
    stream_options: dict[str, Any] | None = None
    # Any item is accepted: one that cannot be resolved is reported in `mcp_server_errors`.
    mcp_servers: str | dict[str, Any] | list[str | dict[str, Any]] | None = None
    credentials: CredentialItem | list[CredentialItem] | None = None
    max_turns: Annotated[WholeNumber, Field(ge=1), WithJsonSchema({"type": "integer", "minimum": 1})] | None = None
    automatic_tool_execution: StrictBool | None = None
    handoff_mode: StrictBool | None = None
    correlation_id: str | None = None
    deferred_calls: list[DeferredCall] | None = None
    deferred: StrictBool | None = None
    handoff_config: dict[str, Any] | None = None
    agent_attributes: dict[str, Fraction] | None = None
    model_attributes: dict[str, dict[str, Fraction]] | dict[str, Fraction] | None = None
    n: Annotated[WholeNumber, Field(ge=1, le=1), WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 1})] | None = None

    @field_validator("messages")
    @classmethod
    def _messages_have_roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, message in enumerate(messages):
            role = message.get("role")
            if not isinstance(role, str) or role not in ROLES:
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
        # A bare string is checked by the provider set (an unknown or empty name is a 400 there).
        return [ModelChoice.model_construct(model=item, settings=None) if isinstance(item, str) else item
                for item in items]

    def passthrough(self, choice: ModelChoice) -> dict[str, Any]:
        """Provider parameters: the model's settings, overridden by explicit top-level fields."""
        explicit = {key: value for key, value in (self.model_extra or {}).items() if value is not None}
        defaults = {key: value for key, value in (choice.settings or {}).items() if value is not None}
        return defaults | explicit
