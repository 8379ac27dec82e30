"""``python -m common data check --dataset NAME --root DIR``: inspect a dataset folder before training.

Prints cases and samples per split and the label values found in the label files. Every file is read in full
by default (images and labels, with a progress bar), so an unreadable, truncated or mismatched file shows before
training; ``--sample N`` reads a random sample of N labelled samples for a quick look. Exit status: 0 when
everything read is consistent, 1 when some files have problems (each listed with its path), 2 when the folder does
not match the layout, the dataset name is unknown or the split file is unusable.
"""

from __future__ import annotations

import argparse
import sys

from common.data.base import DatasetLayoutError
from common.data.registry import UnknownDatasetError, dataset_names, get_dataset
from common.data.splits import SplitFileError, write_splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="count cases per split and read the label files")
    check.add_argument("--dataset", required=True, help=f"one of: {', '.join(dataset_names())}")
    check.add_argument("--root", required=True, help="the dataset folder as downloaded")
    check.add_argument(
        "--sample",
        "--max-files",
        type=int,
        metavar="N",
        dest="sample",
        help="read a random sample of N labelled samples only (default: every file)",
    )
    check.add_argument("--all", action="store_true", help="read every file (the default; overrides --sample)")
    check.add_argument("--splits", help="a split file (JSON) to use instead of the default split")
    check.add_argument("--write-splits", metavar="PATH", help="write the split used to this JSON file")
    check.add_argument("--seed", type=int, default=42, help="seed of the random splits")


def run(args: argparse.Namespace) -> int:
    try:
        reader = get_dataset(args.dataset, seed=args.seed)
        report = reader.check(args.root, max_files=None if args.all else args.sample, splits=args.splits, progress=True)
        print(report.format())
        if args.write_splits:
            path = write_splits(args.write_splits, report.splits, dataset=reader.name, seed=args.seed)
            print(f"split written to {path}")
    except (UnknownDatasetError, DatasetLayoutError, SplitFileError) as exc:
        print(f"data check: {exc}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1
