"""Where the repository keeps its bundle folders (a module of its own, so that light processes such as the MONAI
Label server can read it without the renderer's imports)."""

from __future__ import annotations

from pathlib import Path

#: The repository's ``bundles/`` folder: the default of ``bundles render/check``, ``reproduce`` and MONAI Label's
#: ``bundles`` conf key.
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "bundles"
