"""PH2 dermoscopy (Mendonca et al. 2013).

Layout: ``PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp`` with
``IMD002_lesion/IMD002_lesion.bmp`` (the ``IMD002_roi/`` folders are ignored). Split: the authors' published
lists (80 train, 20 validation, 100 test; ``common/resources/splits/ph2``). They equal our former seeded split
(seed 42, 40/10/50), which ``PH2(seeded=True)`` still gives.
"""

from __future__ import annotations

import os
import re

from common.data.base import Cases, Scan, describe_folder, find_folder, layout_error
from common.data.masks import BinaryMaskDataset
from common.data.splits import AUTHORS_LIST, DEFAULT_SEED, Splits, published_list

_CASE = re.compile(r"^IMD\d{3}$")


class PH2(BinaryMaskDataset):
    """PH2 ``IMDnnn`` folders; one entry per image."""

    name = "ph2"
    title = "PH2 dermoscopy"
    expected_layout = (
        "PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp "
        "and IMD002/IMD002_lesion/IMD002_lesion.bmp"
    )
    label_names = ("background", "lesion")
    label_values = {0: "background", 255: "lesion"}
    fractions = (0.4, 0.1, 0.5)

    def __init__(self, root: str | os.PathLike | None = None, seed: int = DEFAULT_SEED, seeded: bool = False):
        super().__init__(root, seed)
        self.seeded = seeded

    def default_splits(self, cases: Cases) -> Splits:
        if self.seeded:
            return super().default_splits(cases)
        lists = {"train": "train", "validation": "val", "test": "test"}
        return {name: sorted(c for c in published_list("ph2", file) if c in cases) for name, file in lists.items()}

    def split_origin(self) -> str:
        return super().split_origin() if self.seeded else f"{AUTHORS_LIST} (80 / 20 / 100)"

    def scan(self, root: str | os.PathLike | None = None) -> Scan:
        root = self._root(root)
        folder = find_folder(
            root,
            ["PH2Dataset/PH2 Dataset images", "PH2 Dataset images", ""],
            lambda f: any(_CASE.match(p.name) for p in f.iterdir() if p.is_dir()),
        )
        if folder is None:
            raise layout_error(self.title, root, self.expected_layout, describe_folder(root))
        scan = Scan(folder, {})
        for case_folder in sorted(p for p in folder.iterdir() if p.is_dir() and _CASE.match(p.name)):
            case = case_folder.name
            image = case_folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp"
            label = case_folder / f"{case}_lesion" / f"{case}_lesion.bmp"
            missing = [str(p.relative_to(folder)) for p in (image, label) if not p.is_file()]
            if missing:
                scan.problems.append(f"{case_folder}: missing {', '.join(missing)}")
                continue
            scan.cases[case] = [{"image": str(image), "label": str(label), "case": case}]
        return scan
