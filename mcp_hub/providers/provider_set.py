"""`ProviderSet`: the configured model providers, by prefix, over the hub's pooled aiohttp session.

A model string is `"<prefix>/<model>"`; the prefix picks the provider and the rest,
which may itself contain slashes (`openrouter/meta-llama/llama-3.1-8b`), is the
provider's own model name. Built in: `openai` (`OPENAI_BASE_URL`, `OPENAI_API_KEY`) and
`anthropic` (`ANTHROPIC_BASE_URL`, `ANTHROPIC_API_KEY`); `Settings.providers` adds more
and may replace a built-in under the same prefix. A name without a prefix goes to
`Settings.default_provider` when that is set, and is a 400 otherwise, as is an unknown
prefix; both errors name the configured prefixes.
"""

from __future__ import annotations

import aiohttp
import anyio

from ..errors import ConfigError, ProviderError, RequestError
from ..settings import ProviderConfig, Settings
from .anthropic import AnthropicMessages
from .base import Provider
from .openai import OpenAICompatible


class ProviderSet:
    """Every configured provider, built once per hub; `resolve` maps a model string to one."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession) -> None:
        configs = {
            "openai": ProviderConfig(base_url=settings.openai_base_url, api_key=settings.openai_api_key,
                                     api_key_env="OPENAI_API_KEY"),
            "anthropic": ProviderConfig(base_url=settings.anthropic_base_url, api="anthropic",
                                        api_key=settings.anthropic_api_key, api_key_env="ANTHROPIC_API_KEY"),
        } | settings.providers
        self._configs = configs
        self._providers: dict[str, Provider] = {}
        for prefix, config in configs.items():
            kind = AnthropicMessages if config.api == "anthropic" else OpenAICompatible
            # A provider needs a key exactly when its configuration names where the key lives.
            self._providers[prefix] = kind(prefix, config.base_url, http, api_key=config.api_key,
                                           key_required=config.api_key_env is not None or config.api_key is not None,
                                           key_source=config.api_key_env or "a key", timeout=settings.provider_timeout)
        self.default = settings.default_provider
        if self.default is not None and self.default not in self._providers:
            raise ConfigError(f"default_provider {self.default!r} is not a configured provider ({self._known()})")

    @property
    def prefixes(self) -> list[str]:
        return sorted(self._providers)

    def _known(self) -> str:
        return ", ".join(self.prefixes)

    def get(self, prefix: str) -> Provider:
        """The provider under `prefix` (for `X-Provider`); a 400 naming the configured ones if none."""
        try:
            return self._providers[prefix]
        except KeyError:
            raise RequestError(f"unknown provider {prefix!r}; configured providers: {self._known()}",
                               code="unknown_provider", param="model") from None

    def resolve(self, model: str) -> tuple[Provider, str]:
        """`"prefix/model"` → (provider, the provider's model name)."""
        prefix, slash, name = model.partition("/")
        if not slash:
            if self.default is None:
                raise RequestError(f"model {model!r} names no provider; use '<provider>/<model>' with one of: "
                                   f"{self._known()}", code="unknown_provider", param="model")
            prefix, name = self.default, model
        if not name:
            raise RequestError(f"model {model!r} names no model after the provider prefix", code="invalid_model",
                               param="model")
        return self.get(prefix), name

    async def list_models(self) -> tuple[list[str], dict[str, ProviderError]]:
        """`prefix/name` of every model the providers offer (configured `models` lists win), and
        the providers that could not list theirs. A provider without a key is skipped silently."""
        found: dict[str, list[str]] = {}
        errors: dict[str, ProviderError] = {}

        async def one(prefix: str, provider: Provider) -> None:
            if self._configs[prefix].models:
                found[prefix] = list(self._configs[prefix].models)
                return
            try:
                found[prefix] = await provider.list_models()
            except ProviderError as exc:
                if exc.code != "provider_auth" or exc.upstream_status is not None:
                    errors[prefix] = exc

        async with anyio.create_task_group() as tg:
            for prefix, provider in self._providers.items():
                tg.start_soon(one, prefix, provider)
        names = [f"{prefix}/{name}" for prefix in self.prefixes for name in found.get(prefix, [])]
        return names, errors
