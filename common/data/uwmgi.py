"""UW-Madison GI Tract abdominal MRI (Kaggle 2022).

Layout: ``train/case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png`` (16-bit grey; the name
carries slice number, width, height and pixel spacing x, y) and ``train.csv`` with columns ``id``
(``case123_day20_slice_0001``), ``class`` and ``segmentation`` (run-length "start length ...", starts
1-based over the row-major flattened height x width image; empty when absent).

The three classes overlap, so labels are three binary channels (large bowel, small bowel, stomach),
decoded from the run-length strings each entry carries in ``label_rle``. Split 80/10/10 by patient
(``case``), never by slice or day (seeded).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from common.data.base import Cases, DatasetReader, Entry, SampleError, Scan, describe_folder, find_folder, layout_error
from common.data.splits import Splits, fraction_split
from common.io.images import picture_size

UWMGI_CLASSES = ("large_bowel", "small_bowel", "stomach")
UWMGI_FRACTIONS = (0.8, 0.1, 0.1)
_SLICE = re.compile(r"^slice_(\d{4})_(\d+)_(\d+)_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)\.png$")
_DAY = re.compile(r"^(case\d+)_day\d+$")


def decode_rle(rle: str, height: int, width: int) -> np.ndarray:
    """A run-length string ("start length ...", 1-based starts, row-major) as a (height, width) uint8 mask."""
    flat = np.zeros(height * width, dtype=np.uint8)
    numbers = [int(v) for v in rle.split()]
    if len(numbers) % 2:
        raise ValueError(f"run-length string has an odd number of values ({len(numbers)})")
    for start, length in zip(numbers[::2], numbers[1::2]):
        if start < 1 or length < 0 or start - 1 + length > flat.size:
            raise ValueError(f"run {start} {length} falls outside a {height} x {width} image")
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(height, width)


def encode_rle(mask: np.ndarray) -> str:
    """Inverse of :func:`decode_rle`: a (H, W) binary mask as "start length ..." (empty when all zero)."""
    flat = np.concatenate([[0], np.asarray(mask, dtype=bool).ravel().astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat)) + 1  # 1-based starts and one-past-ends, alternating
    starts, ends = edges[::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


class UWMadisonGI(DatasetReader):
    """UW-Madison GI Tract ``train/`` slices with ``train.csv``; one entry per slice."""

    name = "uwmgi"
    title = "UW-Madison GI Tract MRI"
    expected_layout = "train.csv and train/case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png"
    label_names = UWMGI_CLASSES
    label_values = {0: "outside", 1: "inside the organ"}
    multilabel = True
    spatial_dims = 2
    sample_unit = "slices"
    stored_as = "slices"
    label_kind = "run_length"
    intensity = "minmax"
    augmentation = "transunet"
    image_channels = 1

    def scan(self, root: str | os.PathLike | None = None) -> Scan:
        root = self._root(root)
        folder = find_folder(
            root,
            ["", "uw-madison-gi-tract-image-segmentation"],
            lambda f: (f / "train.csv").is_file() and (f / "train").is_dir(),
        )
        if folder is None:
            raise layout_error(self.title, root, self.expected_layout, describe_folder(root))
        scan = Scan(folder, {})
        runs = self._read_csv(folder / "train.csv")
        seen = set()
        for path in sorted((folder / "train").glob("case*/case*_day*/scans/*.png")):
            entry = self._entry(path, runs, scan)
            if entry is not None:
                seen.add(entry["id"])
                scan.cases.setdefault(entry["case"], []).append(entry)
        unmatched = sorted(set(runs) - seen)
        if unmatched:
            scan.problems.append(
                f"{folder / 'train.csv'}: {len(unmatched)} ids have no slice image, e.g. {unmatched[0]}"
            )
        if not scan.cases and not scan.problems:
            raise layout_error(
                self.title, folder / "train", "case*/case*_day*/scans/slice_*.png", describe_folder(folder / "train")
            )
        return scan

    @staticmethod
    def _read_csv(path: Path) -> dict[str, dict[str, str]]:
        """id -> class -> run-length string."""
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not {"id", "class", "segmentation"} <= set(reader.fieldnames or ()):
                raise layout_error(
                    "UW-Madison GI Tract", path, "columns id, class, segmentation", f"columns {reader.fieldnames}"
                )
            runs: dict[str, dict[str, str]] = {}
            for row in reader:
                runs.setdefault(row["id"], {})[row["class"]] = row["segmentation"] or ""
        return runs

    @staticmethod
    def _entry(path: Path, runs: dict[str, dict[str, str]], scan: Scan) -> Entry | None:
        match, day = _SLICE.match(path.name), path.parent.parent.name
        if match is None or _DAY.match(day) is None:
            scan.problems.append(f"{path}: unexpected name; expected caseN_dayM/scans/slice_NNNN_W_H_SX_SY.png")
            return None
        slice_id = f"{day}_slice_{match[1]}"
        if slice_id not in runs:
            scan.problems.append(f"{path}: no rows for id {slice_id} in train.csv")
            return None
        return {
            "image": str(path),
            "label_rle": [runs[slice_id].get(name, "") for name in UWMGI_CLASSES],
            "case": _DAY.match(day)[1],
            "day": day,
            "slice": int(match[1]),
            "id": slice_id,
            "height": int(match[3]),
            "width": int(match[2]),
            "pixel_spacing": [float(match[4]), float(match[5])],
        }

    def default_splits(self, cases: Cases) -> Splits:
        return fraction_split(list(cases), UWMGI_FRACTIONS, self.seed)

    def image_shape(self, entry: Entry) -> tuple[int, ...]:
        shape = picture_size(entry["image"])
        if shape != (entry["height"], entry["width"]):
            raise SampleError(
                f"{entry['image']}: picture is {shape[1]}x{shape[0]} "
                f"but its name says {entry['width']}x{entry['height']}"
            )
        return shape

    def read_label(self, entry: Entry) -> np.ndarray:
        """(3, H, W) uint8 binary channels."""
        channels = []
        for name, rle in zip(UWMGI_CLASSES, entry["label_rle"]):
            try:
                channels.append(decode_rle(rle, entry["height"], entry["width"]))
            except ValueError as exc:
                raise SampleError(f"{self.label_source(entry)}, class {name}: {exc}") from exc
        return np.stack(channels)

    def label_source(self, entry: Entry) -> str:
        csv_path = Path(entry["image"]).parents[4] / "train.csv"
        return f"{csv_path} rows for {entry['id']}"
