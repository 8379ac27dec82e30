"""Triton stays unloaded in a command-line process without a GPU (``common.environment.triton``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from repo_paths import REPO

ROOT = REPO

COMMAND_THEN_MONAI = """
import json, sys
from common.__main__ import main
from common.environment.triton import skip_triton_without_gpu
code = main(["data", "check", "--dataset", "synapse", "--root", sys.argv[1]])
import monai  # imports torchvision, whose ops import torch._dynamo, which imports Triton where installed
import torch
print(json.dumps({
    "code": code,
    "triton": repr(sys.modules.get("triton", "never imported")),
    "dynamo": "torch._dynamo" in sys.modules,
    "torch_sees_triton": torch.utils._triton.has_triton_package(),
    "skipped_again": skip_triton_without_gpu(),
}))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton is kept where a GPU can use it")
def test_the_command_line_leaves_triton_unloaded_through_monai_and_dynamo(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", COMMAND_THEN_MONAI, str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] != 0, "the missing dataset folder was accepted"
    assert report["triton"] == "None", f"Triton was {report['triton']} after the command and MONAI's import"
    assert report["dynamo"] and not report["torch_sees_triton"]
    assert report["skipped_again"] is False  # once per process
