"""Segmentation networks, built by name with :func:`create_network`."""

from . import pvt_decoders  # noqa: F401  (registers the PVT decoder family)
from . import kv_transformers, mlla_unet  # noqa: F401
from . import emcad, xattnres  # noqa: F401
from .registry import create_network, list_networks, register_network

__all__ = ["create_network", "list_networks", "register_network"]
