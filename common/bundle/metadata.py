"""The metadata of a bundle: ``configs/metadata.json`` (MONAI bundle specification)."""

from __future__ import annotations

from .. import __version__
from ..data.input_size import INPUT_SIZE
from .specs import BundleSpec, checkpoint_selection, citations, class_names, dataset_reader, published_metrics

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BUNDLE_VERSION = __version__  # a bundle carries the version of the package that renders it


def metadata(spec: BundleSpec) -> dict:
    """``configs/metadata.json`` (MONAI bundle specification)."""
    import monai
    import numpy
    import torch

    reader, card = dataset_reader(spec), spec.dataset_card
    names = class_names(spec)
    return {
        "schema": SCHEMA_URL,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "first release: configs for training, evaluation and inference"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {package: _version(package) for package in REQUIRED_PACKAGES},
        "supported_apps": {"monai-label": MONAI_LABEL_VERSION},
        "torchscript_export": TORCHSCRIPT_EXPORT,
        "name": f"{spec.paper_model} {card.title.split(' (')[0]} segmentation",
        "task": f"2-D segmentation of {', '.join(names[1:])} in {card.modality} images",
        "description": (
            f"{spec.paper_model} ({spec.network}) trained on {card.title}. 2-D network; volumes are segmented "
            f"slice by slice. Training recipe: {spec.training_recipe.source}."
        ),
        "authors": "gdla-bundles contributors (implementation); the cited papers' authors (methods)",
        "copyright": "Copyright (c) gdla-bundles contributors",
        "data_source": card.source,
        "data_type": "nifti" if reader.spatial_dims == 3 else "png",
        "image_classes": f"{reader.image_channels}-channel image, intensity scaled to [0, 1]",
        "label_classes": ", ".join(f"{i} {n}" for i, n in enumerate(names)),
        "pred_classes": f"{reader.num_classes} channels, argmax gives the label map",
        "eval_metrics": published_metrics(spec) or {"mean_dice": NOT_PUBLISHED},
        "checkpoint_selection": checkpoint_selection(spec),
        "intended_use": "Research use only: not for clinical diagnosis or treatment decisions.",
        "references": citations(spec),
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": card.data_format,
                    "modality": card.modality,
                    "num_channels": reader.image_channels,
                    "spatial_shape": list(INPUT_SIZE),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): "image" for i in range(reader.image_channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation" if not reader.multilabel else "classes",
                    "num_channels": reader.num_classes,
                    "spatial_shape": list(INPUT_SIZE),
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {str(i): n for i, n in enumerate(names)},
                }
            },
        },
    }


#: what ``common`` imports beyond torch, numpy and MONAI (a release archive carries ``common`` itself), and what
#: ``python -m monai.bundle`` needs for its command line (fire) and large_files.yml (pyyaml)
REQUIRED_PACKAGES = ("nibabel", "pytorch-ignite", "timm", "scipy", "pillow", "h5py", "pydicom", "fire", "pyyaml")
#: the MONAI Label release ``monailabel_app/`` serves the bundles with (constraints-label.txt)
MONAI_LABEL_VERSION = "0.8.5"
#: TorchScript export traces the network: torch.jit.script cannot compile the decoders' Python (each network names its
#: obstacle), so the zoo's default command gets the same trace through :mod:`common.networks.scripting`; with
#: ``--use_trace True``, as here, ``monai.bundle ckpt_export`` takes the input shape from this metadata
TORCHSCRIPT_EXPORT = {
    "use_trace": True,
    "command": "python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt "
    "--meta_file configs/metadata.json --config_file configs/inference.json --use_trace True",
}
NOT_PUBLISHED = "not published: the cited papers report no row for this model on this dataset"


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package)
