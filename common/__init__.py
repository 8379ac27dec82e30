"""Shared code of the PVT-GDLA MONAI bundles: networks, data, losses, inference and tooling."""

__version__ = "0.1.0"
