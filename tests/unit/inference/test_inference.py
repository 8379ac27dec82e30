"""Slice-wise inference engine: shapes, orientation, batching, resizing, sliding windows, sigmoid mode, Inferer."""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from scipy.ndimage import zoom

from common.inference import lanes, precision
from common.inference.engine import predict_volume
from common.inference.inferer import SliceInferer2D
from common.inference.lanes import concurrent_lanes, slices_per_pass
from common.inference.options import SliceInferenceOptions
from common.inference.precision import autocast_dtype
from common.io.writers import write_nifti
from common.transforms.resize import nearest_indices, resize_spline

CENTRES = (0.0, 0.5, 1.0)


class IntensityBands(nn.Module):
    """Pixel-wise logits ``-(x - c_k)^2``: the label of a pixel is the index of the nearest centre (0, 0.5, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.tensor(CENTRES, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return -((x[:, :1] - centres) ** 2)


class TopHalf(nn.Module):
    """Label 1 on the top half of the network's rows, 0 elsewhere, whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x.shape[-2], dtype=x.dtype).view(1, 1, -1, 1).expand(x.shape[0], 1, -1, x.shape[-1])
        top = (rows < x.shape[-2] / 2).to(x.dtype)
        return torch.cat([1 - top, top], dim=1)


