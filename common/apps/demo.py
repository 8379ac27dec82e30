"""``python -m common demo`` (``make demo``): a real segmentation job, start to finish, on data shipped with nilearn.

Brain tissue (background, CSF, grey matter, white matter) on the MNI152 T1 template (ICBM 2009a, 2 mm) that
nilearn ships, on the CPU, in about six minutes on two free cores (training is capped at ``--minutes``):

1. build an nnU-Net raw dataset: the T1 volume cut into axial slabs saved as separate cases, with a contiguous
   held-out slab (test, never trained on or used for model selection) and a validation slab (model selection);
   labels from nilearn's grey/white matter probability maps and brain mask (:func:`tissue_labels`);
2. render a PVT-GDLA bundle for it from the project's bundle templates (the published network, PVT-v2-b2
   encoder, at a 128 x 128 input instead of 224 x 224; the encoder starts from random weights because no
   ImageNet weights are available offline) and train it with its ``train.json``;
3. evaluate the held-out slab with its ``evaluate.json`` and print the per-class Dice;
4. segment the whole volume with ``segment`` and write the NIfTI, an overlay PNG and a learning-curve plot.

Everything goes under ``--output`` (default ``demo_output``); the folders the demo writes there are rebuilt on
every run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from common.bundle.render import bundle_files
from common.bundle.specs import BundleSpec, DatasetCard, Recipe, config_files
from common.data.splits import write_splits
from common.evaluation.case_tables import read_csv
from common.io.atomic import atomic_path

TISSUES = ("background", "CSF", "grey matter", "white matter")
DATASET_FOLDER = "Dataset900_MNI152Tissue"
HELD_OUT_SLICES = (40, 56)  # axial slices [start, stop) of the 2 mm template: ventricles and basal ganglia
VALIDATION_SLICES = (64, 72)  # upper brain, away from the held-out slab
MNI152_CARD = DatasetCard(
    title="MNI152 T1 template (ICBM 2009a, 2 mm) with tissue labels, as shipped by nilearn",
    folder="",  # set to the dataset the demo writes
    modality="MR",
    data_format="magnitude",
    source="nilearn.datasets.load_mni152_template / load_mni152_gm_template / load_mni152_wm_template / "
    "load_mni152_brain_mask (files inside the nilearn package; no download)",
    license="The ICBM 2009 templates may be used, copied and distributed freely with their copyright notice "
    "(Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, "
    "McGill University).",
    citation="Fonov V. S., Evans A. C., McKinstry R. C., Almli C. R., Collins D. L. Unbiased nonlinear average "
    "age-appropriate brain templates from birth to adulthood. NeuroImage 47, Suppl. 1, S102 (2009).",
)


@dataclass(frozen=True)
class DemoSettings:
    """Size of the demo's training run. ``minutes`` caps training time (the best validated weights are kept)."""

    epochs: int = 40
    warmup_epochs: int = 2
    batch_size: int = 8
    learning_rate: float = 1e-3
    spatial_size: int = 128
    encoder: str = "pvt_v2_b2"
    minutes: float = 7.0


QUICK = DemoSettings(epochs=2, warmup_epochs=1, spatial_size=64, encoder="pvt_v2_b0", minutes=1.5)


@dataclass
class LearningCurve:
    """Mean training loss per epoch and validation mean Dice per validation round (with its epoch)."""

    train_loss: list[float] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)  # the running epoch's iteration losses

    @property
    def train_loss_so_far(self) -> float:
        """Mean loss of the running epoch's iterations (validation runs before the epoch is closed)."""
        return float(np.mean(self.epoch_losses))

    @property
    def best(self) -> tuple[int, float]:
        """(epoch, Dice) of the best validation round."""
        return max(self.validation, key=lambda item: item[1])

    def attach(self, trainer, evaluator) -> None:
        """Record from a MONAI ``SupervisedTrainer`` and the ``SupervisedEvaluator`` that validates it."""
        from ignite.engine import Events
        from monai.handlers import from_engine

        loss_of = from_engine(["loss"], first=True)
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: self.epoch_losses.clear())
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: self.epoch_losses.append(float(loss_of(e.state.output)))
        )
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.train_loss.append(self.train_loss_so_far))
        evaluator.add_event_handler(
            Events.COMPLETED,
            lambda e: self.validation.append((trainer.state.epoch, float(e.state.metrics["val_mean_dice"]))),
        )


# ----------------------------------------------------------------------------- data


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parent folders created)."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return path


