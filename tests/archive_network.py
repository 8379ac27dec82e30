"""A bundle network for the segment-archive tests whose misbehaviour is set by the input data alone.

The tests' bundle copies name :class:`SignalledThreshold` as their ``network_def`` (a ``_target_``, as every bundle
config names its classes), and put tests/ on the Ray workers' ``PYTHONPATH``. It predicts label 1 where the
preprocessed image exceeds 0.5 (``IntensityThreshold`` of tests/segment_fixtures.py), except on a slice whose corners
are one of the :data:`SIGNALS` values after the bundle's min-max scaling: there it makes its worker process exit
(on the first attempt only, or every time), hang, or announce its pid in ``state_dir`` and hold the case for a
few seconds (so that the test can SIGKILL the worker, or remove its node). No product code knows of any of this.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

SIGNALS = {"exit_once": 0.2, "exit_always": 0.4, "hang": 0.6, "announce": 0.8}
HOLD_S = 4.0


class SignalledThreshold(nn.Module):
    """Logits ``[0.5 - x, x - 0.5]`` of ``x`` ``[B, C, H, W]``, with the faults above."""

    def __init__(self, state_dir: str):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # one weight, so models/model.pt is a real state dict
        self.state_dir = Path(state_dir)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corners = torch.stack([x[:, 0, :4, :4], x[:, 0, :4, -4:], x[:, 0, -4:, :4], x[:, 0, -4:, -4:]])
        for signal, value in SIGNALS.items():
            if torch.all((corners - value).abs() < 1e-3):
                self._act(signal)
        return torch.cat([0.5 - x[:, :1], x[:, :1] - 0.5], dim=1) * self.scale

    def _act(self, signal: str) -> None:
        if signal == "exit_once":
            marker = self.state_dir / "exited_once"
            if not marker.exists():
                marker.touch()
                os._exit(3)
        elif signal == "exit_always":
            os._exit(3)
        elif signal == "hang":
            time.sleep(3600)
        else:
            (self.state_dir / f"announce-{os.getpid()}").write_text(str(os.getpid()))
            time.sleep(HOLD_S)


def signalled_volume(signal: str | None, seed: int, shape: tuple[int, int, int] = (24, 24, 3)) -> np.ndarray:
    """A float32 volume ``[X, Y, Z]`` in [0, 1000] (both reached); with ``signal``, every slice is the signal's
    value away from a random centre, so the network sees it in every corner after min-max scaling and resizing."""
    rng = np.random.default_rng(seed)
    volume = rng.uniform(0, 1000, shape).astype(np.float32)
    if signal is not None:
        centre = volume[8:-8, 8:-8].copy()
        volume[:] = 1000 * SIGNALS[signal]
        volume[8:-8, 8:-8] = centre
    volume.flat[0], volume.flat[-1] = 0.0, 1000.0
    if signal is not None:
        volume[8, 8, 0], volume[9, 9, 0] = 0.0, 1000.0  # the extremes inside the centre, corners untouched
        volume.flat[0] = volume.flat[-1] = 1000 * SIGNALS[signal]
    return volume
