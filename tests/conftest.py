"""Test-suite set-up: make tests/ helper modules importable; one torch thread per xdist worker."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
# INTERIM (restructure in progress): test modules that import helpers from other test modules
sys.path[1:1] = [str(p) for p in sorted(Path(__file__).parent.glob("*/*")) if p.is_dir() and p.name != "__pycache__"]
sys.path.insert(1, str(Path(__file__).parent / "end_to_end"))

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the 2 cores: no oversubscription
    torch.set_num_threads(1)
