"""Config components every bundle config shares: imports, the network definition, the dataset reader, the inferer
and the checkpoint loader (``configs/train.json`` and ``configs/inference.json`` are built from them)."""

from __future__ import annotations

from ..data.input_size import INPUT_SIZE
from ..networks import network_facts
from .specs import BundleSpec, dataset_reader

IMPORTS = ["$import os", "$import sys", "$import torch", "$import ignite", "$import monai"]

#: puts a released bundle's own copy of ``common`` (``scripts/common``, written by ``release pack``) first on the
#: import path; in the repository (no ``scripts/``) ``common`` comes from the environment. Every component that
#: imports ``common`` requires it, so the configs work in both places and from any working folder.
BUNDLED_CODE = (
    "$sys.path.insert(0, @scripts_dir) if os.path.isdir(os.path.join(@scripts_dir, 'common')) "
    "and @scripts_dir not in sys.path else None"
)


def inferer_config(spec: BundleSpec, precision: str) -> dict:
    """Slice-wise inferer; CT/MR follow the authors' protocol (cubic spline in, nearest out).

    Validation and evaluation run ``precision="float32"``, the authors' arithmetic, so that reproduced metrics
    are theirs; inference runs ``"auto"`` (float16 on CUDA, bfloat16 on CPUs with native bfloat16).
    """
    inferer = {
        "_target_": "common.inference.SliceInferer2D",
        "roi_size": "@spatial_size",
        "sw_batch_size": 4,
        "precision": precision,
    }
    reader = dataset_reader(spec)
    if reader.augmentation == "photo":
        inferer.update(interpolation="bilinear", align_corners=False)
    if reader.multilabel:
        inferer.update(activation="sigmoid")
    return inferer


def network_def_config(spec: BundleSpec, weights: str) -> dict:
    """``network_def``: the registered network with the dataset's channels and classes; ``weights`` feeds
    ``encoder_weights`` for networks that start from ImageNet weights."""
    reader = dataset_reader(spec)
    definition = {
        "_target_": "common.networks.create_network",
        "name": spec.network,
        "in_channels": reader.image_channels,
        "num_classes": reader.num_classes,
    }
    facts = network_facts(spec.network)
    if facts.deep_supervision:
        definition["deep_supervision"] = True
    if facts.encoder_weights_file is not None:
        definition["encoder_weights"] = weights
    return {"_requires_": "@bundled_code", **definition, **spec.network_args}


def reader_config(spec: BundleSpec) -> dict:
    """The dataset reader; Synapse's ``validation`` switch picks the checkpoint-selection set."""
    reader = {
        "_target_": "common.data.get_dataset",
        "_requires_": "@bundled_code",
        "name": "@dataset_name",
        "root": "@dataset_dir",
    }
    if spec.dataset != "synapse":
        return {"reader": reader}
    validation_cases = {
        "_target_": "common.data.synapse.validation_cases_for",
        "_requires_": "@bundled_code",
        "validation": "@validation",
    }
    return {"validation": "test_set", "reader": {**reader, "validation_cases": validation_cases}}


def shared_config(spec: BundleSpec, encoder_weights: str | None) -> dict:
    """The entries every config starts from: paths, the dataset reader, device, input size and network."""
    card = spec.dataset_card
    return {
        "imports": IMPORTS,
        "bundle_root": ".",
        "scripts_dir": "$os.path.join(@bundle_root, 'scripts')",
        "bundled_code": BUNDLED_CODE,
        "ckpt_dir": "$@bundle_root + '/models'",
        "dataset_dir": card.folder,
        "dataset_name": spec.dataset,
        "split_file": None,
        **reader_config(spec),
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "spatial_size": list(INPUT_SIZE),
        "num_workers": 4,
        "amp": False,
        "encoder_weights": encoder_weights,
        "network_def": network_def_config(spec, "@encoder_weights"),
        "network": "$@network_def.to(@device)",
    }


def checkpoint_loader_config(load_path: str = "@pretrained_path", switch: str | None = "load_pretrain") -> dict:
    """Loads ``models/model.pt`` (a plain state dict) into the network; ``switch`` names the config flag for it."""
    loader = {
        "_target_": "CheckpointLoader",
        "load_path": load_path,
        "load_dict": {"model": "@network"},
        "map_location": "@device",
    }
    return {"_disabled_": f"$not @{switch}", **loader} if switch else loader