def tissue_labels(grey: np.ndarray, white: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Label map ``[X, Y, Z]`` uint8: 0 outside the brain mask, else the likeliest of CSF (1), grey (2), white (3).

    ``grey`` and ``white`` are tissue probabilities; CSF gets what they leave, ``clip(1 - grey - white, 0, 1)``.
    """
    csf = np.clip(1.0 - grey - white, 0.0, 1.0)
    tissue = 1 + np.argmax(np.stack([csf, grey, white]), axis=0)
    return np.where(brain > 0.5, tissue, 0).astype(np.uint8)


def mni152_tissue(resolution: int = 2) -> tuple[nib.Nifti1Image, np.ndarray]:
    """nilearn's MNI152 T1 template (float32, RAS) and its :func:`tissue_labels`."""
    try:
        from nilearn import datasets
    except ImportError as exc:
        raise SystemExit("the demo needs nilearn (installed by `make demo`, or `pip install nilearn`)") from exc
    template = datasets.load_mni152_template(resolution=resolution)
    labels = tissue_labels(
        datasets.load_mni152_gm_template(resolution=resolution).get_fdata(),
        datasets.load_mni152_wm_template(resolution=resolution).get_fdata(),
        datasets.load_mni152_brain_mask(resolution=resolution).get_fdata(),
    )
    return nib.Nifti1Image(template.get_fdata().astype(np.float32), template.affine), labels


Slab = tuple[int, int]  # axial slices [start, stop)


def slab_bounds(depth: int, held_out: Slab, validation: Slab) -> dict[str, list[Slab]]:
    """Slabs of ``depth`` slices per split: the held-out and validation slabs, and training slabs between them."""
    cuts = sorted({0, depth, *held_out, *validation})
    slabs = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    return {
        "train": [s for s in slabs if s not in (held_out, validation)],
        "validation": [validation],
        "test": [held_out],
    }


def slab_name(bounds: Slab) -> str:
    return f"mni152_z{bounds[0]:03d}-{bounds[1] - 1:03d}"


def write_slab_dataset(root: Path, image: nib.Nifti1Image, labels: np.ndarray) -> tuple[Path, Path]:
    """Write the nnU-Net raw dataset ``root/DATASET_FOLDER`` and its split file; returns both paths.

    The slabs cover the axial slices up to the top of the brain (the empty slices above it are left out).
    Training and validation slabs go to ``imagesTr``/``labelsTr``, the held-out slab to ``imagesTs``/``labelsTs``.
    Each slab keeps its place in the scanner: its affine is the template's, moved to its first slice.
    """
    folder = root / DATASET_FOLDER
    array = np.asarray(image.dataobj)
    top_of_brain = int(np.flatnonzero(labels.any(axis=(0, 1)))[-1]) + 1
    splits = slab_bounds(top_of_brain, HELD_OUT_SLICES, VALIDATION_SLICES)
    for split, slabs in splits.items():
        subset = "Ts" if split == "test" else "Tr"
        for start, stop in slabs:
            affine = image.affine.copy()
            affine[:3, 3] = (image.affine @ [0, 0, start, 1])[:3]
            name = slab_name((start, stop))
            for path, data in (
                (folder / f"images{subset}" / f"{name}_0000.nii.gz", array[:, :, start:stop]),
                (folder / f"labels{subset}" / f"{name}.nii.gz", labels[:, :, start:stop]),
            ):
                with atomic_path(path) as temporary:
                    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), temporary)
    description = {
        "channel_names": {"0": "T1"},
        "labels": {name: value for value, name in enumerate(TISSUES)},
        "numTraining": sum(len(splits[s]) for s in ("train", "validation")),
        "file_ending": ".nii.gz",
        "name": "MNI152Tissue",
        "description": "nilearn's MNI152 T1 template (2 mm) in axial slabs; labels: tissue_labels() of nilearn's "
        "grey/white matter probability maps and brain mask",
    }
    write_text(folder / "dataset.json", json.dumps(description, indent=1) + "\n")
    split_file = write_splits(
        root / "splits.json",
        {s: [slab_name(b) for b in slabs] for s, slabs in splits.items()},
        dataset="nnunet",
        seed=None,
    )
    return folder, split_file


# ----------------------------------------------------------------------------- the bundle


