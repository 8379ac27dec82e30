"""The volume-inference benchmark runs end to end and prints its table."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest
from repo_paths import REPO

ROOT = REPO


@pytest.mark.slow
def test_volume_inference_benchmark_prints_its_table():
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "volume_inference.py"),
        "--slices",
        "3",
        "--size",
        "96",
        "--fit-steps",
        "1",
        "--memory-slices",
        "1",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    header = next((line for line in lines if line.startswith("method ")), None)
    assert header is not None, f"no table header in:\n{result.stdout}"
    columns = re.split(r"\s{2,}", header.strip())  # column names hold single spaces, columns at least two
    rows = {}
    for name in ("naive", "engine float32", "engine auto"):
        line = next((line for line in lines if line.startswith(name + " ")), None)
        assert line is not None, f"no row for {name!r} in:\n{result.stdout}"
        rows[name] = dict(zip(columns, re.split(r"\s{2,}", line.strip()), strict=True))
    dice_vs_naive = {name: float(row["Dice vs naive"]) for name, row in rows.items()}
    # a network fitted for one step is nearly random: rounding (channels-last kernels, bfloat16) flips a few
    # near-tie pixels, so agreement is high but not exact here (docs/benchmarks.md has the fitted numbers)
    assert dice_vs_naive["naive"] == 1.0 and dice_vs_naive["engine float32"] > 0.95, result.stdout
    assert dice_vs_naive["engine auto"] > 0.9, result.stdout
    assert all(float(row["s/volume"]) > 0 for row in rows.values())
    # on the CPU the host figure is the memory figure; the device column is for --device cuda
    assert all(float(row["peak +MiB"]) >= 0 and row["device MiB"] == "-" for row in rows.values()), result.stdout


@pytest.mark.parametrize(
    ("script", "arguments", "message"),
    [
        ("volume_inference", ["--device", "gpu0"], "expected a torch device such as cpu or cuda:0, got 'gpu0'"),
        ("volume_inference", ["--slices", "0"], "--slices must be at least 1, got 0"),
        ("volume_inference", ["--int8", "--device", "cuda"], None),  # CPU-only, or no CUDA here: refused either way
        ("compiled_forward", ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ],
)
def test_benchmarks_refuse_bad_arguments_with_a_usage_error(script, arguments, message, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *arguments])
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args()
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "error:" in stderr and (message is None or message in stderr), stderr


@pytest.mark.slow
def test_volume_memory_benchmark_prints_its_table():
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "volume_memory.py"),
        "--slices",
        "24",
        "--size",
        "64",
        "--precisions",
        "float32",
        "--paths",
        "streamed",
        "bundle",
        "whole",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("streamed ", "bundle ", "whole "))]
    kinds = [["streamed", "24", "float32"], ["bundle", "24", "float32"], ["whole", "24", "float32"]]
    assert [row[:3] for row in rows] == kinds, result.stdout
    assert all(float(row[3]) > 0 and float(row[6]) > 100 for row in rows)  # seconds, peak MiB
    assert "GFLOP/s float32" in result.stdout and "true GMACs per slice" in result.stdout


def test_product_share_counts_only_matrix_products(monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    forward_profile = importlib.import_module("forward_profile")
    import torch

    a = torch.randn(512, 512)
    with torch.inference_mode():
        with profile(activities=[ProfilerActivity.CPU]) as products:
            torch.mm(a, a)
        with profile(activities=[ProfilerActivity.CPU]) as element_wise:
            torch.nn.functional.gelu(a)
    assert forward_profile.product_share(products.key_averages()) > 0.9
    assert forward_profile.product_share(element_wise.key_averages()) == 0.0


@pytest.mark.slow
def test_forward_profile_prints_the_product_bound():
    command = [sys.executable, str(ROOT / "benchmarks" / "forward_profile.py"), "--batch-size", "1", "--repeats", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    bound = re.search(r"matrix products: ([\d.]+) % .* would take (\d+) ms", result.stdout)
    forward = re.search(r"forward (\d+) ms", result.stdout)
    assert bound and forward, result.stdout
    assert 0 < float(bound[1]) < 100 and 0 < int(bound[2]) <= int(forward[1]), result.stdout
