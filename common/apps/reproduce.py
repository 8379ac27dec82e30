"""``python -m common reproduce``: one command for one published table row.

    python -m common reproduce --bundle BUNDLE --dataset_dir DIR --checkpoint AUTHORS.ckpt
    python -m common reproduce --bundle BUNDLE --dataset_dir DIR --weights model.pt
    python -m common reproduce --bundle BUNDLE --dataset_dir DIR --train [--seeds 3] [--encoder_weights pvt_v2_b2.pth]

Evaluates on the paper's test set (the bundle's reader: the authors' or TransUNet's list where one was
published, else our seeded split, which the printout names) with the bundle's ``configs/evaluate.json``, and
prints our row beside the paper's in both metric modes (:mod:`common.evaluation.case_scores`): ``paper`` against
the published numbers, ``clinical`` apart, with the (case, class) pairs each mode excluded and how the checkpoint
was selected.
``--train`` runs the bundle's ``configs/train.json`` once per seed (42, 43, ...) and reports mean +- sd.

Exit status: 0 when every test case was scored; 1 when some case could not be (the others are still scored
and written); 2 for a bundle without a published row, or unusable arguments or files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.bundle import run as run_bundle

from ..bundle.location import DEFAULT_ROOT
from ..bundle.specs import config_files
from ..data.registry import get_dataset
from ..data.synapse import SELECTION_TEXT, VALIDATION_CHOICES, validation_cases_for
from ..evaluation.case_tables import excluded_pairs, read_csv, summarize
from ..evaluation.comparison import format_comparison, format_seeds
from ..evaluation.handlers import CaseScoringError
from ..evaluation.published import from_eval_metrics
from ..io.atomic import atomic_path
from ..networks.convert import fit_state_dict, load_reference_checkpoint
from ..networks.encoders import read_state_dict

FIRST_SEED = 42  # the authors' seed; further seeds count up from it

PAPER_MODE_TEXT = {
    "transunet": "paper = TransUNet's per-case rule in voxels (a miss scores (0, 0), a false positive (1, 0)), "
    "averaged over all cases",
    "per_class": "paper = the authors' MONAI DiceMetric usage: Dice per class over the cases where the class is "
    "in the truth, then over the classes",
}
CLINICAL_MODE_TEXT = (
    "clinical = Dice with a miss scored 0 and absent classes skipped; HD95 in mm from the "
    "volume's geometry (NaN where undefined or without geometry)"
)


class ReproduceError(ValueError):
    """Unusable arguments, bundle or files; the message says which and why."""


def resolve_bundle(bundle: str) -> Path:
    """A bundle folder: a path, or a name under the repository's ``bundles/``."""
    for candidate in (Path(bundle), DEFAULT_ROOT / bundle):
        if (candidate / "configs" / "evaluate.json").is_file():
            return candidate
    raise ReproduceError(f"{bundle}: not a bundle folder (no configs/evaluate.json there nor under {DEFAULT_ROOT})")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReproduceError(f"{path}: not a readable JSON file ({exc})") from exc


def evaluation_config(bundle: Path) -> ConfigParser:
    """The bundle's evaluation config (``evaluate.json`` merged over ``train.json``), unparsed."""
    parser = ConfigParser()
    try:
        parser.read_config(config_files(bundle, "evaluate"))
    except (OSError, ValueError) as exc:
        raise ReproduceError(f"{bundle}: its configs/train.json and configs/evaluate.json do not read ({exc})") from exc
    parser["bundle_root"] = str(bundle)
    return parser


def bundle_network(bundle: Path, overrides: Mapping[str, object]) -> torch.nn.Module:
    """The bundle's ``network_def`` (random encoder weights), with ``overrides`` applied."""
    parser = evaluation_config(bundle)
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