def demo_bundle_spec(dataset: Path, settings: DemoSettings) -> BundleSpec:
    """A PVT-GDLA bundle spec for the demo dataset (nnU-Net layout, labels from its dataset.json)."""
    recipe = Recipe(settings.epochs, settings.warmup_epochs, settings.batch_size, learning_rate=settings.learning_rate)
    return BundleSpec(
        "pvt_gdla",
        "nnunet",
        "PVT-GDLA",
        network_args={"encoder": settings.encoder},
        recipe=recipe,
        card=replace(MNI152_CARD, folder=str(dataset)),
        dataset_root=str(dataset),
    )


def write_bundle(spec: BundleSpec, folder: Path, split_file: Path, settings: DemoSettings) -> Path:
    """Render the bundle into ``folder`` with the demo's settings written into its configs; returns ``folder``.

    Every config gets the input size, the split file, no data-loader workers and a random encoder (said aloud:
    ``"random"`` rather than ``null``), so the bundle reruns as it is, e.g. with ``monai.bundle run``; the
    metadata gets the input size.
    """
    size = [settings.spatial_size] * 2
    demo_values = {"spatial_size": size, "split_file": str(split_file), "num_workers": 0, "encoder_weights": "random"}
    for relative, text in bundle_files(spec).items():
        if relative == "configs/metadata.json":
            metadata = json.loads(text)
            for item in (
                *metadata["network_data_format"]["inputs"].values(),
                *metadata["network_data_format"]["outputs"].values(),
            ):
                item["spatial_shape"] = size
            text = json.dumps(metadata, indent=4) + "\n"
        elif relative.startswith("configs/") and relative.endswith(".json"):
            config = json.loads(text)
            config.update({key: value for key, value in demo_values.items() if key in config})
            text = json.dumps(config, indent=4) + "\n"
        write_text(folder / relative, text)
    return folder


def _workflow(bundle: Path, config: str):
    """The bundle's ``config`` (``"train"`` or ``"evaluate"``, an overlay on train.json) as a MONAI workflow,
    logging as ``monai.bundle run`` would."""
    from monai.bundle import ConfigWorkflow

    configs = bundle / "configs"
    return ConfigWorkflow(
        config_file=config_files(bundle, config),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=None,
        bundle_root=str(bundle),
    )


def train(bundle: Path, settings: DemoSettings) -> LearningCurve:
    """Run the bundle's ``train.json`` in this process, stopping after ``settings.minutes``; returns the curve.

    Prints one line per epoch; training loss and validation Dice also go to TensorBoard files in ``runs/``.
    """
    from ignite.engine import Events
    from ignite.handlers import TimeLimit

    workflow = _workflow(bundle, "train")
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    curve = LearningCurve()
    curve.attach(trainer, evaluator)
    start = time.monotonic()
    evaluator.add_event_handler(
        Events.COMPLETED,
        lambda _: print(
            f"epoch {curve.validation[-1][0]}/{settings.epochs}: training loss {curve.train_loss_so_far:.3f}, "
            f"validation Dice {curve.validation[-1][1]:.3f} (best {curve.best[1]:.3f} at epoch {curve.best[0]}), "
            f"{(time.monotonic() - start) / 60:.1f} min",
            flush=True,
        ),
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(int(settings.minutes * 60)))
    workflow.run()
    workflow.finalize()
    if len(curve.train_loss) < settings.epochs:
        print(
            f"training stopped at the {settings.minutes:g}-minute cap after {len(curve.train_loss)} of "
            f"{settings.epochs} epochs; the weights of the best validation epoch ({curve.best[0]}) are kept"
        )
    return curve


def evaluate(bundle: Path) -> list[dict]:
    """Run the bundle's ``evaluate.json`` on the test split; returns its summary rows (per class, then mean)."""
    workflow = _workflow(bundle, "evaluate")
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return read_csv(bundle / "eval" / "summary.csv")


def plot_learning_curve(curve: LearningCurve, path: Path) -> Path:
    """Training loss and validation mean Dice against epochs, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(range(1, len(curve.train_loss) + 1), curve.train_loss, marker="o")
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="Training loss (deep supervision)")
    epochs, dice = zip(*curve.validation) if curve.validation else ((), ())
    dice_axis.plot(epochs, dice, marker="o", color="tab:green")
    dice_axis.set(xlabel="epoch", ylabel="mean Dice", title="Validation slab: mean Dice", ylim=(0, 1))
    for axis in (loss_axis, dice_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, format="png")
    plt.close(figure)
    return path


# ----------------------------------------------------------------------------- the whole job


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, the held-out Dice (class -> Dice, with ``"mean"``) and the timings (s)."""

    dice: dict[str, float]
    segmentation: Path
    overlay: Path
    learning_curve: Path
    bundle: Path
    metrics: Path
    train_seconds: float
    total_seconds: float


