"""Find the bundles the app serves and read what MONAI Label needs from their ``configs/metadata.json``.

A bundle is a folder ``<name>/`` with ``configs/inference.json`` and ``configs/metadata.json``, read as ``segment``
reads it (:func:`common.segment.bundle_metadata.read_bundle_metadata`): its label names come from
``network_data_format.outputs.pred.channel_def`` and its input kind from ``data_type`` (volume bundles segment
volumes slice by slice, the others 2-D pictures). A multi-label bundle (output ``format`` ``"classes"``: one
sigmoid channel per structure, no background channel) is served as a label map whose value ``k + 1`` marks
channel ``k``, 0 the background. :class:`BundleError` also refuses an unusable ``models`` selection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.io.images import PICTURE_SUFFIXES
from common.segment.bundle_metadata import BundleError, read_bundle_metadata


@dataclass(frozen=True)
class Bundle:
    """What the app needs to know about one bundle.

    Attributes:
        name: folder name, used as the MONAI Label model name.
        path: bundle folder.
        label_names: label value -> name of the label maps the app returns (background 0 included), from the
            prediction's ``channel_def``; a multi-label bundle's channel ``k`` is label ``k + 1``.
        segments_volumes: True for volume bundles (data_type nifti/nibabel/dicom/...), False for 2-D pictures.
        multilabel: True when the bundle predicts independent channels (``format`` "classes").
    """

    name: str
    path: Path
    label_names: dict[int, str]
    segments_volumes: bool
    multilabel: bool = False

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
    metadata = read_bundle_metadata(path / "configs" / "metadata.json")
    return Bundle(path.name, path, metadata.label_map_names, metadata.spatial_dims == 3, metadata.multilabel)


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
        raise BundleError(
            f"models {names!r}: expected 'all' or names from {root}: {', '.join(available)}; "
            f"unknown: {', '.join(unknown) or '(none given)'}"
        )
    return {name: read_bundle(root / name) for name in wanted}
