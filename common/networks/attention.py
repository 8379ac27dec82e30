"""Kernelised (linear) attention: the linear-time contraction and its explicit N x N oracle.

Both functions take feature-mapped queries and keys (apply :func:`elu_feature_map` first) and compute

    out_n = sum_m v_m (k_m . q_n) / (sum_m k_m . q_n + eps)

over the token axis ``-2``. Leading dimensions broadcast, so one call serves several heads, differential
subspaces and passes at once (for example ``q, k [P, B, H, 2, N, d]`` with ``v [P, B, H, 1, N, e]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = ELU(x) + 1, a positive feature map, any shape.

    Computed as ``relu(x) + exp(min(x, 0))``, the same function (``x + 1`` above zero, ``exp(x)`` below), because
    PyTorch's CPU ELU kernel is several times slower than ReLU plus exp, in bfloat16 most of all.
    """
    return F.relu(x) + torch.exp(torch.clamp(x, max=0.0))


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Linear-time kernel attention: ``q [..., N, d]``, ``k [..., M, d]``, ``v [..., M, e]`` -> ``[..., N, e]``.

    Computes the key-value state ``k^T v`` (``[..., d, e]``) and key sum first, so cost and memory are
    O(N d e); never forms the N x M map. Accumulates in float32 whatever the input dtype (fp16 sums
    over thousands of tokens lose precision), and returns the input dtype.
    """
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    with torch.autocast(device_type=q.device.type, enabled=False):
        kv = k.transpose(-2, -1) @ v  # [..., d, e]
        k_sum = k.sum(dim=-2, keepdim=True)  # [..., 1, d]
        numerator = q @ kv  # [..., N, e]
        denominator = (q * k_sum).sum(dim=-1, keepdim=True)  # [..., N, 1]
        out = numerator.div_(denominator + eps)  # in place: one [..., N, e] buffer less at a time
    return out.to(dtype)
