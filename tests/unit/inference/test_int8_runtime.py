"""The optional int8 path: ONNX export, dynamic int8 quantization of the linear layers, ORT session as the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from common.inference.engine import predict_volume
from common.inference.int8 import OrtNetwork, int8_network
from common.networks import create_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one torch thread for the whole module

SIZE = 64
FIT_STEPS, FIT_LR = 40, 2e-3


def discs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images ``[count, 1, SIZE, SIZE]`` of one bright disc each, and the disc masks ``[count, SIZE, SIZE]``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE]
    images, masks = [], []
    for _ in range(count):
        cy, cx, radius = rng.uniform(20, 44), rng.uniform(20, 44), rng.uniform(8, 16)
        mask = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
        images.append(0.2 + 0.6 * mask + rng.normal(0, 0.05, mask.shape))
        masks.append(mask)
    return torch.tensor(np.array(images), dtype=torch.float32)[:, None], torch.tensor(np.array(masks)).long()


def foreground_dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def fitted(one_torch_thread) -> torch.nn.Module:
    """A small PVT-GDLA fitted to the discs, so that its masks are confident (a random network's are ties)."""
    torch.manual_seed(0)
    network = create_network("pvt_gdla", num_classes=2, encoder="pvt_v2_b0", encoder_weights="random")
    images, masks = discs(16, seed=0)
    optimizer = torch.optim.AdamW(network.parameters(), lr=FIT_LR)
    network.train()
    for step in range(FIT_STEPS):
        index = torch.arange(4) + 4 * (step % 4)
        loss = sum(F.cross_entropy(out, masks[index]) for out in network(images[index]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network.eval()


@pytest.fixture(scope="module")
def exported(fitted, tmp_path_factory) -> tuple[OrtNetwork, Path]:
    """The fitted network as an int8 session for batches of 4, and the folder with its ONNX files."""
    folder = tmp_path_factory.mktemp("int8")
    return int8_network(fitted, batch_size=4, roi_size=(SIZE, SIZE), in_channels=1, workdir=folder, threads=1), folder


def test_int8_masks_agree_with_float32(fitted, exported):
    network, folder = exported
    images, truth = discs(6, seed=1)
    volume = images[:, 0].permute(1, 2, 0)[None].numpy()  # [1, SIZE, SIZE, 6]: a last batch of 2 is padded
    options = dict(roi_size=(SIZE, SIZE), batch_size=4, precision="float32")
    reference = predict_volume(fitted, volume, **options)[0]
    assert foreground_dice(reference == 1, truth.permute(1, 2, 0).numpy() == 1) > 0.9, "the network is not fitted"

    graph_ops = {node.op_type for node in onnx.load(folder / "model.int8.onnx").graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= graph_ops, f"nothing was quantized: {sorted(graph_ops)}"

    quantized = predict_volume(network, volume, **options)[0]
    assert foreground_dice(quantized == 1, reference == 1) >= 0.99
    with torch.no_grad():
        float_logits = fitted(images[:4])
    int8_logits = network(images[:4])
    assert not torch.equal(int8_logits, float_logits), "int8 logits equal float32 ones: not quantized"
    assert torch.corrcoef(torch.stack((int8_logits.flatten(), float_logits.flatten())))[0, 1] > 0.99


def test_the_session_refuses_a_batch_it_was_not_exported_for(exported):
    network, _ = exported
    with pytest.raises(ValueError, match=r"batches \[<= 4, 1, 64, 64\]"):
        network(torch.zeros(5, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"got \(2, 3, 64, 64\)"):
        network(torch.zeros(2, 3, SIZE, SIZE))