class DeepSupervised(IntensityBands):
    """Returns ``[coarse, final]`` as a deep-supervision network in training does; only the last counts."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        final = super().forward(x)
        return [-final, final]


def bands(image: np.ndarray) -> np.ndarray:
    """Reference labels of :class:`IntensityBands` for an image."""
    return np.abs(image[..., None] - np.asarray(CENTRES)).argmin(-1).astype(np.uint8)


def smooth_volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A float32 volume ``[1, *shape]`` in [0, 1] with blobs that change from slice to slice."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, size=(4, 4, shape[-1]))
    volume = zoom(coarse, (shape[0] / 4, shape[1] / 4, 1), order=1)
    return volume[None].astype(np.float32)


def test_output_shape_dtype_and_probabilities():
    volume = smooth_volume((40, 30, 7))
    labels = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32))
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}
    probabilities = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32), output="probabilities")
    assert probabilities.shape == (3, 40, 30, 7) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    logits = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32), output="logits")
    assert logits.shape == (3, 40, 30, 7)


def test_equals_the_authors_per_slice_protocol():
    """zoom order 3 to the network size, argmax, zoom order 0 back: the engine gives the same labels."""
    volume = smooth_volume((50, 37, 5), seed=1)
    expected = np.stack(
        [
            zoom(bands(zoom(volume[0, :, :, z], (32 / 50, 32 / 37), order=3)), (50 / 32, 37 / 32), order=0)
            for z in range(volume.shape[-1])
        ],
        axis=-1,
    )
    labels = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32))
    np.testing.assert_array_equal(labels[0], expected)


def test_spline_resize_and_nearest_indices_match_scipy():
    image = np.random.default_rng(2).normal(size=(45, 61))
    resized = resize_spline(torch.from_numpy(image)[None, None], (24, 32))[0, 0].numpy()
    np.testing.assert_allclose(resized, zoom(image, (24 / 45, 32 / 61), order=3), atol=1e-10)
    ramp = np.arange(1, 33, dtype=float)
    for size in (13, 50, 99):
        scipy_indices = zoom(ramp, size / 32, order=0).astype(int) - 1
        assert np.array_equal(nearest_indices(32, size, True, torch.device("cpu")).numpy(), scipy_indices)


def test_left_stays_left():
    volume = np.zeros((1, 48, 40, 3), np.float32)
    volume[0, 4:16, 6:14, :] = 1.0  # bright block near the low X, low Y corner
    labels = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32))[0]
    xs, ys, _ = np.nonzero(labels == 2)
    assert xs.size and xs.max() < 24 and ys.max() < 20
    top = predict_volume(TopHalf().eval(), volume, roi_size=(32, 32))[0]
    assert (top[:24] == 1).all() and (top[24:] == 0).all()  # network rows are the X axis


def test_batch_size_does_not_change_labels():
    volume = smooth_volume((40, 30, 7), seed=3)
    one = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32), batch_size=1)
    four = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32), batch_size=4)
    np.testing.assert_array_equal(one, four)
    assert len({one[..., z].tobytes() for z in range(7)}) == 7  # slices differ, so a mix-up would show


@pytest.mark.parametrize("interpolation", ["spline", "bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(60, 45), (20, 13)])
def test_resize_round_trip_of_non_square_slices(interpolation: str, size: tuple[int, int]):
    """Blocks of constant label survive down/up-sampling; only pixels next to a block edge may change."""
    height, width = size
    truth = np.zeros((height, width, 2), np.uint8)
    truth[height // 6 : height // 2, width // 5 : width // 2] = 2
    truth[height // 2 :, width // 2 :] = 1
    volume = (truth.astype(np.float32) / 2)[None]
    labels = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32), interpolation=interpolation)[0]
    edges = np.zeros_like(truth, dtype=bool)
    edges[:-1] |= truth[1:] != truth[:-1]
    edges[1:] |= truth[1:] != truth[:-1]
    edges[:, :-1] |= truth[:, 1:] != truth[:, :-1]
    edges[:, 1:] |= truth[:, 1:] != truth[:, :-1]
    near_edge = np.zeros_like(edges)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            near_edge |= np.roll(edges, (dx, dy), axis=(0, 1))
    np.testing.assert_array_equal(labels[~near_edge], truth[~near_edge])
    assert (labels == truth).mean() > 0.9


def test_sliding_window_predicts_at_native_resolution():
    volume = smooth_volume((64, 48, 3), seed=4)
    labels = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32), sliding_window=True, overlap=0.5)
    np.testing.assert_array_equal(labels[0], bands(volume[0]))
    small = volume[:, :20, :13]  # smaller than the window: padded, then cropped back
    np.testing.assert_array_equal(
        predict_volume(IntensityBands().eval(), small, roi_size=(32, 32), sliding_window=True)[0], bands(small[0])
    )


def test_sigmoid_multilabel_channels_may_overlap():
    class TwoThresholds(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x - 0.3, 0.7 - x], dim=1) * 20

    volume = smooth_volume((32, 32, 4), seed=5)
    labels = predict_volume(TwoThresholds().eval(), volume, roi_size=(32, 32), activation="sigmoid")
    assert labels.shape == (2, 32, 32, 4) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[0], volume[0] > 0.3)
    np.testing.assert_array_equal(labels[1], volume[0] < 0.7)
    assert (labels[0] & labels[1]).any()
    strict = predict_volume(TwoThresholds().eval(), volume, roi_size=(32, 32), activation="sigmoid", threshold=0.99)
    assert strict.sum() < labels.sum()


def test_inferer_equals_function_and_keeps_metadata():
    volumes = np.concatenate([smooth_volume((40, 30, 5), seed=s) for s in (6, 7)])[:, None]
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    inputs = MetaTensor(torch.from_numpy(volumes), affine=affine)
    config = {"inferer": {"_target_": "common.inference.SliceInferer2D", "roi_size": [32, 32], "sw_batch_size": 2}}
    inferer = ConfigParser(config).get_parsed_content("inferer")  # as a bundle's inference.json builds it
    assert isinstance(inferer, SliceInferer2D) and inferer.options.roi_size == (32, 32)
    result = inferer(inputs, IntensityBands().eval())
    assert isinstance(result, MetaTensor) and result.shape == (2, 1, 40, 30, 5) and result.dtype == torch.uint8
    assert torch.equal(result.affine, affine)
    for index in range(2):
        expected = predict_volume(IntensityBands().eval(), volumes[index], roi_size=(32, 32))
        np.testing.assert_array_equal(result[index].numpy(), expected)
    images = torch.from_numpy(volumes[:, :, :, :, 0])  # [B, C, H, W] 2-D batch
    flat = inferer(images, DeepSupervised().eval())
    assert flat.shape == (2, 1, 40, 30)
    for index in range(2):
        np.testing.assert_array_equal(
            flat[index].numpy(), predict_volume(IntensityBands().eval(), volumes[index, :, :, :, 0], roi_size=(32, 32))
        )


def test_tensor_and_flipped_inputs():
    volume = smooth_volume((40, 30, 3), seed=8)
    expected = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32))
    as_tensor = predict_volume(IntensityBands().eval(), torch.from_numpy(volume), roi_size=(32, 32))
    assert isinstance(as_tensor, torch.Tensor) and np.array_equal(as_tensor.numpy(), expected)
    flipped = predict_volume(IntensityBands().eval(), volume[:, ::-1], roi_size=(32, 32))
    np.testing.assert_array_equal(flipped[:, ::-1], expected)


def test_channels_last_gives_the_same_labels():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    volume = smooth_volume((40, 30, 4), seed=9)
    expected = predict_volume(network, volume, roi_size=(32, 32), channels_last=False, precision="float32")
    assert not network[2].weight.is_contiguous(memory_format=torch.channels_last)
    result = predict_volume(network, volume, roi_size=(32, 32), channels_last=True, precision="float32")
    assert network[2].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(result, expected)


class DtypeRecorder(nn.Module):
    """A small conv network that records the dtype of its convolution's output on every call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.dtypes.append(out.dtype)
        return out


