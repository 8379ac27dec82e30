"""The one source of truth for every bundle in ``bundles/``: a table of bundles and the configs rendered from it.

Each bundle folder is self-contained (it can be zipped and run anywhere ``common`` is installed), but none is
kept by hand: ``python -m common bundles render`` writes them all from :data:`BUNDLES`, and
``python -m common bundles check`` (run by the tests) fails when a checked-in bundle differs from its rendering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import __version__
from .data import get_dataset
from .io.orientation import DISPLAY_AXCODES
from .networks import network_facts
from .transforms import (
    INPUT_SIZE,
    eval_transforms_config,
    intensity_config,
    train_transforms_config,
    volume_transforms_config,
)

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BUNDLE_VERSION = __version__  # a bundle carries the version of the package that renders it


@dataclass(frozen=True)
class Recipe:
    """A training recipe; the defaults are the GDLA paper's (pvt_decoders.md, "Training recipe").

    ``loss``: ``"boundary_dou"`` (the GDLA paper) or ``"dice_ce"`` with ``ce_weight`` / ``dice_weight``.
    """

    epochs: int
    warmup_epochs: int
    batch_size: int
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    loss: str = "boundary_dou"
    ce_weight: float = 0.5
    dice_weight: float = 0.5
    source: str = "the GDLA paper's recipe"


RECIPES = {
    "synapse": Recipe(200, 10, 8),
    "acdc": Recipe(150, 10, 16),
    "busi": Recipe(100, 10, 16),
    "ham10000": Recipe(150, 10, 16),
    "ph2": Recipe(100, 5, 16),
    "uwmgi": Recipe(
        100,
        5,
        16,
        learning_rate=1e-4,
        loss="dice_ce",
        source="our choice (the KV-attention study's training details are not in our sources)",
    ),
}

#: MLLA-UNet's recipe (other_models.md): AdamW lr 1e-4, weight decay 0.01, 0.4 CE + 0.6 Dice on Synapse
MLLA_RECIPES = {
    "synapse": Recipe(
        200,
        10,
        8,
        learning_rate=1e-4,
        weight_decay=0.01,
        loss="dice_ce",
        ce_weight=0.4,
        dice_weight=0.6,
        source="MLLA-UNet's recipe",
    ),
    "acdc": Recipe(150, 10, 16, learning_rate=1e-4, weight_decay=0.01, loss="dice_ce", source="MLLA-UNet's recipe"),
}


@dataclass(frozen=True)
class DatasetCard:
    """What a model card says about a dataset."""

    title: str
    folder: str
    modality: str
    data_format: str
    source: str
    license: str
    citation: str


DATASET_CARDS = {
    "synapse": DatasetCard(
        "Synapse multi-organ CT (MICCAI 2015 Beyond the Cranial Vault), TransUNet preprocessed release",
        "/data/Synapse",
        "CT",
        "hounsfield",
        "https://www.synapse.org/#!Synapse:syn3193805 (BTCV); TransUNet preprocessed release (train_npz, test_vol_h5)",
        "The BTCV data are distributed through Synapse under the challenge's data use terms (registration "
        "required; research use; no redistribution). This bundle contains no images.",
        "Landman B. et al. MICCAI Multi-Atlas Labeling Beyond the Cranial Vault - Workshop and Challenge (2015).",
    ),
    "acdc": DatasetCard(
        "ACDC (Automated Cardiac Diagnosis Challenge) cine MRI",
        "/data/ACDC",
        "MR",
        "magnitude",
        "https://www.creatis.insa-lyon.fr/Challenge/acdc/",
        "ACDC data are provided by the challenge organisers for research use under their terms of use "
        "(registration required; no redistribution). This bundle contains no images.",
        "Bernard O. et al. Deep Learning Techniques for Automatic MRI Cardiac Multi-structures Segmentation and "
        "Diagnosis: Is the Problem Solved? IEEE TMI 37(11), 2514-2525 (2018).",
    ),
    "busi": DatasetCard(
        "BUSI (Breast Ultrasound Images)",
        "/data/Dataset_BUSI_with_GT",
        "US",
        "magnitude",
        "https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
        "BUSI is released for research use by its authors (CC BY 4.0 as distributed on public mirrors; check the "
        "copy you download). This bundle contains no images.",
        "Al-Dhabyani W., Gomaa M., Khaled H., Fahmy A. Dataset of breast ultrasound images. Data in Brief 28, "
        "104863 (2020).",
    ),
    "ham10000": DatasetCard(
        "HAM10000 dermoscopy images with lesion segmentations",
        "/data/HAM10000",
        "dermoscopy",
        "magnitude",
        "https://doi.org/10.7910/DVN/DBW86T (Harvard Dataverse)",
        "HAM10000 is released under CC BY-NC 4.0 (non-commercial). This bundle contains no images.",
        "Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of multi-source "
        "dermatoscopic images of common pigmented skin lesions. Scientific Data 5, 180161 (2018).",
    ),
    "uwmgi": DatasetCard(
        "UW-Madison GI Tract Image Segmentation (abdominal MRI, Kaggle 2022)",
        "/data/uw-madison-gi-tract",
        "MR",
        "magnitude",
        "https://www.kaggle.com/competitions/uw-madison-gi-tract-image-segmentation",
        "The competition data are available under the Kaggle competition rules (non-commercial research use; "
        "no redistribution). This bundle contains no images.",
        "Happel C. et al. UW-Madison GI Tract Image Segmentation. Kaggle (2022).",
    ),
    "ph2": DatasetCard(
        "PH2 dermoscopy images",
        "/data/PH2Dataset",
        "dermoscopy",
        "magnitude",
        "https://www.fc.up.pt/addi/ph2%20database.html",
        "PH2 is made available by its authors for research purposes (see the database page). This bundle "
        "contains no images.",
        "Mendonca T. et al. PH2 - A dermoscopic image database for research and benchmarking. IEEE EMBC (2013).",
    ),
}


@dataclass(frozen=True)
class BundleSpec:
    """One bundle: a registered network trained on one dataset, with the paper's row it should reproduce."""

    network: str
    dataset: str
    paper_model: str
    network_args: dict = field(default_factory=dict)
    recipe: Recipe | None = None  # default: RECIPES[dataset]
    card: DatasetCard | None = None  # default: DATASET_CARDS[dataset]
    dataset_root: str | None = None  # for layouts whose labels are read from the folder (nnunet)

    @property
    def training_recipe(self) -> Recipe:
        return self.recipe or RECIPES[self.dataset]

    @property
    def dataset_card(self) -> DatasetCard:
        return self.card or DATASET_CARDS[self.dataset]

    @property
    def name(self) -> str:
        return f"{self.network}_{self.dataset}_segmentation"


