"""PH2 dermoscopy (Mendonca et al. 2013).

Layout: ``PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp`` with
``IMD002_lesion/IMD002_lesion.bmp`` (the ``IMD002_roi/`` folders are ignored). Split: 80 train,
20 validation, 100 test of the 200 images (seeded).
"""

from __future__ import annotations

import os
import re

from common.data.base import Scan, describe_folder, find_folder, layout_error
from common.data.masks import BinaryMaskDataset

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
