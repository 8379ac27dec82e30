"""BUSI breast ultrasound (Al-Dhabyani et al. 2020).

Layout: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/benign (1).png`` with ``benign (1)_mask.png``
and, for some images, extra masks ``benign (4)_mask_1.png``. As in the authors' code, the label is
``<case>_mask.png`` alone; ``BUSI(unite_masks=True)`` unites every mask of the image instead. Normal images
have empty masks. Split 80/10/10 of the images (seeded; the authors did not publish theirs).
"""

from __future__ import annotations

import os
import re

from common.data.base import Scan, describe_folder, find_folder, layout_error
from common.data.masks import BinaryMaskDataset
from common.data.splits import DEFAULT_SEED, SEEDED_SPLIT

BUSI_CLASSES = ("benign", "malignant", "normal")
_IMAGE = re.compile(r"^((?:benign|malignant|normal) \(\d+\))\.png$")
_MASK = re.compile(r"^((?:benign|malignant|normal) \(\d+\))_mask(?:_(\d+))?\.png$")


class BUSI(BinaryMaskDataset):
    """``Dataset_BUSI_with_GT``; one entry per image, ``class`` benign / malignant / normal."""

    name = "busi"
    title = "BUSI breast ultrasound"
    expected_layout = "Dataset_BUSI_with_GT/{benign,malignant,normal}/'benign (1).png' with 'benign (1)_mask.png'"
    label_names = ("background", "tumour")
    label_values = {0: "background", 255: "tumour"}
    fractions = (0.8, 0.1, 0.1)

    def __init__(self, root: str | os.PathLike | None = None, seed: int = DEFAULT_SEED, unite_masks: bool = False):
        super().__init__(root, seed)
        self.unite_masks = unite_masks

    def split_origin(self) -> str:
        return f"{SEEDED_SPLIT} (seed {self.seed}): 80/10/10 of the images; the authors did not publish theirs"

    def scan(self, root: str | os.PathLike | None = None) -> Scan:
        root = self._root(root)
        folder = find_folder(root, ["Dataset_BUSI_with_GT", ""], lambda f: any((f / c).is_dir() for c in BUSI_CLASSES))
        if folder is None:
            raise layout_error(self.title, root, self.expected_layout, describe_folder(root))
        scan = Scan(folder, {})
        extra = 0
        for class_name in BUSI_CLASSES:
            class_folder = folder / class_name
            if not class_folder.is_dir():
                scan.notes.append(f"no {class_name}/ folder in {folder}")
                continue
            images, masks, ignored = {}, {}, []
            for path in sorted(class_folder.iterdir()):
                if (m := _MASK.match(path.name)) is not None:
                    masks.setdefault(m[1], []).append((int(m[2] or 0), path))
                elif (m := _IMAGE.match(path.name)) is not None:
                    images[m[1]] = path
                elif not path.name.startswith("."):
                    ignored.append(path.name)
            for case, image in images.items():
                if case not in masks:
                    scan.problems.append(f"{image}: no mask file '{case}_mask.png'")
                    continue
                found = sorted(masks[case])
                if not self.unite_masks and found[0][0] != 0:
                    scan.problems.append(f"{image}: no mask file '{case}_mask.png' (only {found[0][1].name})")
                    continue
                paths = [str(p) for _, p in (found if self.unite_masks else found[:1])]
                extra += len(found) - len(paths)
                scan.cases[case] = [{"image": str(image), "label": paths, "case": case, "class": class_name}]
            for case in sorted(set(masks) - set(images)):
                scan.problems.append(f"{masks[case][0][1]}: mask without its image '{case}.png'")
            if ignored:
                scan.notes.append(f"{class_folder}: ignored {len(ignored)} other files, e.g. {ignored[0]}")
        if extra:
            scan.notes.append(
                f"{extra} extra mask file(s) '<case>_mask_<n>.png' not used, as in the authors' code "
                "(unite_masks=True unites them)"
            )
        if not scan.cases and not scan.problems:
            raise layout_error(self.title, folder, self.expected_layout, "no 'benign (n).png' style images")
        return scan
