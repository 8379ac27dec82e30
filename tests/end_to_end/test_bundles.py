"""Every bundle trains, evaluates, infers, verifies and exports on miniature data in its dataset's real layout."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from bundle_harness import (
    copy_bundle,
    read_output,
    run_config,
    small_overrides,
    write_dataset,
    write_sample_inputs,
)
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out
from repo_paths import REPO

from common.bundle.render import stale_files
from common.bundle.specs import BUNDLES, class_names, config_files, find_bundle
from common.data import get_dataset

SCHEMA = REPO / "common" / "resources" / "bundle_metadata_schema.json"


def test_checked_in_bundles_are_rendered_from_the_templates():
    assert stale_files() == []


def test_every_bundle_has_the_model_zoo_layout():
    for spec in BUNDLES:
        root = REPO / "bundles" / spec.name
        for relative in (
            "configs/metadata.json",
            "configs/train.json",
            "configs/evaluate.json",
            "configs/inference.json",
            "configs/infer.json",
            "configs/multi_gpu_train.json",
            "configs/multi_gpu_evaluate.json",
            "configs/logging.conf",
            "docs/README.md",
            "docs/data_license.txt",
            "LICENSE",
            "large_files.yml",
        ):
            assert (root / relative).is_file(), f"{spec.name} lacks {relative}"
        assert not list((root / "models").glob("*.pt")), "weights must not be in git"
        train = json.loads((root / "configs" / "train.json").read_text())
        for key in ("network_def", "network", "dataset_dir", "bundle_root", "device"):
            assert key in train
        assert "trainer" in train["train"] and "evaluator" in train["validate"]
        inference = json.loads((root / "configs" / "inference.json").read_text())
        for key in ("inferer", "preprocessing", "postprocessing", "dataset_dir", "datalist", "load_pretrain"):
            assert key in inference
        for section in ("train", "validate"):
            assert train[section]["preprocessing"]["_target_"] == "Compose"
        assert not any("common" in i for i in train["imports"])  # code comes in through _target_ components
        meta = json.loads((root / "configs" / "metadata.json").read_text())
        assert meta["eval_metrics"] and "monai-label" in meta["supported_apps"]
        assert "gdla-bundles" not in meta["required_packages_version"]


def test_download_large_files_runs_on_a_checked_in_bundle(tmp_path):
    """The repository's large_files.yml lists nothing to fetch rather than an entry without an address."""
    from monai.bundle import download_large_files

    bundle = copy_bundle(find_bundle("pvt_gdla_ph2_segmentation"), tmp_path)
    download_large_files(bundle_path=str(bundle))
    assert not list((bundle / "models").glob("*.pt"))


def _metadata_check(bundle: Path) -> None:
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))
    broken = json.loads((bundle / "configs" / "metadata.json").read_text())
    del broken["network_data_format"]["outputs"]["pred"]["channel_def"]
    (bundle / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="channel_def"):
        verify_metadata(meta_file=str(bundle / "broken.json"), filepath=str(SCHEMA))


def _export_check(bundle: Path, tmp_path: Path, small: dict) -> None:
    """MONAI's own exports: ``ckpt_export`` (traced, as the metadata declares) and ``onnx_export`` with its defaults
    (the dynamo exporter) of the trained network; both match the eager output within 1e-4."""
    from monai.bundle import ckpt_export, onnx_export

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["torchscript_export"]["use_trace"] is True
    network_args = {k: v for k, v in small.items() if k.startswith("network_def#")}
    common = {
        "net_id": "network_def",
        "ckpt_file": str(bundle / "models" / "model.pt"),
        "bundle_root": str(bundle),
        "meta_file": str(bundle / "configs" / "metadata.json"),
        "config_file": str(bundle / "configs" / "inference.json"),
        **network_args,
    }
    channels = meta["network_data_format"]["inputs"]["image"]["num_channels"]
    shape = [1, channels, *small["spatial_size"]]
    ckpt_export(filepath=str(tmp_path / "model.ts"), use_trace=True, input_shape=shape, **common)
    # MONAI exports to a NamedTemporaryFile and the dynamo exporter writes the weights beside it as <name>.data,
    # which nothing removes: keep that file in tmp_path, not the system's temporary folder
    system_tempdir, tempfile.tempdir = tempfile.tempdir, str(tmp_path)
    try:
        onnx_export(filepath=str(tmp_path / "model.onnx"), input_shape=shape, **common)
    finally:
        tempfile.tempdir = system_tempdir

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({**small, "bundle_root": str(bundle)})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        eager = network(x)
        torch.testing.assert_close(torch.jit.load(tmp_path / "model.ts")(x), eager, rtol=0, atol=1e-4)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(onnx_out, eager.numpy(), rtol=0, atol=1e-4)


