"""One module per provider; each exposes ADAPTER implementing `providers.base.Adapter`."""

from __future__ import annotations

from functools import cache
from importlib import import_module

from providers.base import Adapter

PROVIDERS = ("cobo", "coincorner", "coinvoyage", "cryptomus")


@cache
def get_adapter(provider: str) -> Adapter:
    if provider not in PROVIDERS:
        raise KeyError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
    adapter: Adapter = import_module(f"providers.{provider}").ADAPTER
    return adapter