BUNDLES = [
    BundleSpec("pvt_gdla", "synapse", "PVT-GDLA"),
    BundleSpec("pvt_gdla", "acdc", "PVT-GDLA"),
    BundleSpec("pvt_gdla", "busi", "PVT-GDLA"),
    BundleSpec("pvt_gdla", "ham10000", "PVT-GDLA"),
    BundleSpec("pvt_gdla", "ph2", "PVT-GDLA"),
    BundleSpec("pvt_linearattn", "synapse", "PVT-LinearAttn"),
    BundleSpec("pvt_selfattn", "synapse", "PVT-SelfAttn"),
    BundleSpec("pvt_diffattn", "synapse", "PVT-DiffAttn"),
    BundleSpec("pvt_emcad", "synapse", "PVT-EMCAD-B2"),
    BundleSpec("pvt_emcad_xattnres", "synapse", "PVT-EMCAD-B2 + XAttnRes"),
    BundleSpec("pvt_gdla_xattnres", "synapse", "PVT-GDLA + XAttnRes"),
    BundleSpec("mlla_unet", "synapse", "MLLA-UNet", recipe=MLLA_RECIPES["synapse"]),
    BundleSpec("mlla_unet", "acdc", "MLLA-UNet", recipe=MLLA_RECIPES["acdc"]),
    BundleSpec("setr", "uwmgi", "SETR (KV)", network_args={"attention": "kv"}),
    BundleSpec("transunet", "uwmgi", "TransUNet (KV)", network_args={"attention": "kv"}),
    BundleSpec("cvt", "uwmgi", "CvT (KV)", network_args={"attention": "kv"}),
]

