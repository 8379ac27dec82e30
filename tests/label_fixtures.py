"""MONAI Label for the tests: its environment (``.venv-label``), miniature bundles in the repository layout, and a
server started through the repo's launcher on 127.0.0.1 (test_monailabel.py and test_monailabel_pacs.py)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pacs_fixtures import free_port
from repo_paths import REPO

LABEL_VENV = REPO / ".venv-label"
SKIP_BUILD_VARIABLE = "GDLA_SKIP_LABEL_ENV_BUILD"
ENV_BUILD_TIMEOUT_S = 3600
SERVER_START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 300
#: held while ``make label-env`` runs, so that two pytest-xdist workers never build ``.venv-label`` at once
BUILD_LOCK = Path(tempfile.gettempdir()) / f"gdla-label-env-{hashlib.sha256(str(REPO).encode()).hexdigest()[:12]}.lock"

VOLUME_MODEL = "pvt_gdla_mni152_segmentation"
PICTURE_MODEL = "pvt_gdla_photo_segmentation"
MULTILABEL_MODEL = "pvt_gdla_multilabel_segmentation"
TISSUES = {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
PICTURE_LABELS = {"0": "background", "1": "brain"}
CHANNELS = {"0": "large_bowel", "1": "small_bowel", "2": "stomach"}  # sigmoid channels, no background channel


@pytest.fixture(scope="session")
def label_env() -> Path:
    """``.venv-label``, built (or brought up to date) by ``make label-env`` once per session, by one worker at a
    time: a worker that waited for the lock finds it built."""
    if os.environ.get(SKIP_BUILD_VARIABLE) == "1":
        if not (LABEL_VENV / ".installed").is_file():
            pytest.skip(f"{LABEL_VENV} is not built and {SKIP_BUILD_VARIABLE}=1 forbids building it (make label-env)")
        return LABEL_VENV
    with open(BUILD_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build = subprocess.run(
            ["make", "label-env"], cwd=REPO, capture_output=True, text=True, timeout=ENV_BUILD_TIMEOUT_S
        )
    assert build.returncode == 0, f"make label-env failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return LABEL_VENV


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))


def metadata(
    data_type: str, in_channels: int, channel_def: dict[str, str], size: list[int], output_format: str = "segmentation"
) -> dict:
    return {
        "version": "0.1.0",
        "name": f"miniature {data_type} bundle",
        "description": "test bundle: PVT-GDLA (pvt_v2_b0) with random weights",
        "data_type": data_type,
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": in_channels, "spatial_shape": size}},
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": output_format,
                    "num_channels": len(channel_def),
                    "spatial_shape": size,
                    "channel_def": channel_def,
                }
            },
        },
    }


def network_def(in_channels: int, num_classes: int) -> dict:
    return {
        "_target_": "common.networks.create_network",
        "name": "pvt_gdla",
        "in_channels": in_channels,
        "num_classes": num_classes,
        "encoder": "pvt_v2_b0",
        "encoder_weights": "random",
        "deep_supervision": True,
    }


COMMON_IDS = {
    "imports": ["$import torch", "$import numpy", "$import monai", "$import common"],
    "bundle_root": ".",
    "ckpt_dir": "$@bundle_root + '/models'",
    "output_dir": "$@bundle_root + '/predictions'",
    "device": "$torch.device('cpu')",
    "network": "$@network_def.to(@device)",
}


def volume_inference(size: list[int]) -> dict:
    """inference.json of the volume bundle: MONAI loading, RAS orientation, slice-wise inferer, inversion."""
    return {
        **COMMON_IDS,
        "spatial_size": size,
        "network_def": network_def(1, len(TISSUES)),
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "image_only": False},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "inferer": {"_target_": "common.inference.SliceInferer2D", "roi_size": "@spatial_size", "sw_batch_size": 8},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": True,
                },
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                },
            ],
        },
    }


def volume_training(size: list[int]) -> dict:
    """train.json of the volume bundle in the repository's layout (datalists, slice dataset, validation)."""
    return {
        **COMMON_IDS,
        "imports": COMMON_IDS["imports"] + ["$import ignite"],
        "dataset_name": "acdc",  # an MRI volume dataset: min-max intensity, slices drawn from volumes
        "reader": "$common.data.get_dataset(@dataset_name)",
        "spatial_size": size,
        "batch_size": 16,
        "epochs": 50,
        "network_def": network_def(1, len(TISSUES)),
        "loss": {
            "_target_": "common.training.DeepSupervisionLoss",
            "loss": {"_target_": "common.training.BoundaryDoULoss"},
        },
        "optimizer": {"_target_": "torch.optim.AdamW", "params": "$@network.parameters()", "lr": 0.001},
        "train": {
            "datalist": [],
            "dataset": {
                "_target_": "common.training.training_dataset",
                "dataset": "@dataset_name",
                "datalist": "@train#datalist",
                "spatial_size": "@spatial_size",
            },
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@train#dataset",
                "batch_size": "@batch_size",
                "num_workers": 0,
            },
            "handlers": [
                {
                    "_target_": "ValidationHandler",
                    "validator": "@validate#evaluator",
                    "epoch_level": True,
                    "interval": 1,
                },
                {
                    "_target_": "StatsHandler",
                    "tag_name": "train_loss",
                    "output_transform": "$monai.handlers.from_engine(['loss'], first=True)",
                },
            ],
            "trainer": {
                "_target_": "SupervisedTrainer",
                "max_epochs": "@epochs",
                "epoch_length": "$common.training.iterations_per_epoch(@train#dataset, @batch_size, @reader)",
                "device": "@device",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "loss_function": "@loss",
                "optimizer": "@optimizer",
                "train_handlers": "@train#handlers",
            },
        },
        "validate": {
            "datalist": [],
            "dataset": {
                "_target_": "Dataset",
                "data": "@validate#datalist",
                "transform": {
                    "_target_": "common.transforms.eval_transforms",
                    "dataset": "@dataset_name",
                    "spatial_size": "@spatial_size",
                },
            },
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1, "num_workers": 0},
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@validate#dataloader",
                "network": "@network",
                "inferer": {"_target_": "common.inference.SliceInferer2D", "roi_size": "@spatial_size"},
                "postprocessing": {
                    "_target_": "AsDiscreted",
                    "keys": ["pred", "label"],
                    "to_onehot": [len(TISSUES), len(TISSUES)],
                },
                "key_val_metric": {
                    "val_mean_dice": {
                        "_target_": "MeanDice",
                        "include_background": False,
                        "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                    }
                },
                "val_handlers": [
                    {
                        "_target_": "CheckpointSaver",
                        "save_dir": "@ckpt_dir",
                        "save_dict": {"model": "@network"},
                        "save_key_metric": True,
                        "key_metric_filename": "model.pt",
                    }
                ],
            },
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@train#trainer.run()"],
    }