def test_precision_choices(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cuda) is torch.float16 and autocast_dtype("bfloat16", cuda) is torch.bfloat16
    assert autocast_dtype("float32", cuda) is None and autocast_dtype("float32", cpu) is None
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)
    assert autocast_dtype("auto", cpu) is torch.bfloat16 and autocast_dtype("bfloat16", cpu) is torch.bfloat16
    with pytest.warns(UserWarning, match="precision='float16' has no fast path on this cpu device; running float32"):
        assert autocast_dtype("float16", cpu) is None
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    assert autocast_dtype("auto", cpu) is None
    with pytest.warns(UserWarning, match="precision='bfloat16' has no fast path"):
        assert autocast_dtype("bfloat16", cpu) is None
    with pytest.raises(ValueError, match="precision must be one of"):
        SliceInferenceOptions(precision="half")


def test_bfloat16_autocast_on_cpu_keeps_the_labels(monkeypatch):
    """With native bfloat16 (forced here, emulated if absent) 'auto' runs the network in bfloat16."""
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)
    volume = smooth_volume((40, 30, 6), seed=4)
    network = DtypeRecorder().eval()
    exact = predict_volume(network, volume, roi_size=(32, 32), precision="float32")
    assert set(network.dtypes) == {torch.float32}
    network.dtypes.clear()
    fast = predict_volume(network, volume, roi_size=(32, 32), output="probabilities")
    assert set(network.dtypes) == {torch.bfloat16} and fast.dtype == np.float32
    assert np.mean(fast.argmax(0) == exact[0]) > 0.98


class ThreadRecorder(IntensityBands):
    """:class:`IntensityBands` that notes the thread and torch's thread count of every call.

    With ``meet=n`` the first ``n`` calls wait for each other (a barrier, 30 s at most): they return only if ``n``
    calls are in flight at once, so the test does not depend on how fast a pool's threads pick up work.
    """

    def __init__(self, fail_on_call: int | None = None, meet: int = 0):
        super().__init__()
        self.calls: list[tuple[str, int]] = []
        self.fail_on_call = fail_on_call
        self.barrier = threading.Barrier(meet, timeout=30) if meet else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((threading.current_thread().name, torch.get_num_threads()))
        if len(self.calls) == self.fail_on_call:
            raise RuntimeError("broken batch")
        if self.barrier is not None and len(self.calls) <= self.barrier.parties:
            self.barrier.wait()  # raises BrokenBarrierError if fewer calls run at once
        return super().forward(x)


def test_concurrent_batches_share_the_threads_and_give_the_same_labels():
    volume = smooth_volume((40, 30, 9), seed=6)
    expected = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32), batch_size=1, concurrent_batches=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        network = ThreadRecorder(meet=2).eval()
        labels = predict_volume(network, volume, roi_size=(32, 32), batch_size=2, concurrent_batches=2)
        assert torch.get_num_threads() == 2
        np.testing.assert_array_equal(labels, expected)
        workers = {name for name, threads in network.calls if threads == 1}
        assert len(network.calls) == 9 and len(workers) == 2  # two batches at once, each lane on one thread
        assert threading.main_thread().name not in workers
        with pytest.raises(RuntimeError, match="broken batch"):
            predict_volume(ThreadRecorder(fail_on_call=5).eval(), volume, roi_size=(32, 32), batch_size=2)
        assert torch.get_num_threads() == 2
        auto, cpu = SliceInferenceOptions(), torch.device("cpu")
        assert concurrent_lanes(auto, cpu) == 2 and concurrent_lanes(auto, torch.device("cuda")) == 1
        assert concurrent_lanes(SliceInferenceOptions(batch_size=1), cpu) == 1  # no lane without a slice
        for threads in (1, 4):
            torch.set_num_threads(threads)
            assert concurrent_lanes(auto, cpu) == 1  # one lane on the calling thread with all threads
        assert concurrent_lanes(SliceInferenceOptions(concurrent_batches=3), cpu) == 3
    finally:
        torch.set_num_threads(previous)
    with pytest.raises(ValueError, match="concurrent_batches must be at least 1"):
        SliceInferenceOptions(concurrent_batches=0)