IMPORTS = ["$import os", "$import sys", "$import torch", "$import ignite", "$import monai"]

#: puts a released bundle's own copy of ``common`` (``scripts/common``, written by ``release pack``) first on the
#: import path; in the repository (no ``scripts/``) ``common`` comes from the environment. Every component that
#: imports ``common`` requires it, so the configs work in both places and from any working folder.
BUNDLED_CODE = (
    "$sys.path.insert(0, @scripts_dir) if os.path.isdir(os.path.join(@scripts_dir, 'common')) "
    "and @scripts_dir not in sys.path else None"
)


def find_bundle(name: str) -> BundleSpec:
    """The bundle named ``name`` (folder name)."""
    for spec in BUNDLES:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown bundle {name!r}; expected one of {[s.name for s in BUNDLES]}")


def dataset_reader(spec: BundleSpec):
    return get_dataset(spec.dataset, root=spec.dataset_root) if spec.dataset_root else get_dataset(spec.dataset)


def class_names(spec: BundleSpec) -> list[str]:
    """Output channel names, background first."""
    return list(dataset_reader(spec).label_names)


def published_metrics(spec: BundleSpec) -> dict:
    """The paper's row for this bundle: Dice in percent, HD95 in voxels (``eval_metrics`` of the metadata)."""
    from .metrics import PUBLISHED_RESULTS

    row = PUBLISHED_RESULTS.get(spec.dataset, {}).get(spec.paper_model)
    if row is None:
        return {}
    metrics: dict = {"mean_dice": row.mean_dice}
    if row.hd95 is not None:
        metrics["hd95"] = row.hd95
    if row.class_dice:
        metrics["class_dice"] = dict(row.class_dice)
    metrics["units"] = "Dice in percent; HD95 in voxels, as published"
    return metrics


def _inferer(spec: BundleSpec, precision: str) -> dict:
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


def uses_pvt_encoder(spec: BundleSpec) -> bool:
    """Whether the bundle's network starts from ImageNet encoder weights (its registered facts say so)."""
    return network_facts(spec.network).encoder_weights_file is not None


def citations(spec: BundleSpec) -> list[str]:
    """The papers behind the bundle's network (its registered facts) and data."""
    return [*network_facts(spec.network).citations, spec.dataset_card.citation]


def _network_def(spec: BundleSpec, weights: str) -> dict:
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


def _reader(spec: BundleSpec) -> dict:
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


def checkpoint_selection(spec: BundleSpec) -> str:
    """How the bundle's training selects its checkpoint, in words (Synapse: the authors' protocol by default)."""
    from .data.synapse import SELECTION_TEXT

    return SELECTION_TEXT["test_set"] if spec.dataset == "synapse" else "checkpoint selected on the validation split"


def _shared(spec: BundleSpec, encoder_weights: str | None) -> dict:
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
        **_reader(spec),
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "spatial_size": list(INPUT_SIZE),
        "num_workers": 4,
        "amp": False,
        "encoder_weights": encoder_weights,
        "network_def": _network_def(spec, "@encoder_weights"),
        "network": "$@network_def.to(@device)",
    }