def picture_inference(size: list[int], labels: dict[str, str] = PICTURE_LABELS, multilabel: bool = False) -> dict:
    """inference.json of a picture bundle: the repository's 2-D loader and mask saver; ``multilabel``: one sigmoid
    channel per structure (as the UW-Madison bundles)."""
    saver = {
        "_target_": "common.io.mask_saving.SaveMask2Dd",
        "keys": "pred",
        "output_dir": "@output_dir",
        "num_classes": len(labels),
    }
    inferer = {
        "_target_": "common.inference.SliceInferer2D",
        "roi_size": "@spatial_size",
        "interpolation": "bilinear",
        "align_corners": False,
    }
    if multilabel:
        saver["channel_names"] = list(labels.values())
        inferer["activation"] = "sigmoid"
    return {
        **COMMON_IDS,
        "spatial_size": size,
        "network_def": network_def(3, len(labels)),
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "common.transforms.LoadImage2Dd", "keys": "image", "channels": 3},
                {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": [saver]},
    }


def save_random_weights(bundle: Path, in_channels: int, num_classes: int) -> dict[str, torch.Tensor]:
    """Write ``models/model.pt`` (a plain state dict of the bundle's network, seeded random weights)."""
    from common.networks import create_network  # here: tests/conftest.py imports this module, keep that light

    torch.manual_seed(0)
    kwargs = {k: v for k, v in network_def(in_channels, num_classes).items() if k not in ("_target_", "name")}
    state = create_network("pvt_gdla", **kwargs).state_dict()
    (bundle / "models").mkdir(parents=True, exist_ok=True)
    torch.save(state, bundle / "models" / "model.pt")
    return state


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    """Three bundles in the repository layout: a 1-channel MRI volume bundle (the model zoo's data_type "nibabel"),
    a 3-channel picture bundle and a 3-channel multi-label (sigmoid) picture bundle (the zoo's data_type "image")."""
    root = tmp_path_factory.mktemp("bundles")
    volume, picture, multilabel = root / VOLUME_MODEL, root / PICTURE_MODEL, root / MULTILABEL_MODEL
    write_json(volume / "configs" / "metadata.json", metadata("nibabel", 1, TISSUES, [64, 64]))
    write_json(volume / "configs" / "inference.json", volume_inference([64, 64]))
    write_json(volume / "configs" / "train.json", volume_training([64, 64]))
    save_random_weights(volume, 1, len(TISSUES))
    write_json(picture / "configs" / "metadata.json", metadata("png", 3, PICTURE_LABELS, [64, 64]))
    write_json(picture / "configs" / "inference.json", picture_inference([64, 64]))
    save_random_weights(picture, 3, len(PICTURE_LABELS))
    write_json(multilabel / "configs" / "metadata.json", metadata("image", 3, CHANNELS, [64, 64], "classes"))
    write_json(multilabel / "configs" / "inference.json", picture_inference([64, 64], CHANNELS, multilabel=True))
    save_random_weights(multilabel, 3, len(CHANNELS))
    return root


