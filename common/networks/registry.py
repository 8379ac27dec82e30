"""A registry of named networks and their facts: ``create_network(name, **options)``, ``network_facts(name)``.

Each entry is a variant: a network class with the options the variant fixes (``mixer="gdla"``), registered with
the facts the bundles and model cards need (encoder, weights file, deep-supervision heads, citations, the name of
the paper's table row). The class signature is the one home of every default; a variant's options are the class's
keyword arguments less the fixed ones, then those of the parts the class passes its ``**options`` to. A wrapper
variant (``host``) adds its own options after those of the registered network it wraps. An option a variant does
not have is refused with the network's name and its options, so an ablation run cannot silently build a different
model than the one asked for.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch.nn as nn

Factory = Callable[..., nn.Module]

_EXPLICIT = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class NetworkFacts:
    """A registered variant: how it is built and what is known about it besides.

    Attributes:
        name: the registered name.
        network: the class that builds it; its keyword defaults are the paper's model.
        fixed: options the variant sets and does not offer (``{"mixer": "gdla"}``).
        changed_defaults: the variant's defaults where they differ from the class's (``{"ffn": "mixffn"}``).
        options_to: the parts ``network`` passes its ``**options`` to; their keyword arguments with defaults are
            options too, after the class's own.
        host: the registered variant that ``network`` wraps (its first argument is the built host), or ``None``.
        encoder: the ImageNet-pretrained encoder family (``"pvt_v2"``), or ``None`` when the network starts from
            random weights.
        encoder_weights_file: the weights file the ``encoder_weights`` option expects (``"pvt_v2_b2.pth"``).
        deep_supervision: whether the network has auxiliary heads (``deep_supervision=True`` builds them).
        citations: the papers behind the network, in citing order.
        paper_model: the model's name in the published tables
            (:data:`common.evaluation.published.PUBLISHED_RESULTS`), if it has a row.
    """

    name: str
    network: Factory
    fixed: Mapping[str, Any] = field(default_factory=dict)
    changed_defaults: Mapping[str, Any] = field(default_factory=dict)
    options_to: tuple[Factory, ...] = ()
    host: NetworkFacts | None = None
    encoder: str | None = None
    encoder_weights_file: str | None = None
    deep_supervision: bool = False
    citations: tuple[str, ...] = ()
    paper_model: str | None = None

    @cached_property
    def signature(self) -> inspect.Signature:
        """The variant's options as keyword-only parameters with their defaults, returning ``network``."""
        parameters = dict(self.host.signature.parameters) if self.host is not None else {}
        own = list(inspect.signature(self.network).parameters.values())[1 if self.host is not None else 0 :]
        parameters.update((p.name, p) for p in own if p.kind in _EXPLICIT)
        for part in self.options_to:
            for p in inspect.signature(part).parameters.values():
                if p.kind in _EXPLICIT and p.default is not p.empty:
                    parameters.setdefault(p.name, p)
        for name in self.fixed:
            del parameters[name]
        for name, default in self.changed_defaults.items():
            parameters[name] = parameters[name].replace(default=default)
        keyword_only = [p.replace(kind=p.KEYWORD_ONLY) for p in parameters.values()]
        return inspect.Signature(keyword_only, return_annotation=self.network)

    @property
    def defaults(self) -> dict[str, Any]:
        """Options and their defaults: what ``create_network(name)`` builds."""
        return {p.name: p.default for p in self.signature.parameters.values()}

    @property
    def options(self) -> tuple[str, ...]:
        """Names of the options the variant accepts."""
        return tuple(self.signature.parameters)

    @cached_property
    def factory(self) -> Factory:
        """Build the variant from keyword options (its signature is :attr:`signature`)."""

        def build(**options: Any) -> nn.Module:
            bound = self.signature.bind(**options)
            bound.apply_defaults()
            arguments = {**bound.arguments, **self.fixed}
            if self.host is None:
                return self.network(**arguments)
            host_options = {key: arguments.pop(key) for key in self.host.options if key in arguments}
            return self.network(self.host.factory(**host_options), **arguments)

        build.__name__ = build.__qualname__ = self.name
        build.__signature__ = self.signature
        return build

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
    network: Factory,
    name: str | None = None,
    *,
    fixed: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    options_to: Sequence[Factory] | None = None,
    host: str | None = None,
    encoder: str | None = None,
    encoder_weights_file: str | None = None,
    deep_supervision: bool = False,
    citations: tuple[str, ...] = (),
    paper_model: str | None = None,
) -> NetworkFacts:
    """Register ``network`` (a class) with the options it fixes as ``name`` (default: its ``__name__``).

    ``defaults`` changes the class's defaults for this variant; ``host`` names the registered network that
    ``network`` wraps. A network taking ``**options`` names the parts they go to in ``options_to`` (``()``: the
    variant offers none), so that every option a variant accepts is one it uses; ``*args`` is refused.
    """
    name = network.__name__ if name is None else name
    if name in _REGISTRY:
        raise ValueError(f"network name {name!r} is registered twice")
    kinds = {p.kind for p in inspect.signature(network).parameters.values()}
    if inspect.Parameter.VAR_POSITIONAL in kinds or (inspect.Parameter.VAR_KEYWORD in kinds and options_to is None):
        raise TypeError(
            f"network factory {name!r} must list its options explicitly (no *args or **kwargs, unless options_to "
            "names where **kwargs go)"
        )
    facts = NetworkFacts(
        name,
        network,
        dict(fixed or {}),
        dict(defaults or {}),
        tuple(options_to or ()),
        None if host is None else network_facts(host),
        encoder,
        encoder_weights_file,
        deep_supervision,
        tuple(citations),
        paper_model,
    )
    try:
        signature = facts.signature
    except KeyError as error:
        raise TypeError(f"network {name!r} fixes or changes the default of {error}, which it does not have") from None
    if missing := [p.name for p in signature.parameters.values() if p.default is p.empty]:
        raise TypeError(f"network {name!r} leaves options without a default: {', '.join(missing)}")
    _REGISTRY[name] = facts
    return facts


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
    """Build the network registered as ``name``; ``options`` must be options of its variant."""
    facts = network_facts(name)
    facts.check_options(options)
    return facts.factory(**options)