def write_model_weights(
    bundle: Path, source: Path, authors: bool, target: Path, overrides: Mapping[str, object]
) -> Path:
    """Load ``source`` into the bundle's network (strictly; the authors' names converted when ``authors``) and
    save its state dict as ``target`` (``models/model.pt`` form), atomically."""
    network = bundle_network(bundle, overrides)
    try:
        if authors:
            load_reference_checkpoint(network, source)
        else:
            network.load_state_dict(fit_state_dict(network, read_state_dict(source)))
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise ReproduceError(f"{source}: does not load into {bundle.name}'s network ({exc})") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        torch.save(network.state_dict(), temporary)
    return target


def evaluate(
    bundle: Path, dataset_dir: Path, ckpt_dir: Path, output_dir: Path, overrides: Mapping[str, object]
) -> tuple[list[dict], str | None]:
    """Run the bundle's ``configs/evaluate.json`` with ``ckpt_dir/model.pt``; its per-case rows and the
    failure message (``None`` when every case was scored)."""
    failure = None
    try:
        run_bundle(
            config_file=config_files(bundle, "evaluate"),
            bundle_root=str(bundle),
            dataset_dir=str(dataset_dir),
            ckpt_dir=str(ckpt_dir),
            output_dir=str(output_dir),
            **overrides,
        )
    except (CaseScoringError, RuntimeError) as exc:  # MONAI wraps errors raised by the config's expressions
        cause = _scoring_error(exc)
        if cause is None:
            raise
        failure = str(cause)
    cases = output_dir / "cases.csv"
    if not cases.is_file():
        raise ReproduceError(f"evaluation wrote no {cases}")
    return read_csv(cases), failure


def _scoring_error(exc: BaseException | None) -> CaseScoringError | None:
    """The :class:`CaseScoringError` behind ``exc`` (itself or a cause), if any."""
    while exc is not None and not isinstance(exc, CaseScoringError):
        exc = exc.__cause__ or exc.__context__
    return exc


def train(bundle: Path, dataset_dir: Path, run_dir: Path, seed: int, overrides: Mapping[str, object]) -> Path:
    """Run the bundle's ``configs/train.json`` with ``seed``, checkpoints and logs under ``run_dir``; returns the
    folder holding the selected ``model.pt``."""
    run_bundle(
        config_file=config_files(bundle, "train"),
        bundle_root=str(bundle),
        dataset_dir=str(dataset_dir),
        ckpt_dir=str(run_dir / "models"),
        output_dir=str(run_dir / "runs"),
        seed=seed,
        **overrides,
    )
    if not (run_dir / "models" / "model.pt").is_file():
        raise ReproduceError(f"training with seed {seed} selected no checkpoint (no {run_dir / 'models' / 'model.pt'})")
    return run_dir / "models"


