"""Test-suite set-up: make tests/ helper modules importable; shared fixtures; one torch thread per xdist worker."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from label_fixtures import bundles, label_env  # noqa: E402, F401  (fixtures: MONAI Label's tests)
from pacs_fixtures import orthanc  # noqa: E402, F401  (fixture: one Orthanc for the whole session)
from segment_fixtures import mni  # noqa: E402, F401  (fixture: the MNI152 template)

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the 2 cores: no oversubscription
    torch.set_num_threads(1)
