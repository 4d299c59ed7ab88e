"""Model providers: one small `Protocol` (`base.py`), its implementations, and the configured set.

`OpenAICompatible` serves any OpenAI-compatible chat completions API, `AnthropicMessages`
the Anthropic Messages API; `ProviderSet` builds them from `Settings` and resolves
`"prefix/model"` strings. Every provider raises only `ProviderError`s, mapped in one
place (`upstream.Upstream.open`).
"""

from __future__ import annotations

from .anthropic import AnthropicMessages
from .base import ChatDelta, ChatRequest, ChatResult, Provider, ToolCallOut, Usage
from .openai import OpenAICompatible
from .provider_set import ProviderSet

__all__ = ["AnthropicMessages", "ChatDelta", "ChatRequest", "ChatResult", "OpenAICompatible", "Provider",
           "ProviderSet", "ToolCallOut", "Usage"]
