"""HAM10000 dermoscopy (Tschandl et al. 2018) with the lesion segmentations.

Layout: ``HAM10000_images_part_1/ISIC_0024306.jpg`` (and ``part_2``) with
``HAM10000_segmentations_lesion_tschandl/ISIC_0024306_segmentation.png``. Folder names are matched
without regard to case (some downloads hold both ``HAM10000_images_part_1`` and a lower-case copy;
an image found twice is used once). Split: the test set is the authors' published list of 1,015 images
(``common/resources/splits/ham10000/test.txt``); the other images are split 8:1 into train and validation
(seeded), the authors' train/validation lists not being published.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from common.data.base import Cases, Scan, describe_folder, layout_error
from common.data.masks import BinaryMaskDataset
from common.data.splits import AUTHORS_LIST, Splits, published_list

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
    validation_share = 1 / 9  # of the images outside the authors' test list: 9,000 -> 8,000 train, 1,000 validation

    def default_splits(self, cases: Cases) -> Splits:
        test_ids = {f"ISIC_{number}" for number in published_list("ham10000", "test")}
        test = sorted(c for c in cases if c in test_ids)
        rest = sorted(c for c in cases if c not in test_ids)
        random.Random(self.seed).shuffle(rest)
        n_validation = int(len(rest) * self.validation_share + 0.5)
        return {"train": sorted(rest[n_validation:]), "validation": sorted(rest[:n_validation]), "test": test}

    def split_origin(self) -> str:
        return f"test = {AUTHORS_LIST} (1,015 images); train/validation = 8:1 of the others, seeded ({self.seed})"

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