def _load_check(bundle: Path, small: dict) -> None:
    """``monai.bundle.load`` returns the bundle's network with the trained weights, for training and inference."""
    from monai.bundle import load

    trained = torch.load(bundle / "models" / "model.pt", weights_only=True)
    network_args = {k.split("#", 1)[1]: v for k, v in small.items() if k.startswith("network_def#")}
    for workflow_type in ("train", "infer"):
        network = load(
            bundle.name,
            bundle_dir=str(bundle.parent),
            workflow_type=workflow_type,
            device="cpu",
            net_override=network_args,
        )
        assert isinstance(network, torch.nn.Module), f"{workflow_type}: {type(network)}"
        for key, value in network.state_dict().items():
            torch.testing.assert_close(value, trained[key], rtol=0, atol=0)


def _properties_check(bundle: Path, data: Path, small: dict) -> None:
    """``ConfigWorkflow.check_properties()`` finds every property MONAI requires of a train, evaluate and infer
    workflow (the properties are built, so this also builds the datasets and engines)."""
    from monai.bundle import ConfigWorkflow

    runs = {
        "train": (config_files(bundle, "train"), str(data)),
        "eval": (config_files(bundle, "evaluate"), str(data)),
        "infer": (config_files(bundle, "inference"), str(bundle / "sample_data")),
    }
    for workflow_type, (files, dataset_dir) in runs.items():
        workflow = ConfigWorkflow(
            config_file=files,
            workflow_type=workflow_type,
            bundle_root=str(bundle),
            meta_file=str(bundle / "configs" / "metadata.json"),
            dataset_dir=dataset_dir,
            **small,
        )
        workflow.initialize()
        assert workflow.check_properties() == [], workflow_type


@pytest.mark.slow
@pytest.mark.parametrize("name", [spec.name for spec in BUNDLES])
def test_bundle_end_to_end_on_miniature_data(name, tmp_path):
    spec = find_bundle(name)
    bundle, data = copy_bundle(spec, tmp_path), write_dataset(spec, tmp_path)
    reader, small = get_dataset(spec.dataset), small_overrides(spec)

    run_config(bundle, "train", dataset_dir=str(data), epochs=1, warmup_epochs=0, batch_size=2, **small)
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update(small)
    assert set(weights) == set(parser.get_parsed_content("network_def").state_dict()), (
        "model.pt is not a plain state dict"
    )

    run_config(bundle, "evaluate", dataset_dir=str(data), **small)
    with open(bundle / "eval" / "cases.csv") as f:
        cases = list(csv.DictReader(f))
    test_ids = reader.datalists(data)["test"]
    assert len({row["case"] for row in cases}) == len(test_ids)
    with open(bundle / "eval" / "summary.csv") as f:
        summary = {row["class"]: row for row in csv.DictReader(f)}
    assert "mean" in summary
    if reader.spatial_dims == 3 or reader.multilabel:
        assert set(summary) - {"mean"} == set(class_names(spec)[0 if reader.multilabel else 1 :])

    inputs = write_sample_inputs(spec, bundle / "sample_data")
    run_config(bundle, "inference", **small)
    outputs = sorted((bundle / "predictions").iterdir())
    per_input = len(reader.label_names) if reader.multilabel else 1
    assert len(outputs) == per_input * len(inputs)
    for source, output in zip(sorted(inputs * per_input), outputs):
        mask, affine = read_output(output)
        expected, expected_affine = read_output(source)
        assert mask.shape[:2] == expected.shape[:2] and mask.shape[: expected.ndim] == expected.shape[: mask.ndim]
        assert mask.max() < reader.num_classes or (
            (reader.num_classes == 2 or reader.multilabel) and set(np.unique(mask)) <= {0, 255}
        )
        if affine is not None:
            np.testing.assert_allclose(affine, expected_affine, atol=1e-4)

    _metadata_check(bundle)
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        **{k: v for k, v in small.items() if k not in ("spatial_size", "network_def#image_size")},
    )
    _export_check(bundle, tmp_path, small)
    _load_check(bundle, small)
    _properties_check(bundle, data, small)


def test_evaluation_rows_agree_with_monai_mean_dice(tmp_path):
    """Our per-case CSV and MONAI's MeanDice (the validation metric) score the same predictions alike."""
    spec = find_bundle("pvt_gdla_ph2_segmentation")
    bundle, data = copy_bundle(spec, tmp_path), write_dataset(spec, tmp_path)
    parser = ConfigParser()
    parser.read_config(config_files(bundle, "evaluate"))
    parser.update({**small_overrides(spec), "bundle_root": str(bundle), "dataset_dir": str(data)})
    network = parser.get_parsed_content("network")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    with open(bundle / "eval" / "summary.csv") as f:
        ours = {row["class"]: float(row["dice"]) for row in csv.DictReader(f)}
    assert ours["mean"] == pytest.approx(evaluator.state.metrics["val_mean_dice"], abs=1e-6)


