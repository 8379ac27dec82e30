"""Optional int8 CPU inference: the network exported to ONNX, its matrix-product weights quantized to int8.

Opt-in only; the engine's default stays float32/bfloat16 PyTorch. :func:`int8_network` exports a 2-D network at
a fixed batch size and input size (``torch.onnx.export``), quantizes the weights of every ``MatMul`` and ``Gemm``
node to int8 with ONNX Runtime's dynamic quantization (activations are quantized per batch at run time; the
convolutions stay float32) and returns an :class:`OrtNetwork`: a callable mapping float32 ``[b, C, h, w]``
batches (``b`` up to the export batch size) to logits ``[b, K, h, w]``, which :func:`common.inference.engine.predict_volume`
and :func:`common.inference.engine.stream_slices` take in place of the PyTorch network::

    options = SliceInferenceOptions(batch_size=4, roi_size=(224, 224))
    per_pass = slices_per_pass(options, torch.device("cpu"))  # 2 on two threads: two passes of 2 at once
    network = int8_network(torch_network, batch_size=per_pass, roi_size=(224, 224), in_channels=1)
    labels = predict_volume(network, volume, options)

Quantization changes the logits: check the masks against float32 on your data before relying on it
(``python benchmarks/volume_inference.py --int8`` reports the Dice against the float32 engine).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .engine import FinalOutput
from .lanes import concurrent_lanes
from .options import SliceInferenceOptions

#: the node types whose weights are quantized: every linear layer of the transformer blocks
QUANTIZED_OPS = ("MatMul", "Gemm")


def export_onnx(network: nn.Module, path: str | Path, batch_size: int, roi_size: tuple[int, int], in_channels: int):
    """Write ``network`` (eval mode) as ONNX for float32 input ``[batch_size, in_channels, *roi_size]`` to ``path``."""
    if network.training:
        raise ValueError("the network is in training mode; call network.eval() before export")
    example = torch.zeros(batch_size, in_channels, *roi_size)
    with torch.no_grad():
        program = torch.onnx.export(FinalOutput(network).eval(), (example,), dynamo=True, verbose=False)
    program.save(str(path))
    return Path(path)


def quantize_linear_weights(float_path: str | Path, int8_path: str | Path) -> Path:
    """ONNX Runtime dynamic quantization of ``float_path``: ``MatMul``/``Gemm`` weights to signed int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(float_path), str(int8_path), op_types_to_quantize=list(QUANTIZED_OPS), weight_type=QuantType.QInt8
    )
    return Path(int8_path)


class OrtNetwork:
    """An ONNX Runtime session as a network: float32 ``[b, C, h, w]`` -> logits ``[b, K, h, w]`` (CPU tensors).

    The model has a fixed batch size; smaller batches (a volume's last) are padded with zeros and cut back.

    Args:
        path: the ONNX model.
        threads: ONNX Runtime intra-op threads per call (the engine may run several calls at once).
    """

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime

        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), session_options, providers=["CPUExecutionProvider"])
        (model_input,) = self.session.get_inputs()
        self.input_name, self.input_shape = model_input.name, tuple(model_input.shape)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        size = batch.shape[0]
        if batch.ndim != 4 or size > self.input_shape[0] or tuple(batch.shape[1:]) != self.input_shape[1:]:
            raise ValueError(
                f"the ONNX model takes batches [<= {self.input_shape[0]}, {', '.join(map(str, self.input_shape[1:]))}]"
                f", got {tuple(batch.shape)}"
            )
        array = np.zeros(self.input_shape, np.float32)
        array[:size] = batch.detach().float().cpu().numpy()
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits[:size])


def int8_network(
    network: nn.Module,
    batch_size: int,
    roi_size: tuple[int, int],
    in_channels: int,
    workdir: str | Path | None = None,
    threads: int | None = None,
) -> OrtNetwork:
    """``network`` exported and int8-quantized (:func:`export_onnx`, :func:`quantize_linear_weights`) as a session.

    ``batch_size``: slices of one forward pass, the engine's :func:`common.inference.lanes.slices_per_pass` (smaller
    batches are padded to it). ``workdir`` keeps ``model.onnx`` and ``model.int8.onnx`` (default: a temporary
    folder, removed once the session is built). ``threads``: ONNX Runtime threads per call; default torch's thread
    count shared among the batches the engine runs at once on a CPU (:func:`common.inference.lanes.concurrent_lanes`).
    """
    if threads is None:
        lanes = concurrent_lanes(SliceInferenceOptions(), torch.device("cpu"))
        threads = max(1, torch.get_num_threads() // lanes)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(workdir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        float_path = export_onnx(network, folder / "model.onnx", batch_size, tuple(roi_size), in_channels)
        return OrtNetwork(quantize_linear_weights(float_path, folder / "model.int8.onnx"), threads)