def _set_overrides(pairs: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` config overrides; VALUE is read as JSON when it parses, else as a string."""
    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ReproduceError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(text)
        except ValueError:
            overrides[key] = text
    return overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--bundle", required=True, help="bundle folder, or its name under bundles/")
    parser.add_argument("--dataset_dir", required=True, type=Path, help="the dataset folder as downloaded")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="the authors' checkpoint (.ckpt / .pth, their key names)")
    source.add_argument("--weights", type=Path, help="a state dict for the bundle's network (models/model.pt)")
    source.add_argument("--train", action="store_true", help="train with the bundle's recipe, then evaluate")
    parser.add_argument("--seeds", type=int, default=1, help="with --train: seeds to train (42, 43, ...)")
    parser.add_argument(
        "--validation",
        choices=VALIDATION_CHOICES,
        default="test_set",
        help="Synapse, with --train: select the checkpoint on the test set (the authors' protocol) "
        "or on 4 training cases held out",
    )
    parser.add_argument("--encoder_weights", type=Path, help="with --train: ImageNet PVT-v2 weights (pvt_v2_b2.pth)")
    parser.add_argument("--output", type=Path, default=Path("reproduce"), help="folder for runs, CSVs and weights")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for both configs, e.g. num_workers=0 (JSON values)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        return _reproduce(args)
    except ReproduceError as exc:
        print(f"reproduce: {exc}", file=sys.stderr)
        return 2


def _reproduce(args: argparse.Namespace) -> int:
    bundle = resolve_bundle(args.bundle)
    meta = _read_json(bundle / "configs" / "metadata.json")
    published = from_eval_metrics(meta.get("eval_metrics"))
    if published is None:
        raise ReproduceError(f"{bundle.name}: the paper publishes no row for this bundle; nothing to reproduce")
    evaluate_config = evaluation_config(bundle)
    dataset = evaluate_config.get("dataset_name")
    overrides = _set_overrides(args.set)
    if dataset == "synapse":
        overrides["validation"] = args.validation
    elif args.validation != "test_set":
        raise ReproduceError("--validation held_out applies to Synapse only (the others have a validation split)")
    if args.seeds < 1 or (args.seeds > 1 and not args.train):
        raise ReproduceError("--seeds N needs --train and N >= 1")
    if not args.dataset_dir.is_dir():
        raise ReproduceError(f"{args.dataset_dir}: dataset folder not found")

    reader_options = {"validation_cases": validation_cases_for(args.validation)} if dataset == "synapse" else {}
    reader = get_dataset(dataset, **reader_options)
    test_cases = reader.splits(args.dataset_dir)["test"]
    writer = evaluate_config.get("validate#handlers")[-1]
    paper_rule = writer.get("paper_rule", "per_class")
    default_selection = SELECTION_TEXT[args.validation] if dataset == "synapse" else writer.get("selection", "")

    header = [
        f"reproduce: {meta.get('name', bundle.name)} (bundle {bundle.name})",
        f"test set: {len(test_cases)} case(s); split = {reader.split_origin()}",
        f"metric modes: {PAPER_MODE_TEXT[paper_rule]}; {CLINICAL_MODE_TEXT}",
    ]
    output = args.output
    if args.train:
        if args.encoder_weights is not None:
            overrides["encoder_weights"] = str(args.encoder_weights)
        header.append(f"checkpoint: trained here with the bundle's recipe, {args.seeds} seed(s); {default_selection}")
        print("\n".join(header), flush=True)
        summaries, failures = [], []
        for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):
            ckpt_dir = train(bundle, args.dataset_dir, output / f"seed{seed}", seed, overrides)
            rows, failure = evaluate(
                bundle, args.dataset_dir, ckpt_dir, output / f"seed{seed}" / "eval", _evaluation_only(overrides)
            )
            summaries.append(summarize(rows))
            failures += [failure] if failure else []
            print(f"\nseed {seed}:\n{format_comparison(summaries[-1], published, 'ours', excluded_pairs(rows))}")
        print(f"\n{args.seeds} seed(s), mean +- sd:\n{format_seeds(summaries, published)}")
    else:
        source = args.checkpoint or args.weights
        if args.checkpoint:
            selection = f"the authors' checkpoint {source}; as they selected it" + (
                f": {SELECTION_TEXT['test_set']}" if dataset == "synapse" else ""
            )
        else:
            selection = f"weights {source}; selected as their training run did (bundle default: {default_selection})"
        header.append(f"checkpoint: {selection}")
        print("\n".join(header), flush=True)
        write_model_weights(bundle, source, bool(args.checkpoint), output / "models" / "model.pt", overrides)
        rows, failure = evaluate(
            bundle, args.dataset_dir, output / "models", output / "eval", _evaluation_only(overrides)
        )
        failures = [failure] if failure else []
        print(f"\n{format_comparison(summarize(rows), published, 'ours', excluded_pairs(rows))}")
    if failures:
        print("\n".join(f"NOT REPRODUCED: {failure}" for failure in failures), file=sys.stderr)
        return 1
    return 0


def _evaluation_only(overrides: Mapping[str, object]) -> dict[str, object]:
    """The overrides that apply to evaluation (the encoder weights come from the trained checkpoint)."""
    return {key: value for key, value in overrides.items() if key != "encoder_weights"}
