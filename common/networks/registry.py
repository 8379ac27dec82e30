"""A registry of named networks and their facts: ``create_network(name, **options)``, ``network_facts(name)``.

Each entry is a factory with explicit keyword arguments whose defaults build the paper's model, registered with
the facts the bundles and model cards need (encoder, weights file, deep-supervision heads, citations, the name of
the paper's table row). An option a network does not have is refused with the network's name and its options, so
an ablation run cannot silently build a different model than the one asked for.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class NetworkFacts:
    """What is known about a registered network besides how to build it.

    Attributes:
        name: the registered name.
        factory: the constructor; its keyword defaults are the paper's model.
        encoder: the ImageNet-pretrained encoder family (``"pvt_v2"``), or ``None`` when the network starts from
            random weights.
        encoder_weights_file: the weights file the ``encoder_weights`` option expects (``"pvt_v2_b2.pth"``).
        deep_supervision: whether the network has auxiliary heads (``deep_supervision=True`` builds them).
        citations: the papers behind the network, in citing order.
        paper_model: the model's name in the published tables
            (:data:`common.evaluation.published.PUBLISHED_RESULTS`), if it has a row.
    """

    name: str
    factory: Factory
    encoder: str | None = None
    encoder_weights_file: str | None = None
    deep_supervision: bool = False
    citations: tuple[str, ...] = ()
    paper_model: str | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """Keyword arguments and their defaults: what ``create_network(name)`` builds."""
        return {
            p.name: p.default
            for p in inspect.signature(self.factory).parameters.values()
            if p.kind == p.KEYWORD_ONLY or p.kind == p.POSITIONAL_OR_KEYWORD
        }

    @property
    def options(self) -> tuple[str, ...]:
        """Names of the keyword arguments the factory accepts."""
        return tuple(self.defaults)

    @property
    def summary(self) -> str:
        """First line of the factory's docstring."""
        return (self.factory.__doc__ or "").strip().splitlines()[0] if self.factory.__doc__ else ""

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse an option the network does not have, naming the network and listing the options it has."""
        unknown = [key for key in options if key not in self.options]
        if not unknown:
            return
        hints = [
            f"{key!r} (did you mean {close[0]!r}?)"
            if (close := difflib.get_close_matches(key, self.options, 1))
            else repr(key)
            for key in unknown
        ]
        raise ValueError(
            f"network {self.name!r} has no option {', '.join(hints)}; its options are: {', '.join(self.options)}"
        )


_REGISTRY: dict[str, NetworkFacts] = {}


def register_network(
    fn: Factory | None = None,
    *,
    encoder: str | None = None,
    encoder_weights_file: str | None = None,
    deep_supervision: bool = False,
    citations: tuple[str, ...] = (),
    paper_model: str | None = None,
) -> Factory | Callable[[Factory], Factory]:
    """Register a factory under its function name with its facts; a decorator, bare or with facts.

    The factory must take explicit keyword arguments (no ``**kwargs``), so that every option it accepts is one it
    uses.
    """

    def register(factory: Factory) -> Factory:
        name = factory.__name__
        if name in _REGISTRY:
            raise ValueError(f"network name {name!r} is registered twice")
        kinds = {p.kind for p in inspect.signature(factory).parameters.values()}
        if kinds & {inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL}:
            raise TypeError(f"network factory {name!r} must list its options explicitly (no *args or **kwargs)")
        _REGISTRY[name] = NetworkFacts(
            name, factory, encoder, encoder_weights_file, deep_supervision, tuple(citations), paper_model
        )
        return factory

    return register(fn) if fn is not None else register


def list_networks() -> list[str]:
    """Names accepted by :func:`create_network`, sorted."""
    return sorted(_REGISTRY)


def network_facts(name: str) -> NetworkFacts:
    """The facts registered for ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; expected one of {list_networks()}") from None


def create_network(name: str, **options) -> nn.Module:
    """Build the network registered as ``name``; ``options`` must be keyword arguments of its factory."""
    facts = network_facts(name)
    facts.check_options(options)
    return facts.factory(**options)
