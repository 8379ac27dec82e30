"""HAM10000 dermoscopy (Tschandl et al. 2018) with the lesion segmentations.

Layout: ``HAM10000_images_part_1/ISIC_0024306.jpg`` (and ``part_2``) with
``HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png``. Folder names are matched
without regard to case (some downloads hold both ``HAM10000_images_part_1`` and a lower-case copy;
an image found twice is used once). Split 70/10/20 of the images (seeded).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from common.data.base import Scan, describe_folder, layout_error
from common.data.masks import BinaryMaskDataset

_IMAGE_FOLDER = re.compile(r"^ham10000_images_part_[12]$", re.IGNORECASE)
_MASK_FOLDER = re.compile(r"^ham10000_segmentations_lesion_tschandl$", re.IGNORECASE)
_IMAGE = re.compile(r"^(ISIC_\d{7})\.jpe?g$", re.IGNORECASE)
_MASK = re.compile(r"^(ISIC_\d{7})_segmentation\.png$", re.IGNORECASE)


def _subfolders(folder: Path, pattern: re.Pattern) -> list[Path]:
    """Folders under ``folder`` (one level, and inside a same-named folder) whose names match."""
    found = [p for p in sorted(folder.iterdir()) if p.is_dir() and pattern.match(p.name)]
    nested = [q for p in found for q in sorted(p.iterdir()) if q.is_dir() and pattern.match(q.name)]
    return found + nested


class HAM10000(BinaryMaskDataset):
    """HAM10000 images and lesion masks; one entry per image."""

    name = "ham10000"
    title = "HAM10000 dermoscopy"
    expected_layout = (
        "HAM10000_images_part_1/ISIC_0024306.jpg (and _part_2) with "
        "HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png"
    )
    label_names = ("background", "lesion")
    label_values = {0: "background", 255: "lesion"}
    fractions = (0.7, 0.1, 0.2)

    def scan(self, root: str | os.PathLike | None = None) -> Scan:
        root = self._root(root)
        if not root.is_dir():
            raise layout_error(self.title, root, self.expected_layout, describe_folder(root))
        image_folders, mask_folders = _subfolders(root, _IMAGE_FOLDER), _subfolders(root, _MASK_FOLDER)
        if not image_folders or not mask_folders:
            raise layout_error(self.title, root, self.expected_layout, describe_folder(root))
        scan = Scan(root, {})
        images: dict[str, Path] = {}
        for folder in image_folders:
            for path in sorted(folder.iterdir()):
                if (m := _IMAGE.match(path.name)) is not None:
                    images.setdefault(m[1].upper(), path)
        masks = {m[1].upper(): p for f in mask_folders for p in sorted(f.iterdir()) if (m := _MASK.match(p.name))}
        for case in sorted(images):
            if case not in masks:
                scan.problems.append(f"{images[case]}: no mask {case}_segmentation.png in {mask_folders[0]}")
                continue
            scan.cases[case] = [{"image": str(images[case]), "label": str(masks[case]), "case": case}]
        for case in sorted(set(masks) - set(images)):
            scan.problems.append(f"{masks[case]}: mask without its image {case}.jpg")
        if not scan.cases and not scan.problems:
            raise layout_error(self.title, root, self.expected_layout, "no ISIC_nnnnnnn.jpg images")
        return scan