def _evaluation_section(spec: BundleSpec, handlers: list) -> dict:
    """``validate``: datalist, preprocessing, loader, inferer, post-processing and evaluator (validation split)."""
    reader = dataset_reader(spec)
    postprocessing = (
        []
        if reader.multilabel
        else [{"_target_": "AsDiscreted", "keys": ["pred", "label"], "to_onehot": [reader.num_classes] * 2}]
    )
    return {
        "datalist": "$@reader.datalists(@dataset_dir, @split_file)['validation']",
        "preprocessing": eval_transforms_config(reader, "@spatial_size"),
        "dataset": {"_target_": "Dataset", "data": "@validate#datalist", "transform": "@validate#preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@validate#dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": "@num_workers",
        },
        "inferer": _inferer(spec, "float32"),
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
        "key_metric": {
            "val_mean_dice": {
                "_target_": "common.evaluation.ClassMeanDice",
                "include_background": bool(reader.multilabel),
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            }
        },
        "handlers": handlers,
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@validate#dataloader",
            "network": "@network",
            "inferer": "@validate#inferer",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": "@validate#key_metric",
            "val_handlers": "@validate#handlers",
            "amp": "@amp",
        },
    }


def _loss(spec: BundleSpec) -> dict:
    recipe = spec.training_recipe
    if recipe.loss == "boundary_dou":
        base = {"_target_": "common.losses.BoundaryDoULoss"}
    else:
        base = {
            "_target_": "common.losses.DiceCrossEntropyLoss",
            "lambda_dice": recipe.dice_weight,
            "lambda_ce": recipe.ce_weight,
            "sigmoid": bool(dataset_reader(spec).multilabel),
        }
    return {"_target_": "common.losses.DeepSupervisionLoss", "loss": base}


def _checkpoint_loader(load_path: str = "@pretrained_path", switch: str | None = "load_pretrain") -> dict:
    """Loads ``models/model.pt`` (a plain state dict) into the network; ``switch`` names the config flag for it."""
    loader = {
        "_target_": "CheckpointLoader",
        "load_path": load_path,
        "load_dict": {"model": "@network"},
        "map_location": "@device",
    }
    return {"_disabled_": f"$not @{switch}", **loader} if switch else loader


def _training_dataset(reader, datalist: str, seed: str) -> dict:
    """``train#dataset``: pictures map one to one; volumes are cut into axial slices (common.data.slices)."""
    dataset = {
        "_target_": "common.data.slices.training_dataset",
        "dataset": "@reader",
        "datalist": datalist,
        "transform": "@train#preprocessing",
        "seed": seed,
    }
    if reader.stored_as != "slices":
        dataset["volume_transform"] = "@train#volume_preprocessing"
    return dataset