# ----------------------------------------------------------------------------- command line, resume, multi-process


def _bundle_command(bundle: Path, config: str | list[str], *args: str) -> list[str]:
    files = config if isinstance(config, str) else "[" + ",".join(f"'{c}'" for c in config) + "]"
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--logging_file",
        "configs/logging.conf",
        *args,
    ]


def _small_args(data: Path, epochs: int) -> list[str]:
    return [
        "--dataset_dir",
        str(data),
        "--epochs",
        str(epochs),
        "--warmup_epochs",
        "0",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
        "--spatial_size",
        "[64,64]",
        "--network_def#encoder",
        "pvt_v2_b0",
    ]


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_epoch(tmp_path):
    spec = find_bundle("pvt_gdla_synapse_segmentation")
    bundle, data = copy_bundle(spec, tmp_path), write_dataset(spec, tmp_path)
    command = _bundle_command(bundle, "configs/train.json", *_small_args(data, epochs=4))
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command, cwd=bundle, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (bundle / "models" / "last_checkpoint_2.pt").exists():
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # killed during epoch 3
    first.wait()
    saved = torch.load(bundle / "models" / "last_checkpoint_2.pt", weights_only=True)
    per_epoch = saved["trainer"]["epoch_length"]
    assert saved["trainer"]["iteration"] == 2 * per_epoch  # ignite keeps the epoch as iterations done

    second = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    output = second.stdout + second.stderr
    assert "resumed from" in output and "epoch 2" in output
    assert "Epoch: 1/4" not in output and "Epoch: 3/4" in output
    final = torch.load(bundle / "models" / "last_checkpoint_4.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 4 * per_epoch
    assert final["optimizer"]["state"], "optimizer state was not carried over"


@pytest.mark.slow
def test_torchrun_trains_one_epoch_on_two_cpu_processes(tmp_path):
    spec = find_bundle("pvt_gdla_synapse_segmentation")
    bundle, data = copy_bundle(spec, tmp_path), write_dataset(spec, tmp_path)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/train.json','configs/multi_gpu_train.json']",
        "--logging_file",
        "configs/logging.conf",
        *_small_args(data, epochs=1),
    ]
    result = subprocess.run(
        command, cwd=bundle, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (bundle / "models" / "model.pt").is_file()
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper names leaked into model.pt"

    evaluate = [
        *command[: command.index("--config_file") + 1],
        "['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']",
        *command[command.index("--config_file") + 2 :],
    ]
    result = subprocess.run(
        evaluate, cwd=bundle, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(bundle / "eval" / "cases.csv") as f:  # rank 0 wrote the cases of both processes
        cases = {row["case"] for row in csv.DictReader(f)}
    assert len(cases) == len(get_dataset(spec.dataset).datalists(data)["test"]) == 2


def test_inference_feeds_slices_in_the_training_layout(tmp_path):
    """inference.json's preprocessing and the training/evaluation volume pipeline give the same arrays."""
    from common.transforms.pipelines import volume_transforms
    from common.transforms.slicing import AxialSlicesd

    spec = find_bundle("pvt_gdla_acdc_segmentation")
    bundle = copy_bundle(spec, tmp_path)
    (source,) = [p for p in write_sample_inputs(spec, tmp_path / "inputs") if p.name.startswith("lps")]
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle)})
    inferred = parser.get_parsed_content("preprocessing")({"image": str(source)})["image"]
    trained = AxialSlicesd(mode="all")(volume_transforms("acdc")({"image": str(source)}))
    assert len(trained) == inferred.shape[-1]
    for k, item in enumerate(trained):
        torch.testing.assert_close(torch.as_tensor(inferred[..., k]), item["image"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_synapse_bundle_trains_on_raw_btcv_volumes(tmp_path):
    """The Synapse bundles read the raw BTCV NIfTI layout too, through their ``raw_btcv.json`` overlay (labels
    mapped to the 8 organs, CT windowed)."""
    from miniature_layouts import write_synapse_raw

    spec = find_bundle("pvt_gdla_synapse_segmentation")
    bundle, data = copy_bundle(spec, tmp_path), write_synapse_raw(tmp_path / "raw", n_train_cases=2, n_test_cases=1)
    small = small_overrides(spec)
    run_config(
        bundle,
        "raw_btcv_train",
        dataset_dir=str(data),
        epochs=1,
        warmup_epochs=0,
        batch_size=2,
        **small,
    )
    run_config(bundle, "raw_btcv_evaluate", dataset_dir=str(data), **small)
    with open(bundle / "eval" / "summary.csv") as f:
        assert {row["class"] for row in csv.DictReader(f)} == set(class_names(spec)[1:]) | {"mean"}


# ----------------------------------------------------------------------------- the model zoo's habits


def test_request_max_epochs_drives_the_learning_rate_schedule():
    """MONAI Label (and a user) set ``train#trainer#max_epochs``; the cosine schedule ends with it."""
    spec = find_bundle("pvt_gdla_busi_segmentation")
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / spec.name / "configs" / "train.json"))
    parser.update(
        {**small_overrides(spec), "iterations_per_epoch": 10, "warmup_epochs": 1, "train#trainer#max_epochs": 3}
    )
    scheduler = parser.get_parsed_content("lr_scheduler")
    base = parser.get_parsed_content("learning_rate")
    assert scheduler.lr_lambdas[0](30) * base == pytest.approx(1e-6)  # the end of 3 epochs of 10 iterations
    assert scheduler.lr_lambdas[0](15) * base > 1e-4