def run_demo(output: Path, settings: DemoSettings = DemoSettings()) -> DemoResult:
    """Build the dataset, train, evaluate and segment under ``output``; see the module docstring."""
    from common.segment.cases import segment_cases

    start = time.monotonic()
    output = Path(output)
    folders = {name: output / name for name in ("dataset", "bundle", "input", "segmentation")}
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
    say(
        f"1/4 dataset: nilearn's MNI152 T1 template (2 mm) in axial slabs, slices {HELD_OUT_SLICES[0]}-"
        f"{HELD_OUT_SLICES[1] - 1} held out, {VALIDATION_SLICES[0]}-{VALIDATION_SLICES[1] - 1} for validation"
    )
    image, labels = mni152_tissue()
    dataset, split_file = write_slab_dataset(folders["dataset"], image, labels)
    volume_path = folders["input"] / "mni152_t1.nii.gz"
    with atomic_path(volume_path) as temporary:
        nib.save(image, temporary)

    spec = demo_bundle_spec(dataset, settings)
    bundle = write_bundle(spec, folders["bundle"] / spec.name, split_file, settings)
    say(
        f"2/4 training {spec.name}: PVT-GDLA with a {settings.encoder} encoder at {settings.spatial_size} x "
        f"{settings.spatial_size}, {settings.epochs} epochs (at most {settings.minutes:g} min) on the "
        f"{'GPU' if _cuda() else 'CPU'}. The encoder starts from RANDOM weights: no ImageNet weights offline."
    )
    train_start = time.monotonic()
    curve = train(bundle, settings)
    train_seconds = time.monotonic() - train_start
    curve_path = plot_learning_curve(curve, output / "learning_curve.png")

    say("3/4 evaluating the held-out slab with the bundle's evaluate.json")
    summary = evaluate(bundle)
    dice = {str(row["class"]): float(row["dice"]) for row in summary}

    say("4/4 segmenting the whole volume with `python -m common segment`")
    results = segment_cases(bundle, volume_path, folders["segmentation"], progress=False)
    if results[0].status != "ok":
        raise RuntimeError(f"segment failed: {results[0].error}")
    segmentation, overlay = results[0].outputs[:2]
    return DemoResult(
        dice,
        segmentation,
        overlay,
        curve_path,
        bundle,
        bundle / "eval" / "summary.csv",
        train_seconds,
        time.monotonic() - start,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def say(message: str) -> None:
    print(f"\n== {message}", flush=True)


def format_result(result: DemoResult) -> str:
    """The held-out Dice table, where the outputs are, and how long it took."""
    width = max(len(name) for name in result.dice)
    lines = [f"Held-out slab (axial slices {HELD_OUT_SLICES[0]}-{HELD_OUT_SLICES[1] - 1}, never trained on): Dice"]
    lines += [f"  {name:<{width}}  {value:.3f}" for name, value in result.dice.items()]
    lines += [
        "Outputs:",
        f"  segmentation (NIfTI, the template's grid): {result.segmentation}",
        f"  overlay preview (PNG):                     {result.overlay}",
        f"  learning curve (PNG):                      {result.learning_curve}",
        f"  trained bundle (configs, models/model.pt): {result.bundle}",
        f"  held-out metrics (CSV):                    {result.metrics}",
        f"Training took {result.train_seconds / 60:.1f} min; the whole demo {result.total_seconds / 60:.1f} min.",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Train, evaluate and apply a PVT-GDLA bundle on nilearn's MNI152 brain template (CPU)."
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="where everything is written")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK.epochs} epochs, {QUICK.encoder} encoder at {QUICK.spatial_size} x "
        f"{QUICK.spatial_size}",
    )
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {DemoSettings.epochs})")
    parser.add_argument("--minutes", type=float, help=f"training time cap (default {DemoSettings.minutes:g})")


def run(args: argparse.Namespace) -> int:
    settings = QUICK if args.quick else DemoSettings()
    if args.epochs is not None:
        settings = replace(settings, epochs=args.epochs)
    if args.minutes is not None:
        settings = replace(settings, minutes=args.minutes)
    result = run_demo(args.output, settings)
    print("\n" + format_result(result), flush=True)
    return 0
