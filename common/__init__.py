"""Shared code of the PVT-GDLA MONAI bundles: networks, data, losses, inference and tooling.

Submodules load on first attribute access (``common.data``, ``common.training.recipe``, ...), so bundle configs
need only ``"$import common"``.
"""

import importlib

from .environment.quiet import quiet_third_party

__version__ = "0.1.0"

quiet_third_party()  # the known third-party noise, silenced message by message (common.environment.quiet) for every entry point


def __getattr__(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