def train_config(spec: BundleSpec) -> dict:
    """``configs/train.json``: the published recipe through MONAI's SupervisedTrainer.

    ``train#preprocessing`` is the augmentation of one picture or slice; bundles whose dataset is stored as volumes
    also have ``train#volume_preprocessing`` (load, orient, normalise a volume before it is sliced).
    """
    recipe = spec.training_recipe
    reader = dataset_reader(spec)
    resume_objects = {"network": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler"}
    loss_output = "$monai.handlers.from_engine(['loss'], first=True)"
    validate = _evaluation_section(
        spec,
        [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "iteration_log": False},
            {
                "_target_": "CheckpointSaver",
                "save_dir": "@ckpt_dir",
                "save_dict": {"model": "@network"},
                "save_key_metric": True,
                "key_metric_filename": "model.pt",
            },
        ],
    )
    preprocessing = {"preprocessing": train_transforms_config(reader, "@spatial_size")}
    if reader.stored_as != "slices":
        preprocessing["volume_preprocessing"] = volume_transforms_config(reader)
    return {
        **_shared(spec, encoder_weights=None),
        "output_dir": "$@bundle_root + '/runs'",
        "load_pretrain": False,
        "pretrained_path": "$@ckpt_dir + '/model.pt'",
        "epochs": recipe.epochs,
        "warmup_epochs": recipe.warmup_epochs,
        "batch_size": recipe.batch_size,
        "learning_rate": recipe.learning_rate,
        "weight_decay": recipe.weight_decay,
        "val_interval": 1,
        "seed": 42,
        "iterations_per_epoch": {
            "_target_": "common.training.iterations_per_epoch",
            "dataset": "@train#dataset",
            "batch_size": "@batch_size",
            "reader": "@reader",
        },
        "loss": _loss(spec),
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "params": {
                "_target_": "common.training.decay_param_groups",
                "network": "@network",
                "weight_decay": "@weight_decay",
            },
            "lr": "@learning_rate",
            "betas": [0.9, 0.999],
            "eps": 1e-8,
        },
        "lr_scheduler": {
            "_target_": "common.training.WarmupCosineLR",
            "optimizer": "@optimizer",
            "warmup_steps": "$@warmup_epochs * @iterations_per_epoch",
            "total_steps": "$@train#trainer#max_epochs * @iterations_per_epoch",
        },
        "train": {
            "datalist": "$@reader.datalists(@dataset_dir, @split_file)['train']",
            **preprocessing,
            "dataset": _training_dataset(reader, "@train#datalist", "@seed"),
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@train#dataset",
                "batch_size": "@batch_size",
                "shuffle": "$not isinstance(@train#dataset, torch.utils.data.IterableDataset)",
                "num_workers": "@num_workers",
            },
            "inferer": {"_target_": "SimpleInferer"},
            "handlers": [
                _checkpoint_loader(),
                {
                    "_target_": "common.training.ResumeFromLatest",
                    "directory": "@ckpt_dir",
                    "objects": resume_objects,
                    "map_location": "@device",
                },
                {"_target_": "common.training.GradientClipping", "max_norm": 1.0},
                {
                    "_target_": "LrScheduleHandler",
                    "lr_scheduler": "@lr_scheduler",
                    "epoch_level": False,
                    "print_lr": False,
                },
                {
                    "_target_": "ValidationHandler",
                    "validator": "@validate#evaluator",
                    "epoch_level": True,
                    "interval": "@val_interval",
                },
                {"_target_": "StatsHandler", "tag_name": "train_loss", "output_transform": loss_output},
                {
                    "_target_": "TensorBoardStatsHandler",
                    "log_dir": "@output_dir",
                    "tag_name": "train_loss",
                    "output_transform": loss_output,
                },
                {"_target_": "ignite.handlers.ProgressBar", "persist": True},
                {"_target_": "common.training.SaveForResume", "directory": "@ckpt_dir", "objects": resume_objects},
            ],
            "trainer": {
                "_target_": "SupervisedTrainer",
                "max_epochs": "@epochs",
                "epoch_length": "@iterations_per_epoch",
                "device": "@device",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "loss_function": "@loss",
                "optimizer": "@optimizer",
                "inferer": "@train#inferer",
                "train_handlers": "@train#handlers",
                "amp": "@amp",
            },
        },
        "validate": validate,
        "initialize": ["@bundled_code", "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train#trainer.run()"],
    }


def evaluate_config(spec: BundleSpec) -> dict:
    """``configs/evaluate.json``: an overlay on train.json (the model zoo's
    ``--config_file "['configs/train.json','configs/evaluate.json']"``) that runs ``validate#evaluator`` on the test
    split with the paper's protocol and writes per-case and summary CSVs."""
    reader = dataset_reader(spec)
    mode = "multilabel" if reader.multilabel else ("volume" if reader.spatial_dims == 3 else "image")
    names = class_names(spec)
    writer = {
        "_target_": "common.evaluation.CaseMetricsWriter",
        "output_dir": "@output_dir",
        "class_names": names if reader.multilabel else names[1:],
        "mode": mode,
        "published": "@published",
        "title": "ours",
        "paper_rule": "transunet" if spec.dataset == "synapse" else "per_class",
        "selection": (
            {
                "_target_": "common.data.synapse.selection_text",
                "_requires_": "@bundled_code",
                "validation": "@validation",
            }
            if spec.dataset == "synapse"
            else checkpoint_selection(spec)
        ),
    }
    return {
        "encoder_weights": "random",
        "output_dir": "$@bundle_root + '/eval'",
        "published": published_metrics(spec),
        "validate#datalist": "$@reader.datalists(@dataset_dir, @split_file)['test']",
        "validate#handlers": [
            _checkpoint_loader("$@ckpt_dir + '/model.pt'", switch=None),
            {"_target_": "StatsHandler", "iteration_log": False},
            writer,
        ],
        "dataset": "@validate#dataset",
        "inferer": "@validate#inferer",
        "evaluator": "@validate#evaluator",
        "initialize": ["@bundled_code", "$monai.utils.set_determinism(seed=0)"],
        "run": ["$@validate#evaluator.run()"],
    }


