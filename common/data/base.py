"""What every dataset reader provides: scanning a folder as distributed, splits, datalists, checks.

A reader turns a dataset folder, exactly as its publishers distribute it, into MONAI datalists:
``{"train": [...], "validation": [...], "test": [...]}``, each a list of dicts such as
``{"image": path, "label": path, "case": id, ...}``. Splits are over cases (a patient, a volume or
an image, per dataset), never over slices of one case.

Class attributes describe the data to the rest of the project (``common.transforms.pipelines`` builds the
pipelines from them): ``stored_as`` ("slices": training samples are 2-D files; "volumes": 2-D slices
are drawn from 3-D files), ``label_kind`` ("label_map", "binary_mask" or "run_length"),
``intensity`` ("none", "ct_window" or "minmax"), ``augmentation`` ("transunet" or "photo") and
``image_channels``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from tqdm import tqdm

from common.data.splits import DEFAULT_SEED, SEEDED_SPLIT, SPLIT_NAMES, SplitFileError, Splits, read_splits
from common.io.images import read_image_2d
from common.io.volumes import load_volume, volume_suffix

Entry = dict
Cases = dict[str, list[Entry]]


class DatasetLayoutError(ValueError):
    """The folder does not match the dataset's layout; the message says what was expected, found, and where."""


class SampleError(ValueError):
    """One image or label is unreadable or inconsistent; the message names the file."""


def modality_intensity(modalities: Iterable[str]) -> str:
    """The ``intensity`` recipe for images as scanners write them, by DICOM modality: ``"ct_window"`` (Hounsfield
    units windowed, :data:`common.transforms.pipelines.CT_WINDOW_HU`) when every channel is CT, else per-image ``"minmax"``."""
    return "ct_window" if all(modality.upper() == "CT" for modality in modalities) else "minmax"


def layout_error(title: str, where: Path, expected: str, found: str) -> DatasetLayoutError:
    """A :class:`DatasetLayoutError` in the project's three-part form."""
    return DatasetLayoutError(f"{where}: not a {title} folder\n  expected: {expected}\n  found:    {found}")