def test_preprocessing_in_the_configs_is_the_code_recipe_and_can_be_overridden(tmp_path):
    """``validate#preprocessing`` is a readable list of MONAI transforms that gives what the code's
    ``eval_transforms`` gives; a user replaces one transform's argument by its config id."""
    from common.transforms.pipelines import eval_transforms, train_transforms_config

    spec = find_bundle("pvt_gdla_busi_segmentation")
    bundle, data = copy_bundle(spec, tmp_path), write_dataset(spec, tmp_path)
    train = json.loads((bundle / "configs" / "train.json").read_text())
    targets = [t["_target_"] for t in train["validate"]["preprocessing"]["transforms"]]
    assert targets == [
        "common.transforms.LoadImage2Dd",
        "common.transforms.LoadMask2Dd",
        "common.transforms.ResizePictured",
        "ScaleIntensityd",
        "AsDiscreted",
        "EnsureTyped",
    ]
    assert train["train"]["preprocessing"] == json.loads(json.dumps(train_transforms_config("busi", "@spatial_size")))
    item = get_dataset("busi").datalists(data)["validation"][0]

    def validation_item(**overrides):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "train.json"))
        parser.update({"bundle_root": str(bundle), "dataset_dir": str(data), **overrides})
        return parser.get_parsed_content("validate#preprocessing")(dict(item))

    configured, coded = validation_item(), eval_transforms("busi")(dict(item))
    torch.testing.assert_close(configured["image"], coded["image"], rtol=0, atol=0)
    torch.testing.assert_close(configured["label"], coded["label"], rtol=0, atol=0)
    assert float(configured["image"].max()) == 1.0
    overridden = validation_item(**{"validate#preprocessing#transforms#3#maxv": 0.5})
    assert float(overridden["image"].max()) == 0.5


def test_inference_takes_dataset_dir_datalist_and_refuses_nothing(tmp_path):
    """``--dataset_dir`` (``input_dir`` is its alias), ``--datalist`` as paths or dicts, ``load_pretrain``, a
    post-processing argument overridden from the command line, and a non-zero exit when nothing matches."""
    spec = find_bundle("pvt_gdla_busi_segmentation")
    bundle = copy_bundle(spec, tmp_path)
    first, second = write_sample_inputs(spec, tmp_path / "in")
    small = {**small_overrides(spec), "load_pretrain": False}  # random weights: no models/model.pt
    run_config(bundle, "inference", dataset_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "all"), **small)
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["first image (1)_seg.png", "second_seg.png"]
    run_config(bundle, "inference", datalist=[str(first)], output_dir=str(tmp_path / "paths"), **small)
    assert [p.name for p in (tmp_path / "paths").iterdir()] == ["first image (1)_seg.png"]
    run_config(
        bundle,
        "inference",
        datalist=[{"image": str(second)}],
        output_dir=str(tmp_path / "dicts"),
        **{"postprocessing#transforms#0#postfix": "mask"},
        **small,
    )
    assert [p.name for p in (tmp_path / "dicts").iterdir()] == ["second_mask.png"]

    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        _bundle_command(
            bundle,
            "configs/inference.json",
            "--dataset_dir",
            str(tmp_path / "empty"),
            "--load_pretrain",
            "False",
            "--network_def#encoder",
            "pvt_v2_b0",
        ),
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0
    assert "nothing to segment" in result.stderr and str(tmp_path / "empty") in result.stderr
