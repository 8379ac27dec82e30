"""Segmentation networks, built by name with :func:`create_network`; their facts from :func:`network_facts`."""

from . import cvt, emcad, mlla_unet, pvt_decoders, setr, transunet, xattnres  # noqa: F401  (each registers its networks)
from .registry import NetworkFacts, create_network, list_networks, network_facts, register_network

__all__ = ["NetworkFacts", "create_network", "list_networks", "network_facts", "register_network"]
