"""End to end: a real MONAI Label server (``.venv-label``) serving two miniature bundles over HTTP.

The datastore holds a real brain MRI volume (nilearn's MNI152 template, stored left-flipped so the bundle's
orientation step has to be undone) with a tissue label map from nilearn's grey/white matter templates, and a
real 2-D picture (an axial slice of it as a non-square RGB PNG). The bundles follow the repository layout:
a volume bundle (1 channel, background/CSF/grey/white matter, with a train config) and a picture bundle
(3 channels, 2 classes, no train config). ``.venv-label`` is built with ``make label-env`` unless
``GDLA_SKIP_LABEL_ENV_BUILD=1`` is set, in which case the test skips when the environment is missing.
Two fast tests cover the app's bundle discovery, which needs only ``common``.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from repo_paths import REPO

from common.networks import create_network

LABEL_VENV = REPO / ".venv-label"
SKIP_BUILD_VARIABLE = "GDLA_SKIP_LABEL_ENV_BUILD"
ENV_BUILD_TIMEOUT_S = 3600
SERVER_START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 300
TRAINING_TIMEOUT_S = 900

VOLUME_MODEL = "pvt_gdla_mni152_segmentation"
PICTURE_MODEL = "pvt_gdla_photo_segmentation"
MULTILABEL_MODEL = "pvt_gdla_multilabel_segmentation"
TISSUES = {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
PICTURE_LABELS = {"0": "background", "1": "brain"}
CHANNELS = {"0": "large_bowel", "1": "small_bowel", "2": "stomach"}  # sigmoid channels, no background channel
VOLUME_ID, PICTURE_ID, SECOND_PICTURE_ID = "mni152_las", "mni152_axial", "mni152_coronal"


# ----------------------------------------------------------------------------- the environment


@pytest.fixture(scope="module")
def label_env() -> Path:
    """``.venv-label``, built (or brought up to date) by ``make label-env``."""
    if os.environ.get(SKIP_BUILD_VARIABLE) == "1":
        if not (LABEL_VENV / ".installed").is_file():
            pytest.skip(f"{LABEL_VENV} is not built and {SKIP_BUILD_VARIABLE}=1 forbids building it (make label-env)")
        return LABEL_VENV
    build = subprocess.run(["make", "label-env"], cwd=REPO, capture_output=True, text=True, timeout=ENV_BUILD_TIMEOUT_S)
    assert build.returncode == 0, f"make label-env failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    return LABEL_VENV


# ----------------------------------------------------------------------------- data


def flip_first_axis(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same image stored with the first voxel axis reversed (RAS -> LAS); world positions unchanged."""
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, image.shape[0] - 1
    return nib.Nifti1Image(np.asarray(image.dataobj)[::-1].copy(), image.affine @ flip)


