"""The one source of truth for every bundle in ``bundles/``: the table of bundles and what each one is.

A :class:`BundleSpec` names a registered network, the dataset it is trained on (with its :class:`Recipe` and
:class:`DatasetCard`) and the paper's row it should reproduce; :data:`BUNDLES` lists them all. Each bundle folder
is self-contained (it can be zipped and run anywhere ``common`` is installed), but none is kept by hand:
``python -m common bundles render`` writes them all from this table (the configs:
:mod:`common.bundle.train_configs`, :mod:`common.bundle.inference_config`, :mod:`common.bundle.metadata`; the prose:
:mod:`common.bundle.cards`), and ``python -m common bundles check`` (run by the tests) fails when a checked-in
bundle differs from its rendering.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..data import get_dataset
from ..evaluation.published import published_row, to_eval_metrics
from ..networks import network_facts


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


#: configs that are overlays, run on top of train.json as the model zoo runs them (each file over the ones before)
OVERLAYS = {
    "evaluate": ["train", "evaluate"],
    "multi_gpu_train": ["train", "multi_gpu_train"],
    "multi_gpu_evaluate": ["train", "evaluate", "multi_gpu_evaluate"],
    "raw_btcv_train": ["train", "raw_btcv"],
    "raw_btcv_evaluate": ["train", "raw_btcv", "evaluate"],
}


def config_files(bundle: str | os.PathLike, config: str) -> list[str]:
    """The files ``monai.bundle run --config_file`` gets for ``config`` of ``bundle`` (e.g. ``"evaluate"``:
    ``configs/train.json`` and ``configs/evaluate.json``, in that order)."""
    return [str(Path(bundle) / "configs" / f"{name}.json") for name in OVERLAYS.get(config, [config])]


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
    row = published_row(spec.dataset, spec.paper_model)
    return {} if row is None else to_eval_metrics(row)


def citations(spec: BundleSpec) -> list[str]:
    """The papers behind the bundle's network (its registered facts) and data."""
    return [*network_facts(spec.network).citations, spec.dataset_card.citation]


def checkpoint_selection(spec: BundleSpec) -> str:
    """How the bundle's training selects its checkpoint, in words (Synapse: the authors' protocol by default)."""
    from ..data.synapse import SELECTION_TEXT

    return SELECTION_TEXT["test_set"] if spec.dataset == "synapse" else "checkpoint selected on the validation split"
