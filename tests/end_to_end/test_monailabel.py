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

import gzip
import importlib.util
import io
import os
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from label_fixtures import (
    MULTILABEL_MODEL,
    PICTURE_LABELS,
    PICTURE_MODEL,
    TISSUES,
    VOLUME_MODEL,
    Server,
    metadata,
    run_in_label_env,
    running_label_server,
    write_json,
)
from PIL import Image
from repo_paths import REPO

# both modules need .venv-label, which one worker builds: they run on that worker, while the other goes on
pytestmark = pytest.mark.xdist_group("monailabel")

TRAINING_TIMEOUT_S = 900

VOLUME_ID, PICTURE_ID, SECOND_PICTURE_ID = "mni152_las", "mni152_axial", "mni152_coronal"


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
