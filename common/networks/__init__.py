"""Segmentation networks, built by name with :func:`create_network`; their facts from :func:`network_facts`."""

from . import (  # noqa: F401  # noqa: F401
    cvt,
    emcad,
    mlla_unet,
    pvt_decoders,  # noqa: F401  (registers the PVT decoder family)
    setr,
    transunet,
    xattnres,
)
from .registry import NetworkFacts, create_network, list_networks, network_facts, register_network

__all__ = ["NetworkFacts", "create_network", "list_networks", "network_facts", "register_network"]
