"""Test-suite set-up: make tests/ helper modules importable; shared fixtures; one torch thread per xdist worker;
the root logger as each test found it."""

import logging
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from label_fixtures import bundles, label_env  # noqa: E402, F401  (fixtures: MONAI Label's tests)
from pacs_fixtures import orthanc  # noqa: E402, F401  (fixture: one Orthanc for the whole session)
from segment_fixtures import mni  # noqa: E402, F401  (fixture: the MNI152 template)

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the 2 cores: no oversubscription
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread from the first test that asks until the module's end, outside xdist too: on a CPU the engine
    splits a batch into as many lanes as torch has threads (tests that count the slices of each read need one lane),
    and on a loaded two-core machine two threads spin (fitting a network took ten times the CPU time)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def root_logging_as_before():
    """Undo what a test did to the root logger: a bundle run in process applies the bundle's logging.conf, whose
    handler writes to the stream pytest captured for that test, closed once it ends; a later test's log records
    would go there and print "--- Logging error ---" to its stderr."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(level)
