"""Segmentation networks, built by name with :func:`create_network`."""

from . import pvt_decoders  # noqa: F401  (registers the PVT decoder family)
from .registry import create_network, list_networks, register_network

__all__ = ["create_network", "list_networks", "register_network"]
