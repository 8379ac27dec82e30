"""Package faces that import a name's module only when the name is first used (PEP 562).

A concept package (``common.transforms``, ``common.inference``, ...) exports the names bundle configs use as
``_target_``; importing one light module of the package (``common.inference.host_allocator``) must not import
every heavy one (MONAI, ignite) behind those names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that load ``exports[name]`` (a submodule name) on first use."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