def describe_folder(path: Path, limit: int = 8) -> str:
    """A one-line account of what ``path`` holds, for error messages."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith("."))
    if not names:
        return f"{path} is empty"
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")
    return f"{path} holds {shown}"


def find_folder(root: Path, candidates: list[str], is_match) -> Path | None:
    """The first of ``root / candidate`` that ``is_match`` accepts (``""`` means ``root`` itself)."""
    for candidate in candidates:
        folder = root / candidate if candidate else root
        if folder.is_dir() and is_match(folder):
            return folder
    return None


@dataclass
class Scan:
    """A dataset folder as found: case id -> datalist entries, plus per-file problems and notes."""

    folder: Path
    cases: Cases
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """The result of :meth:`DatasetReader.check`; ``format()`` renders it for people."""

    dataset: str
    title: str
    folder: Path
    sample_unit: str
    splits: Splits
    split_counts: dict[str, tuple[int, int]]
    split_origin: str
    label_values: dict[int, str]
    value_counts: Counter
    files_read: int
    files_total: int
    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [
            f"{self.title} ({self.dataset}) at {self.folder}",
            f"split: {self.split_origin}",
            f"{'split':<12}{'cases':>8}{self.sample_unit:>10}",
        ]
        lines += [f"{name:<12}{cases:>8}{samples:>10}" for name, (cases, samples) in self.split_counts.items()]
        sampled = (
            f"{self.files_read} of {self.files_total} label files, a random sample (without --sample every file is "
            "read)"
            if self.files_read < self.files_total
            else f"all {self.files_total} label files"
        )
        lines.append(f"label values found in {sampled}:")
        found = ", ".join(
            f"{value} {self.label_values.get(value, 'NOT IN THE LABEL MAP')} ({count} files)"
            for value, count in sorted(self.value_counts.items())
        )
        lines.append(f"  {found or 'none'}")
        lines += [f"note: {note}" for note in self.notes]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {problem}" for problem in self.problems]
        else:
            lines.append("problems: none")
        return "\n".join(lines)


def _split_source(splits: Splits | str | os.PathLike) -> str:
    return f"split file {splits}" if isinstance(splits, (str, os.PathLike)) else "case ids passed in"


class DatasetReader(ABC):
    """Reads one public dataset layout. Create through :func:`common.data.get_dataset`.

    ``root`` may be given once here, or to each method. ``seed`` drives the random splits.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    expected_layout: ClassVar[str]
    label_names: tuple[str, ...]
    label_values: dict[int, str]  # value as stored in the label files -> its meaning
    label_mapping: ClassVar[dict[int, int] | None] = None  # stored value -> training value, when they differ
    spatial_dims: int = 2
    multilabel: ClassVar[bool] = False
    sample_unit: ClassVar[str] = "images"
    stored_as: ClassVar[str] = "slices"
    label_kind: ClassVar[str] = "label_map"
    intensity: ClassVar[str] = "minmax"
    augmentation: ClassVar[str] = "transunet"
    image_channels: ClassVar[int | None] = 1

    def __init__(self, root: str | os.PathLike | None = None, seed: int = DEFAULT_SEED) -> None:
        self.root = Path(root) if root is not None else None
        self.seed = seed

    @property
    def num_classes(self) -> int:
        """Output channels of a network for this dataset (background included unless multi-label)."""
        return len(self.label_names)

    @abstractmethod
    def scan(self, root: str | os.PathLike | None = None) -> Scan:
        """Find every case in the folder; raises :class:`DatasetLayoutError` when the layout does not match."""

    @abstractmethod
    def default_splits(self, cases: Cases) -> Splits:
        """The published split of the cases found (case ids per split)."""

    def split_origin(self) -> str:
        """Where :meth:`default_splits` comes from: the authors' list, TransUNet's list or our seeded split."""
        return f"{SEEDED_SPLIT} (seed {self.seed})"

    @abstractmethod
    def image_shape(self, entry: Entry) -> tuple[int, ...]:
        """Spatial shape of an entry's image, from its header where possible (cheap)."""

    def read_image(self, entry: Entry) -> list[np.ndarray]:
        """Every image file of an entry read in full (so truncated or corrupt files raise, naming the file)."""
        paths = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        return [
            load_volume(path, h5_key="image").array if volume_suffix(path) else read_image_2d(path, array_name="image")
            for path in paths
        ]

    @abstractmethod
    def read_label(self, entry: Entry) -> np.ndarray:
        """An entry's label with the values as stored; spatial axes last."""

    def label_source(self, entry: Entry) -> str:
        """Where an entry's label comes from, for messages."""
        label = entry["label"]
        return " + ".join(str(p) for p in label) if isinstance(label, list) else str(label)

    def splits(self, root: str | os.PathLike | None = None) -> Splits:
        """The default split of the folder's cases."""
        return self.default_splits(self.scan(root).cases)

    def datalists(
        self, root: str | os.PathLike | None = None, splits: Splits | str | os.PathLike | None = None
    ) -> dict[str, list[Entry]]:
        """Train / validation / test datalists; ``splits`` (ids or a split file) overrides the default.

        Raises :class:`DatasetLayoutError` listing every problem found in the folder.
        """
        scan = self.scan(root)
        if scan.problems:
            listing = "\n  - ".join(scan.problems[:20])
            more = f"\n  ... and {len(scan.problems) - 20} more" if len(scan.problems) > 20 else ""
            raise DatasetLayoutError(
                f"{scan.folder}: {len(scan.problems)} problem(s) in the {self.title} folder:\n  - {listing}{more}"
            )
        return self._assemble(scan, self._resolve_splits(scan, splits))

    def check(
        self,
        root: str | os.PathLike | None = None,
        max_files: int | None = None,
        splits: Splits | str | os.PathLike | None = None,
        progress: bool = False,
    ) -> CheckReport:
        """Count cases per split and read every sample in full, image and label (``max_files``: a random sample of
        that many labelled samples, and no unlabelled ones); ``progress`` shows a bar (tqdm, on stderr).

        Every unreadable, truncated or corrupt file, image/label shape mismatch and label value outside the map
        becomes a problem in the report, naming the file; one bad file does not stop the others.
        """
        scan = self.scan(root)
        problems = list(scan.problems)
        chosen = self._resolve_splits(scan, splits)
        lists = self._assemble(scan, chosen)
        labelled = self._unique_labelled_entries(lists)
        to_read = (
            labelled
            if max_files is None or len(labelled) <= max_files
            else random.Random(0).sample(labelled, max_files)
        )
        unlabelled = [] if max_files is not None else self._unique_unlabelled_entries(lists)
        value_counts: Counter = Counter()
        for entry in tqdm(
            to_read + unlabelled, desc="reading files", unit="sample", disable=not progress, file=sys.stderr
        ):
            try:
                if "label" in entry or "label_rle" in entry:
                    value_counts.update(self._checked_label_values(entry))
                else:
                    self.read_image(entry)
            except Exception as exc:  # any reader failure is a problem of that sample's files, not of the check
                problems.append(self._named_problem(entry, exc))
        return CheckReport(
            dataset=self.name,
            title=self.title,
            folder=scan.folder,
            sample_unit=self.sample_unit,
            splits=chosen,
            split_counts={name: (len(chosen[name]), len(lists[name])) for name in SPLIT_NAMES},
            split_origin=self.split_origin() if splits is None else f"given ({_split_source(splits)})",
            label_values=self.label_values,
            value_counts=value_counts,
            files_read=len(to_read),
            files_total=len(labelled),
            problems=problems,
            notes=scan.notes,
        )

    def _root(self, root: str | os.PathLike | None) -> Path:
        if root is None:
            if self.root is None:
                raise ValueError(f"{self.name}: no dataset folder given (pass root=...)")
            return self.root
        return Path(root)

    def _resolve_splits(self, scan: Scan, splits: Splits | str | os.PathLike | None) -> Splits:
        if splits is None:
            return self.default_splits(scan.cases)
        source = splits if isinstance(splits, (str, os.PathLike)) else "the given splits"
        chosen = read_splits(splits, self.name) if isinstance(splits, (str, os.PathLike)) else splits
        missing = sorted({case for ids in chosen.values() for case in ids} - set(scan.cases))
        if missing:
            shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
            raise SplitFileError(f"{source}: cases not found in {scan.folder}: {shown}")
        return {name: list(chosen.get(name, [])) for name in SPLIT_NAMES}

    @staticmethod
    def _assemble(scan: Scan, splits: Splits) -> dict[str, list[Entry]]:
        return {name: [dict(entry) for case in splits[name] for entry in scan.cases[case]] for name in SPLIT_NAMES}

    @staticmethod
    def _unique_labelled_entries(lists: dict[str, list[Entry]]) -> list[Entry]:
        seen: dict[str, Entry] = {}
        for entries in lists.values():
            for entry in entries:
                if "label" in entry or "label_rle" in entry:
                    seen.setdefault(json.dumps(entry, sort_keys=True, default=str), entry)
        return list(seen.values())

    def _named_problem(self, entry: Entry, exc: Exception) -> str:
        """The reader's message, prefixed with the sample's files when it does not name one."""
        message = str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
        files = [str(p) for p in (entry["image"] if isinstance(entry.get("image"), list) else [entry.get("image")])]
        if "label" in entry:
            files.append(self.label_source(entry))
        return message if any(f in message for f in files if f and f != "None") else f"{' / '.join(files)}: {message}"

    @staticmethod
    def _unique_unlabelled_entries(lists: dict[str, list[Entry]]) -> list[Entry]:
        seen: dict[str, Entry] = {}
        for entries in lists.values():
            for entry in entries:
                if "label" not in entry and "label_rle" not in entry and "image" in entry:
                    seen.setdefault(json.dumps(entry, sort_keys=True, default=str), entry)
        return list(seen.values())

    def _checked_label_values(self, entry: Entry) -> set[int]:
        """Read one image and its label, compare their shapes, and return the label values; raises on problems."""
        self.read_image(entry)
        image_shape = tuple(self.image_shape(entry))
        label = self.read_label(entry)
        source = self.label_source(entry)
        if tuple(label.shape[-len(image_shape) :]) != image_shape:
            raise SampleError(
                f"{source}: label shape {tuple(label.shape)} does not match "
                f"image shape {image_shape} ({entry['image']})"
            )
        values = np.unique(label)
        if not np.all(values == np.round(values)):
            raise SampleError(
                f"{source}: label holds non-integer values, e.g. {values[values != np.round(values)][:5].tolist()}"
            )
        outside = sorted(set(int(v) for v in values) - set(self.label_values))
        if outside:
            raise SampleError(f"{source}: label values {outside} are outside the label map {sorted(self.label_values)}")
        return {int(v) for v in values}
