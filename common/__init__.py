"""Shared code of the PVT-GDLA MONAI bundles: networks, data, losses, inference and tooling.

Submodules load on first attribute access (``common.data``, ``common.training``, ...), so bundle configs
need only ``"$import common"``.
"""

import importlib

__version__ = "0.1.0"


def __getattr__(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