def tissue_labels(grey: np.ndarray, white: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Label map [X, Y, Z]: 0 outside the brain mask, else the likeliest of CSF (1), grey (2), white matter (3)."""
    csf = np.clip(1.0 - grey - white, 0.0, 1.0)
    tissue = 1 + np.argmax(np.stack([csf, grey, white]), axis=0)
    return np.where(brain > 0.5, tissue, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """A MONAI Label datastore: the MNI152 volume (LAS) with its final label, and an RGB axial slice (PNG)."""
    from nilearn import datasets

    root = tmp_path_factory.mktemp("studies")
    template = datasets.load_mni152_template(resolution=2)
    volume = flip_first_axis(nib.Nifti1Image(template.get_fdata().astype(np.float32), template.affine))
    nib.save(volume, root / f"{VOLUME_ID}.nii.gz")
    grey, white, brain = (
        datasets.load_mni152_gm_template(resolution=2).get_fdata(),
        datasets.load_mni152_wm_template(resolution=2).get_fdata(),
        datasets.load_mni152_brain_mask(resolution=2).get_fdata(),
    )
    labels = tissue_labels(grey, white, brain)
    (root / "labels" / "final").mkdir(parents=True)
    nib.save(
        flip_first_axis(nib.Nifti1Image(labels, template.affine)), root / "labels" / "final" / f"{VOLUME_ID}.nii.gz"
    )
    axial = np.rot90(template.get_fdata()[:, :, template.shape[2] // 2])  # (H, W) = (117, 99), anterior up
    grey_levels = np.round(255 * axial / axial.max()).astype(np.uint8)
    Image.fromarray(np.stack([grey_levels] * 3, axis=-1)).save(root / f"{PICTURE_ID}.png")
    coronal = np.rot90(template.get_fdata()[:, template.shape[1] // 2, :])
    Image.fromarray(np.round(255 * coronal / coronal.max()).astype(np.uint8)).save(root / f"{SECOND_PICTURE_ID}.png")
    return root


# ----------------------------------------------------------------------------- bundles


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
                "epoch_length": "$common.training.recipe.iterations_per_epoch(@train#dataset, @batch_size, @reader)",
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


def whole_volume_labels(bundle: Path, source: nib.Nifti1Image) -> np.ndarray:
    """The labels of ``source`` by ``bundle``'s inference.json pipeline run on the whole volume (no streaming)."""
    from monai.bundle import ConfigParser

    from common.inference.volume_streaming import segment_volume, split_readers
    from common.io.volumes import load_volume

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    preprocessing = split_readers(parser.get_parsed_content("preprocessing"))[1]
    volume = load_volume(source.get_filename())
    return segment_volume(network.eval(), preprocessing, parser.get_parsed_content("inferer"), volume, streaming=False)


def save_random_weights(bundle: Path, in_channels: int, num_classes: int) -> dict[str, torch.Tensor]:
    """Write ``models/model.pt`` (a plain state dict of the bundle's network, seeded random weights)."""
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


# ----------------------------------------------------------------------------- bundle discovery (fast)


def load_bundles_module():
    """``monailabel_app/lib/bundles.py``, which needs only ``common`` (MONAI Label is not in this environment)."""
    spec = importlib.util.spec_from_file_location("label_app_bundles", REPO / "monailabel_app" / "lib" / "bundles.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_select_bundles_reads_labels_and_input_kind(tmp_path):
    discovery = load_bundles_module()
    write_json(tmp_path / "volume_segmentation" / "configs" / "metadata.json", metadata("nifti", 1, TISSUES, [64, 64]))
    write_json(tmp_path / "volume_segmentation" / "configs" / "inference.json", {})
    write_json(
        tmp_path / "photo_segmentation" / "configs" / "metadata.json", metadata("png", 3, PICTURE_LABELS, [64, 64])
    )
    write_json(tmp_path / "photo_segmentation" / "configs" / "inference.json", {})
    (tmp_path / "notes").mkdir()
    found = discovery.select_bundles(tmp_path)
    assert list(found) == ["photo_segmentation", "volume_segmentation"]
    volume, photo = found["volume_segmentation"], found["photo_segmentation"]
    assert volume.label_names == {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}
    assert (volume.dimension, photo.dimension) == (3, 2)
    assert volume.accepts("case.nii.gz") and not volume.accepts("case.png")
    assert photo.accepts("image.PNG") and not photo.accepts("case.nrrd")
    assert list(discovery.select_bundles(tmp_path, " photo_segmentation ")) == ["photo_segmentation"]


def test_select_bundles_refuses_unknown_names_and_missing_labels(tmp_path):
    discovery = load_bundles_module()
    with pytest.raises(discovery.BundleError, match="found none"):
        discovery.select_bundles(tmp_path)
    write_json(tmp_path / "a_segmentation" / "configs" / "inference.json", {})
    with pytest.raises(discovery.BundleError, match="unknown: b_segmentation") as error:
        discovery.select_bundles(tmp_path, "a_segmentation,b_segmentation")
    assert "a_segmentation" in str(error.value)
    with pytest.raises(discovery.BundleError, match="cannot read the bundle metadata"):
        discovery.select_bundles(tmp_path, "a_segmentation")
    write_json(
        tmp_path / "a_segmentation" / "configs" / "metadata.json", {"network_data_format": {"outputs": {"pred": {}}}}
    )
    with pytest.raises(discovery.BundleError, match="channel_def"):
        discovery.select_bundles(tmp_path, "a_segmentation")


# ----------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


@pytest.fixture(scope="module")
def server(label_env, studies, bundles, tmp_path_factory):
    """The app on the studies folder with the volume, picture and multi-label bundles; stopped at teardown."""
    conf = {
        "bundles": str(bundles),
        "models": f"{VOLUME_MODEL},{PICTURE_MODEL},{MULTILABEL_MODEL}",
        "epistemic_model": MULTILABEL_MODEL,
    }
    # scoring runs when asked (below), not in the background at start-up and after each request
    env = {**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    with running_label_server(label_env, tmp_path_factory.mktemp("server"), str(studies), conf, env) as running:
        yield running


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


SCORING_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from lib.bundles import read_bundle
from lib.scoring import FlipEntropyScoring
from monailabel.datastore.local import LocalDatastore
datastore = LocalDatastore(sys.argv[2])
result = FlipEntropyScoring(read_bundle(sys.argv[3]))({}, datastore)
scores = {i: datastore.get_image_info(i).get("epistemic_entropy") for i in datastore.list_images()}
print(json.dumps({"result": result, "scores": scores}))
"""


@pytest.mark.slow
def test_epistemic_scoring_reads_volumes_slab_by_slab(label_env, studies, bundles, tmp_path):
    """The volume bundle's epistemic score, computed by the app in MONAI Label's environment on a datastore with
    an unlabelled volume and a broken one: the volume's score equals the whole-volume score, the broken file is
    logged and counted, and the scoring goes on."""
    from monai.bundle import ConfigParser

    from common.inference.flip_uncertainty import flip_entropy
    from common.inference.volume_streaming import split_readers
    from common.io.volumes import load_volume
    from common.transforms.loading import volume_tensor

    shutil.copy(studies / f"{VOLUME_ID}.nii.gz", tmp_path / "unlabelled.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    report, log = run_in_label_env(label_env, SCORING_SCRIPT, tmp_path, tmp_path, bundles / VOLUME_MODEL)
    assert (report["result"]["scored"], report["result"]["failed"]) == (1, 1), report
    assert "broken not scored" in log and "broken.nii.gz" in log

    parser = ConfigParser()
    parser.read_config(str(bundles / VOLUME_MODEL / "configs" / "inference.json"))
    parser["inferer#output"] = "probabilities"
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundles / VOLUME_MODEL / "models" / "model.pt", weights_only=True))
    volume = load_volume(tmp_path / "unlabelled.nii.gz")
    preprocessing = split_readers(parser.get_parsed_content("preprocessing"))[1]
    image = preprocessing({"image": volume_tensor(volume.array, volume.affine, volume.path, dtype=np.float32)})["image"]
    whole = flip_entropy(image[None], network.eval(), parser.get_parsed_content("inferer"), multilabel=False)
    assert report["scores"]["unlabelled"] == pytest.approx(whole, rel=1e-5)


NETWORK_SCRIPT = """
import gc, json, os, sys, weakref
import torch
sys.path.insert(0, sys.argv[1])
from lib.bundles import read_bundle
from lib.infer import BundleSegmentation
bundle = read_bundle(sys.argv[2])
weights = bundle.path / "models" / "model.pt"
task = BundleSegmentation(bundle, {})
def live_parameters():
    gc.collect()
    modules = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module)]
    return sum(p.numel() for module in modules for p in module.parameters(recurse=False))
report = {"parameters_held_at_start": live_parameters()}
network = task._get_network("cpu", None)
saved = torch.load(weights, weights_only=True)
report |= {
    "weights_loaded": all(torch.equal(value, saved[key]) for key, value in network.state_dict().items()),
    "parameters_held": live_parameters() == sum(p.numel() for p in network.parameters()),
    "reused": task._get_network("cpu", None) is network,
}
changed = {key: value + 1 if value.is_floating_point() else value for key, value in saved.items()}
torch.save(changed, weights)
os.utime(weights, (1, 1))
previous = weakref.ref(network)
del network
network = task._get_network("cpu", None)
report["reloaded"] = all(torch.equal(value, changed[key]) for key, value in network.state_dict().items())
report["previous_released"] = previous() is None
print(json.dumps(report))
"""


@pytest.mark.slow
def test_inference_task_holds_the_weights_once(label_env, bundles, tmp_path):
    """MONAI Label's bundle task keeps the network it builds at start-up as a template, deep-copies it and loads
    the checkpoint into the copy. The app's task holds no network until asked for one, then exactly one (no
    parameters live but its own) with the weights of ``model.pt``, reused until that file changes; then the old
    network is released and the new weights loaded."""
    bundle = shutil.copytree(bundles / VOLUME_MODEL, tmp_path / VOLUME_MODEL)
    report, _ = run_in_label_env(label_env, NETWORK_SCRIPT, tmp_path, bundle)
    assert report == {
        "parameters_held_at_start": 0,
        "weights_loaded": True,
        "parameters_held": True,
        "reused": True,
        "reloaded": True,
        "previous_released": True,
    }


# ----------------------------------------------------------------------------- the test


@pytest.mark.slow
def test_monailabel_serves_and_trains_bundles(server: Server, studies: Path, bundles: Path):
    info = server.json("GET", "/info/")
    assert set(info["models"]) == {VOLUME_MODEL, PICTURE_MODEL, MULTILABEL_MODEL}
    volume_info, picture_info = info["models"][VOLUME_MODEL], info["models"][PICTURE_MODEL]
    assert volume_info["labels"] == {"csf": 1, "grey matter": 2, "white matter": 3}
    assert picture_info["labels"] == {"brain": 1}
    assert info["models"][MULTILABEL_MODEL]["labels"] == {"large_bowel": 1, "small_bowel": 2, "stomach": 3}
    assert (volume_info["dimension"], picture_info["dimension"], info["models"][MULTILABEL_MODEL]["dimension"]) == (
        3,
        2,
        2,
    )
    assert {"random", "first", "epistemic"} <= set(info["strategies"]) and "epistemic" in info["scoring"]
    assert set(info["trainers"]) == {VOLUME_MODEL}  # the picture bundle has no train config

    source = nib.load(studies / f"{VOLUME_ID}.nii.gz")
    status, content = server.infer(VOLUME_MODEL, VOLUME_ID)
    assert status == 200, f"{content[:2000]!r}\n{server.log_tail()}"
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(content))
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {int(k) for k in TISSUES}
    # read slab by slab on the server, equal voxel for voxel to the bundle's pipeline run on the whole volume
    assert f"{VOLUME_ID}.nii.gz: segmented slab by slab with {VOLUME_MODEL}" in server.log_tail(200_000)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), whole_volume_labels(bundles / VOLUME_MODEL, source))

    picture = Image.open(studies / f"{PICTURE_ID}.png")
    status, content = server.infer(PICTURE_MODEL, PICTURE_ID)
    assert status == 200, f"{content[:2000]!r}\n{server.log_tail()}"
    picture_mask = np.asarray(Image.open(io.BytesIO(content)))
    assert picture_mask.shape == (picture.height, picture.width)  # (H, W): no channel axis, not transposed
    assert set(np.unique(picture_mask)) <= {int(k) for k in PICTURE_LABELS}

    status, content = server.infer(MULTILABEL_MODEL, PICTURE_ID)
    assert status == 200, f"{content[:2000]!r}\n{server.log_tail()}"
    channels_mask = np.asarray(Image.open(io.BytesIO(content)))
    assert channels_mask.shape == (picture.height, picture.width)
    values = set(np.unique(channels_mask))
    assert values <= {0, 1, 2, 3} and len(values) > 1, values  # channel k is label k + 1, background 0

    status, content = server.infer(VOLUME_MODEL, PICTURE_ID)
    assert status == 422 and b"segments volumes" in content, content[:2000]

    unlabelled = {PICTURE_ID, SECOND_PICTURE_ID}
    assert server.json("POST", "/activelearning/first", {})["id"] == min(unlabelled)
    assert server.json("POST", "/activelearning/random", {})["id"] in unlabelled
    server.json("POST", "/scoring/epistemic?run_sync=true")
    deadline, scores = time.monotonic() + 60, {}
    while len(scores) < len(unlabelled) and time.monotonic() < deadline:  # the datastore file is re-read on change
        images = server.json("GET", "/datastore/?output=all")["objects"]
        scores = {
            i: images[i]["image"]["info"]["epistemic_entropy"]
            for i in unlabelled
            if "epistemic_entropy" in images[i]["image"]["info"]
        }
        time.sleep(1)
    assert set(scores) == unlabelled, f"{scores}\n{server.log_tail()}"
    assert all(score > 0 for score in scores.values()), scores
    chosen = server.json("POST", "/activelearning/epistemic", {})
    assert chosen["id"] == max(scores, key=scores.get), (chosen, scores)

    # served, segmented and scored by a process (common.apps.label_server) that never loaded what it leaves out: none
    # of their compiled libraries is mapped (torch's are, so the check sees them); Triton only without a GPU
    mapped = Path(f"/proc/{server.pid}/maps").read_text()
    assert "/site-packages/torch/" in mapped
    left_out = ("pandas", "pyarrow", "sklearn", "matplotlib", *(() if torch.cuda.is_available() else ("triton",)))
    loaded = [name for name in left_out if f"/site-packages/{name}/" in mapped]
    assert not loaded, f"the server process loaded {loaded}"

    weights = bundles / VOLUME_MODEL / "models" / "model.pt"
    before = torch.load(weights, weights_only=True)
    server.json("POST", f"/train/{VOLUME_MODEL}", {"max_epochs": 1, "val_split": 0.0, "device": "cpu"})
    deadline, task = time.monotonic() + TRAINING_TIMEOUT_S, {}
    while time.monotonic() < deadline:
        task = server.json("GET", "/train/")
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(5)
    assert task.get("status") == "DONE", f"training ended as {task.get('status')}:\n{task.get('details', '')}"
    after = torch.load(weights, weights_only=True)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # one epoch changed the saved weights
