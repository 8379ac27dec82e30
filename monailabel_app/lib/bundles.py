"""Find the bundles the app serves and read what MONAI Label needs from their ``configs/metadata.json``.

A bundle is a folder ``<name>/`` with ``configs/inference.json`` and ``configs/metadata.json``; its label
names come from ``network_data_format.outputs.pred.channel_def`` and its input kind from ``data_type``:
``"nifti"``/``"dicom"`` bundles segment volumes slice by slice, the others (``"png"``, ...) 2-D pictures.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from common.io.images import PICTURE_SUFFIXES

#: ``data_type`` values of bundles whose inputs are 3-D volumes.
VOLUME_DATA_TYPES = ("nifti", "dicom")
#: The repository's bundle folder: the default for the ``bundles`` conf key.
DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"


class BundleError(ValueError):
    """A bundle folder or the ``models`` selection is not usable; the message names the path and the problem."""


@dataclass(frozen=True)
class Bundle:
    """What the app needs to know about one bundle.

    Attributes:
        name: folder name, used as the MONAI Label model name.
        path: bundle folder.
        label_names: label value -> name, from the prediction's ``channel_def`` (background included).
        segments_volumes: True for volume bundles (data_type nifti/dicom), False for 2-D picture bundles.
    """

    name: str
    path: Path
    label_names: dict[int, str]
    segments_volumes: bool

    @property
    def dimension(self) -> int:
        """Dimension of the images it segments, as MONAI Label reports it: 3 (volumes) or 2 (pictures)."""
        return 3 if self.segments_volumes else 2

    def accepts(self, image_path: str | os.PathLike) -> bool:
        """Whether ``image_path`` is the kind of image this bundle segments (a volume or a picture)."""
        return is_picture(image_path) != self.segments_volumes


def is_picture(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a 2-D picture (PNG, JPEG, BMP, TIFF) rather than a volume."""
    return Path(path).suffix.lower() in PICTURE_SUFFIXES


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Read ``path/configs/metadata.json``; raises :class:`BundleError` naming the file and the missing field."""
    path = Path(path)
    metadata_file = path / "configs" / "metadata.json"
    try:
        metadata = json.loads(metadata_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{metadata_file}: cannot read the bundle metadata ({exc})") from exc
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    channel_def = next(iter(outputs.values()), {}).get("channel_def") if outputs else None
    if not channel_def:
        raise BundleError(
            f"{metadata_file}: expected network_data_format.outputs.pred.channel_def naming the labels, found none"
        )
    try:
        label_names = {int(value): str(name) for value, name in channel_def.items()}
    except ValueError:
        raise BundleError(f"{metadata_file}: channel_def keys must be label values, found {list(channel_def)}") from None
    data_type = str(metadata.get("data_type", "")).lower()
    return Bundle(path.name, path, label_names, data_type in VOLUME_DATA_TYPES)


def select_bundles(root: str | os.PathLike, names: str = "all") -> dict[str, Bundle]:
    """The bundles under ``root`` named in ``names`` ("all" or comma-separated folder names), by name.

    Raises :class:`BundleError` when ``root`` holds no bundle or a name is not one of them.
    """
    root = Path(root)
    folders = sorted(root.iterdir()) if root.is_dir() else []
    available = [p.name for p in folders if (p / "configs" / "inference.json").is_file()]
    if not available:
        raise BundleError(f"{root}: expected bundle folders with configs/inference.json, found none")
    wanted = available if names.strip().lower() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in available]
    if unknown or not wanted:
        raise BundleError(f"models {names!r}: expected 'all' or names from {root}: {', '.join(available)}; "
                          f"unknown: {', '.join(unknown) or '(none given)'}")
    return {name: read_bundle(root / name) for name in wanted}
