"""The nnU-Net raw layout (and the Medical Segmentation Decathlon layout it grew from).

nnU-Net v2: ``dataset.json`` (``channel_names``, ``labels`` {name: value}, ``file_ending``),
``imagesTr/case_0000.nii.gz`` (one file per channel, suffix ``_0000``, ``_0001``, ...),
``labelsTr/case.nii.gz``, optional ``imagesTs/`` (and ``labelsTs/``).
Decathlon: ``dataset.json`` with ``modality``, ``labels`` {value: name} and ``training`` /
``test`` file lists; images without a channel suffix (several channels in one 4-D file).
macOS ``._`` files that the Decathlon archives carry are ignored.

Split: 80/20 train/validation of the ``imagesTr`` cases (seeded), test = the ``imagesTs`` cases.
Label names and the intensity recipe come from ``dataset.json``, so create the reader with its folder,
``get_dataset("nnunet", root=...)`` (otherwise the first folder scanned becomes the reader's folder).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.base import Cases, DatasetReader, Entry, Scan, describe_folder, layout_error, modality_intensity
from common.data.splits import DEFAULT_SEED, Splits, fraction_split
from common.io.images import PICTURE_SUFFIXES, picture_size, read_image_2d
from common.io.volumes import load_volume, volume_shape

_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


@dataclass(frozen=True)
class DatasetJson:
    """What the project needs from ``dataset.json``."""

    channel_names: tuple[str, ...]
    labels: dict[int, str]
    file_ending: str
    decathlon_training: tuple[dict, ...] | None  # the Decathlon "training" list, None for nnU-Net v2
    decathlon_test: tuple[str, ...]


def read_dataset_json(folder: Path) -> DatasetJson:
    """Parse ``folder/dataset.json`` (nnU-Net v2 or Decathlon style); raises DatasetLayoutError when unusable."""
    path = folder / "dataset.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise layout_error("nnU-Net raw dataset", folder, "a readable dataset.json", f"{path}: {exc}") from exc
    if "channel_names" in document:
        channels, raw_labels, decathlon = document["channel_names"], document.get("labels", {}), False
        labels = {}
        for name, value in raw_labels.items():
            if not isinstance(value, int):
                raise layout_error(
                    "nnU-Net raw dataset",
                    path,
                    "labels {name: integer}",
                    f"{name}: {value} (region-based labels are not supported)",
                )
            labels[value] = name
    elif "modality" in document:
        channels, decathlon = document["modality"], True
        labels = {int(value): name for value, name in document.get("labels", {}).items()}
    else:
        raise layout_error(
            "nnU-Net raw dataset",
            path,
            "keys channel_names (nnU-Net v2) or modality (Decathlon)",
            f"keys {sorted(document)}",
        )
    if sorted(labels) != list(range(len(labels))) or not labels:
        raise layout_error("nnU-Net raw dataset", path, "label values 0, 1, ..., K-1", f"values {sorted(labels)}")
    ordered_channels = tuple(str(channels[key]) for key in sorted(channels, key=int))
    return DatasetJson(
        channel_names=ordered_channels,
        labels=labels,
        file_ending=document.get("file_ending", ".nii.gz"),
        decathlon_training=tuple(document.get("training", ())) if decathlon else None,
        decathlon_test=tuple(document.get("test", ())) if decathlon else (),
    )


class NnUNetRaw(DatasetReader):
    """A ``DatasetXXX_Name`` (or Decathlon ``TaskXX_Name``) folder."""

    name = "nnunet"
    title = "nnU-Net raw dataset"
    expected_layout = "dataset.json, imagesTr/case_0000.nii.gz ..., labelsTr/case.nii.gz ... (optional imagesTs/)"
    augmentation = "transunet"

    def __init__(
        self, root: str | os.PathLike | None = None, seed: int = DEFAULT_SEED, validation_fraction: float = 0.2
    ) -> None:
        super().__init__(root, seed)
        self.validation_fraction = validation_fraction
        self._descriptions: dict[Path, DatasetJson] = {}

    def description(self, root: str | os.PathLike | None = None) -> DatasetJson:
        """The folder's ``dataset.json`` (read once per folder)."""
        root = self._root(root)
        if root not in self._descriptions:
            if not (root / "dataset.json").is_file():
                raise layout_error(self.title, root, self.expected_layout, describe_folder(root))
            self._descriptions[root] = read_dataset_json(root)
        return self._descriptions[root]

    @property
    def label_names(self) -> tuple[str, ...]:
        labels = self.description().labels
        return tuple(labels[v] for v in sorted(labels))

    @property
    def label_values(self) -> dict[int, str]:
        return self.description().labels

    @property
    def image_channels(self) -> int:
        """Input channels: one per ``channel_names`` entry of ``dataset.json``."""
        return len(self.description().channel_names)

    @property
    def spatial_dims(self) -> int:
        return 2 if self.root is not None and self.description().file_ending.lower() in PICTURE_SUFFIXES else 3

    @property
    def stored_as(self) -> str:
        return "slices" if self.spatial_dims == 2 else "volumes"

    @property
    def sample_unit(self) -> str:
        return "images" if self.spatial_dims == 2 else "volumes"

    @property
    def intensity(self) -> str:
        """CT windowing when every channel is CT, else per-volume min-max."""
        return modality_intensity(self.description().channel_names) if self.root is not None else "minmax"

    def scan(self, root: str | os.PathLike | None = None) -> Scan:
        root = self._root(root)
        if self.root is None:
            self.root = root
        info = self.description(root)
        scan = Scan(root, {})
        if info.decathlon_training is not None:
            self._scan_decathlon(root, info, scan)
        else:
            self._scan_v2(root, info, scan, "imagesTr", "labelsTr", required_labels=True)
            self._scan_v2(root, info, scan, "imagesTs", "labelsTs", required_labels=False)
        if not scan.cases and not scan.problems:
            raise layout_error(
                self.title, root / "imagesTr", f"case_0000{info.file_ending} ...", describe_folder(root / "imagesTr")
            )
        return scan

    @staticmethod
    def _scan_v2(root: Path, info: DatasetJson, scan: Scan, images: str, labels: str, required_labels: bool) -> None:
        folder = root / images
        if not folder.is_dir():
            if required_labels:
                scan.problems.append(f"{folder}: missing (dataset.json is there)")
            return
        ending = info.file_ending
        channels: dict[str, dict[int, Path]] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.name.endswith(ending):
                continue
            match = _CHANNEL.match(path.name[: -len(ending)])
            if match is None:
                scan.problems.append(f"{path}: expected a channel suffix, e.g. case_0000{ending}")
                continue
            channels.setdefault(match[1], {})[int(match[2])] = path
        for case, files in sorted(channels.items()):
            expected = list(range(len(info.channel_names)))
            if sorted(files) != expected:
                scan.problems.append(
                    f"{folder}: case {case} has channels {sorted(files)}, dataset.json names {expected}"
                )
                continue
            image = [str(files[c]) for c in expected]
            entry: Entry = {"image": image[0] if len(image) == 1 else image, "case": case, "subset": images}
            label = root / labels / f"{case}{ending}"
            if label.is_file():
                entry["label"] = str(label)
            elif required_labels:
                scan.problems.append(f"{files[0]}: no label {label}")
                continue
            if case in scan.cases:
                scan.problems.append(f"{folder}: case {case} also appears in another subset")
                continue
            scan.cases[case] = [entry]

    @staticmethod
    def _scan_decathlon(root: Path, info: DatasetJson, scan: Scan) -> None:
        pairs = [(item["image"], item.get("label")) for item in info.decathlon_training]
        pairs += [(item, None) for item in info.decathlon_test]
        for image_name, label_name in pairs:
            image = root / image_name
            subset = image.parent.name
            case = image.name[: -len(info.file_ending)] if image.name.endswith(info.file_ending) else image.stem
            missing = [
                str(p) for p in (image, root / label_name if label_name else None) if p is not None and not p.is_file()
            ]
            if missing:
                scan.problems.append(f"{root / 'dataset.json'} lists files that are missing: {', '.join(missing)}")
                continue
            entry: Entry = {"image": str(image), "case": case, "subset": subset}
            if label_name:
                entry["label"] = str(root / label_name)
            scan.cases[case] = [entry]

    def default_splits(self, cases: Cases) -> Splits:
        training = [c for c, entries in cases.items() if entries[0]["subset"] == "imagesTr"]
        split = fraction_split(training, (1 - self.validation_fraction, self.validation_fraction, 0.0), self.seed)
        split["test"] = sorted(c for c, entries in cases.items() if entries[0]["subset"] != "imagesTr")
        return split

    def image_shape(self, entry: Entry) -> tuple[int, ...]:
        first = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
        if self.spatial_dims == 2:
            return picture_size(first)
        return volume_shape(first)[:3]

    def read_label(self, entry: Entry) -> np.ndarray:
        if self.spatial_dims == 2:
            return read_image_2d(entry["label"], channels=1)[0]
        return load_volume(entry["label"]).array