#: a volume bundle's evaluator iteration: reads, segments and writes each volume slab by slab
STREAMED_ITERATION = {
    "_target_": "common.bundle_streaming.StreamedVolumeIteration",
    "_requires_": "@bundled_code",
    "preprocessing": "@preprocessing",
    "postprocessing": "@postprocessing",
}


def inference_config(spec: BundleSpec) -> dict:
    """``configs/inference.json``: every image in ``dataset_dir`` (or ``datalist``) -> a mask of the same size."""
    reader = dataset_reader(spec)
    three_d = reader.spatial_dims == 3
    suffix = "*.nii*" if three_d else "*.png"
    intensity = intensity_config(
        ("ct_window" if spec.dataset_card.modality == "CT" else "minmax") if three_d else "minmax"
    )
    if three_d:
        load = [
            {"_target_": "LoadImaged", "keys": "image", "image_only": False},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": DISPLAY_AXCODES},
        ]
        save = {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "seg",
            "output_dtype": "$numpy.uint8",
            "resample": False,
            "separate_folder": False,
        }
    else:
        load = [{"_target_": "common.transforms.LoadImage2Dd", "keys": "image", "channels": reader.image_channels}]
        save = {
            "_target_": "common.io.mask_saving.SaveMask2Dd",
            "keys": "pred",
            "output_dir": "@output_dir",
            "num_classes": reader.num_classes,
        }
        if reader.multilabel:
            save["channel_names"] = list(reader.label_names)
    postprocessing = (
        [
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": True,
            }
        ]
        if three_d
        else []
    )
    shared = {
        k: v
        for k, v in _shared(spec, encoder_weights="random").items()
        if k not in ("reader", "dataset_name", "split_file")
    }
    return {
        **shared,
        "imports": IMPORTS + ["$import glob", "$import numpy"],
        "dataset_dir": "$@bundle_root + '/sample_data'",
        "input_dir": "@dataset_dir",
        "output_dir": "$@bundle_root + '/predictions'",
        "load_pretrain": True,
        "pretrained_path": "$@ckpt_dir + '/model.pt'",
        "datalist": f"$sorted(glob.glob(os.path.join(@input_dir, '{suffix}')))",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [*load, intensity, {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": {
                "_target_": "common.data.inputs.inference_datalist",
                "_requires_": "@bundled_code",
                "items": "@datalist",
                "where": f"$os.path.join(@input_dir, '{suffix}')",
            },
            # volumes: the data loader hands over file names; the streamed iteration reads them slab by slab
            **({} if three_d else {"transform": "@preprocessing"}),
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0 if three_d else "@num_workers",
        },
        "inferer": _inferer(spec, "auto"),
        "postprocessing": {"_target_": "Compose", "transforms": [*postprocessing, save]},
        **({"streamed_iteration": STREAMED_ITERATION} if three_d else {}),
        "handlers": [
            _checkpoint_loader(),
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            **({"iteration_update": "@streamed_iteration"} if three_d else {"postprocessing": "@postprocessing"}),
            "val_handlers": "@handlers",
            "amp": "@amp",
        },
        "initialize": ["@bundled_code", "$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


_DDP_DEVICE = "$torch.device(f'cuda:{os.environ[\"LOCAL_RANK\"]}' if torch.cuda.is_available() else 'cpu')"
_DDP_NETWORK = {
    "_target_": "torch.nn.parallel.DistributedDataParallel",
    "module": "$@network_def.to(@device)",
    "device_ids": "$[@device] if torch.cuda.is_available() else None",
}
_DDP_INIT = [
    "@bundled_code",
    "$import torch.distributed as dist",
    "$dist.is_initialized() or dist.init_process_group(backend=@backend)",
    "$torch.cuda.set_device(@device) if torch.cuda.is_available() else None",
]
_RANK_SLICE = "[torch.distributed.get_rank()::torch.distributed.get_world_size()]"


def multi_gpu_config(spec: BundleSpec) -> dict:
    """``configs/multi_gpu_train.json``: overrides of train.json for ``torchrun`` (NCCL on GPUs, gloo on CPUs)."""
    reader = dataset_reader(spec)
    return {
        "device": _DDP_DEVICE,
        "backend": "$'nccl' if torch.cuda.is_available() else 'gloo'",
        "network": _DDP_NETWORK,
        "train#dataset": _training_dataset(
            reader, f"$@train#datalist{_RANK_SLICE}", "$@seed + torch.distributed.get_rank()"
        ),
        "validate#datalist": f"$@reader.datalists(@dataset_dir, @split_file)['validation']{_RANK_SLICE}",
        "train#trainer#train_handlers": "$@train#handlers if torch.distributed.get_rank() == 0 else "
        "[h for h in @train#handlers if type(h).__name__ in ('CheckpointLoader', "
        "'ResumeFromLatest', 'GradientClipping', 'LrScheduleHandler', "
        "'ValidationHandler')]",
        "validate#evaluator#val_handlers": "$@validate#handlers if torch.distributed.get_rank() == 0 else None",
        "initialize": [*_DDP_INIT, "$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@train#trainer.run()"],
        "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
    }


def raw_btcv_config(spec: BundleSpec) -> dict:
    """``configs/raw_btcv.json`` (Synapse bundles): an overlay on train.json (and evaluate.json after it) that reads
    the raw BTCV NIfTI layout (``synapse_raw``: volumes windowed and relabelled here) instead of TransUNet's
    pre-processed release, with that layout's transforms from the same recipe functions."""
    raw = get_dataset("synapse_raw")
    return {
        "dataset_name": "synapse_raw",
        "train#preprocessing": train_transforms_config(raw, "@spatial_size"),
        "train#volume_preprocessing": volume_transforms_config(raw),
        "train#dataset#volume_transform": "@train#volume_preprocessing",
        "validate#preprocessing": eval_transforms_config(raw, "@spatial_size"),
    }


def multi_gpu_evaluate_config(spec: BundleSpec) -> dict:
    """``configs/multi_gpu_evaluate.json``: overrides of train.json + evaluate.json for ``torchrun``.

    Each process evaluates every ``world_size``-th test case; MeanDice is gathered across processes, and the
    per-case CSV writer gathers the rows of every process on rank 0.
    """
    return {
        "device": _DDP_DEVICE,
        "backend": "$'nccl' if torch.cuda.is_available() else 'gloo'",
        "network": _DDP_NETWORK,
        "validate#datalist": f"$@reader.datalists(@dataset_dir, @split_file)['test']{_RANK_SLICE}",
        "initialize": [*_DDP_INIT, "$monai.utils.set_determinism(seed=0)"],
        "run": ["$@validate#evaluator.run()"],
        "finalize": ["$dist.is_initialized() and dist.destroy_process_group()"],
    }


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
#: TorchScript export traces the network (torch.jit.script cannot compile timm's PVT-v2 encoder and the decoders'
#: Python); ``monai.bundle ckpt_export`` needs ``--use_trace True`` and takes the input shape from this metadata
TORCHSCRIPT_EXPORT = {
    "use_trace": True,
    "command": "python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt "
    "--meta_file configs/metadata.json --config_file configs/inference.json --use_trace True",
}
NOT_PUBLISHED = "not published: the cited papers report no row for this model on this dataset"


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package)
