"""Pieces shared by the segmentation networks: the input check, the deep-supervision refusal, the forward pair.

Example::

    >>> import torch
    >>> check_image_batch(torch.zeros(2, 1, 64, 96), in_channels=1)
    >>> check_image_batch(torch.zeros(2, 1, 64, 90), in_channels=1)
    Traceback (most recent call last):
    ...
    ValueError: expected input [B, 1, H, W] with H and W divisible by 32, got (2, 1, 64, 90)
"""

from __future__ import annotations

import torch
import torch.nn as nn


def check_image_batch(x: torch.Tensor, in_channels: int, multiple: int = 32) -> None:
    """Refuse anything but ``[B, in_channels, H, W]`` with H and W divisible by ``multiple`` (the network's stride)."""
    if x.ndim != 4 or x.shape[1] != in_channels or x.shape[-2] % multiple or x.shape[-1] % multiple:
        raise ValueError(
            f"expected input [B, {in_channels}, H, W] with H and W divisible by {multiple}, got {tuple(x.shape)}"
        )


def refuse_deep_supervision(name: str, deep_supervision: bool) -> None:
    """For networks with one output: ``deep_supervision`` exists only so that every network has the option."""
    if deep_supervision:
        raise ValueError(f"{name} has no deep supervision heads; build it with deep_supervision=False")


class DeepSupervisionForward(nn.Module):
    """``forward`` and ``forward_all`` of a network with optional auxiliary heads.

    The subclass sets ``self.deep_supervision`` and defines ``_forward(x, auxiliary)``, which returns the output
    maps coarse to fine, ``[out4, out3, out2, out1]`` with ``auxiliary`` and ``[out1]`` without.
    """

    deep_supervision: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``[B, in, H, W]`` -> ``[B, K, H, W]``; in training with deep supervision ``[out4, out3, out2, out1]``."""
        return self.forward_all(x) if self.training and self.deep_supervision else self._forward(x, False)[-1]

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All outputs, coarse to fine: ``[out4, out3, out2, out1]`` (``[out1]`` without deep supervision)."""
        return self._forward(x, self.deep_supervision)

    def _forward(self, x: torch.Tensor, auxiliary: bool) -> list[torch.Tensor]:
        raise NotImplementedError
