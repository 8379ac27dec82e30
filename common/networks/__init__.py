"""Segmentation networks, built by name with :func:`create_network`; their facts from :func:`network_facts`."""

from . import pvt_decoders  # noqa: F401  (registers the PVT decoder family)
from . import kv_transformers, mlla_unet  # noqa: F401
from . import emcad, xattnres  # noqa: F401
from .registry import NetworkFacts, create_network, list_networks, network_facts, register_network

__all__ = ["NetworkFacts", "create_network", "list_networks", "network_facts", "register_network"]