class Server:
    """HTTP calls to the MONAI Label server at ``base``; ``log`` is its console output, ``pid`` its process."""

    def __init__(self, base: str, log: Path, pid: int | None = None):
        self.base, self.log, self.pid = base, log, pid

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def json(self, method: str, path: str, payload: dict | None = None) -> dict:
        body = json.dumps(payload).encode() if payload is not None else None
        status, content = self.call(method, path, body, "application/json" if body else None)
        assert status == 200, f"{method} {path} -> {status}: {content[:2000]!r}\n{self.log_tail()}"
        return json.loads(content)

    def infer(self, model: str, image: str) -> tuple[int, bytes]:
        return self.call(
            "POST", f"/infer/{model}?image={image}&output=image", b"params=%7B%7D", "application/x-www-form-urlencoded"
        )


def wait_until_ready(process: subprocess.Popen, server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}:\n{server.log_tail()}"
        try:
            if server.call("GET", "/info/", timeout=10)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    raise AssertionError(f"the server did not answer /info/ within {SERVER_START_TIMEOUT_S} s:\n{server.log_tail()}")


def stop(process: subprocess.Popen) -> None:
    """Stop the server's whole process group (uvicorn and any training subprocess)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def running_label_server(
    label_env: Path, work: Path, studies: str, conf: dict[str, str], env: dict[str, str]
) -> Iterator[Server]:
    """``monailabel start_server`` through the repo's launcher on 127.0.0.1, with a copy of the shipped app in
    ``work``, serving ``studies`` with the ``--conf`` pairs ``conf``; its whole process group stopped on exit."""
    app = work / "monailabel_app"
    shutil.copytree(REPO / "monailabel_app", app, ignore=shutil.ignore_patterns("__pycache__", "logs", "model", "bin"))
    port, log = free_port(), work / "server.log"
    command = [str(label_env / "bin" / "python"), "-m", "common.apps.label_server", "start_server", "--app", str(app)]
    command += ["--studies", studies, *(arg for pair in conf.items() for arg in ("--conf", *pair))]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=work, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    running = Server(f"http://127.0.0.1:{port}", log, process.pid)
    try:
        wait_until_ready(process, running)
        yield running
    finally:
        stop(process)


def run_in_label_env(label_env: Path, script: str, cwd: Path, *args: Path) -> tuple[dict, str]:
    """Run ``script`` with MONAI Label's interpreter (argv: the app folder, then ``args``); the JSON object on its
    last line of output, and its log (stderr)."""
    run = subprocess.run(
        [str(label_env / "bin" / "python"), "-c", script, str(REPO / "monailabel_app"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=REQUEST_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr
