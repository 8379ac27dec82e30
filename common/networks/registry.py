"""A registry of named network constructors: ``create_network(name, **kwargs)``."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_network(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name; used as a decorator."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"network name {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_networks() -> list[str]:
    """Names accepted by :func:`create_network`, sorted."""
    return sorted(_REGISTRY)


def create_network(name: str, **kwargs) -> nn.Module:
    """Build the network registered as ``name`` with constructor keyword arguments ``kwargs``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; expected one of {list_networks()}") from None
    return factory(**kwargs)