class InFlightRecorder(IntensityBands):
    """:class:`IntensityBands` that notes each call's batch and the most slices inside calls at once."""

    def __init__(self):
        super().__init__()
        self.lock, self.inside, self.most_inside, self.batches = threading.Lock(), 0, 0, []
        self.both_lanes_inside = threading.Barrier(2, timeout=10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.inside += x.shape[0]
            self.most_inside = max(self.most_inside, self.inside)
            self.batches.append(x.shape[0])
        if len(self.batches) <= 2:
            self.both_lanes_inside.wait()  # the first two passes meet inside, so both lanes are seen at once
        output = super().forward(x)
        with self.lock:
            self.inside -= x.shape[0]
        return output


@pytest.mark.parametrize(("batch_size", "per_pass"), [(4, 2), (5, 2), (2, 1)])
def test_two_lanes_share_the_batch_size_so_it_bounds_the_slices_in_flight(batch_size, per_pass):
    volume = smooth_volume((40, 30, 12), seed=8)
    expected = predict_volume(IntensityBands().eval(), volume, roi_size=(32, 32), batch_size=1)
    cpu = torch.device("cpu")
    options = SliceInferenceOptions(roi_size=(32, 32), batch_size=batch_size, concurrent_batches=2)
    assert slices_per_pass(options, cpu) == per_pass
    assert slices_per_pass(options, torch.device("cuda")) == batch_size  # one pass of the whole batch on a GPU
    network = InFlightRecorder().eval()
    np.testing.assert_array_equal(predict_volume(network, volume, options), expected)
    assert set(network.batches) == {per_pass} and sum(network.batches) == 12
    assert network.most_inside == 2 * per_pass <= batch_size


def test_the_inferer_tunes_host_memory_only_for_a_cpu_and_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(lanes, "reuse_freed_host_memory", lambda: calls.append("tuned") or True)
    assert SliceInferer2D().prepare_host_memory("cpu") and calls == ["tuned"]
    assert SliceInferer2D(device="cpu").prepare_host_memory() and len(calls) == 2
    assert not SliceInferer2D().prepare_host_memory(torch.device("cuda"))
    assert not SliceInferer2D(reuse_host_memory=False).prepare_host_memory("cpu")
    assert len(calls) == 2


def test_clear_refusals():
    network = IntensityBands()
    with pytest.raises(ValueError, match="training mode"):
        predict_volume(network.train(), smooth_volume((8, 8, 1)))
    with pytest.raises(ValueError, match=r"expected an image \[C, H, W\] or a volume"):
        predict_volume(network.eval(), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="expected logits"):
        predict_volume(lambda x: x[:, 0], smooth_volume((8, 8, 1)), roi_size=(8, 8))
    with pytest.raises(ValueError, match="interpolation must be one of"):
        SliceInferenceOptions(interpolation="cubic")
    with pytest.raises(ValueError, match="needs align_corners=True"):
        SliceInferenceOptions(align_corners=False)


def test_real_mri_volume_to_nifti(tmp_path):
    """The MNI152 T1 template (nilearn, 2 mm) through the engine; the NIfTI keeps its shape and affine."""
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    data = template.get_fdata(dtype=np.float32)
    volume = (data / data.max())[None]
    labels = predict_volume(IntensityBands().eval(), volume, roi_size=(64, 64), batch_size=16)
    assert labels.shape == volume.shape
    brain = data > 0.3 * data.max()
    assert labels[0][brain].mean() > labels[0][~brain].mean()  # brighter tissue gets higher bands
    path = write_nifti(labels[0], template.affine, tmp_path / "mni_labels.nii.gz")
    written = nib.load(path)
    assert written.shape == template.shape
    np.testing.assert_allclose(written.affine, template.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels[0])
