"""Test-suite set-up: make tests/ helper modules importable; one torch thread per xdist worker."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the 2 cores: no oversubscription
    torch.set_num_threads(1)
