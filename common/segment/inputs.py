"""The cases of a ``segment`` input: one volume file, picture or DICOM series folder, or every case in a folder."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pydicom

from common.io.images import PICTURE_SUFFIXES
from common.io.validation import InputError
from common.io.volumes import VOLUME_SUFFIXES, volume_suffix

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One input: ``kind`` is ``"volume"`` (a volume file), ``"dicom"`` (a series folder) or ``"picture"``."""

    name: str
    path: Path
    kind: str


def find_cases(path: str | os.PathLike) -> list[Case]:
    """The cases at ``path``: one file, one DICOM series folder, or every case inside a folder.

    In a folder of cases, volume files and pictures are cases, and so is every sub-folder (read as a DICOM
    series); other files are skipped (and logged). Names are file names without suffix; a name already taken
    keeps its suffix (``a.nii.gz`` and ``a.nrrd`` become cases ``a`` and ``a.nrrd``).
    """
    path = Path(path)
    if path.is_file():
        return [_file_case(path, set())]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    if _holds_dicom_files(path):
        return [Case(path.name, path, "dicom")]
    cases: list[Case] = []
    taken: set[str] = set()
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            case = Case(entry.name, entry, "dicom")
        elif volume_suffix(entry) or entry.suffix.lower() in PICTURE_SUFFIXES:
            case = _file_case(entry, taken)
        else:
            logger.info("%s: skipped (not a volume, picture or DICOM folder)", entry)
            continue
        taken.add(case.name)
        cases.append(case)
    if not cases:
        raise InputError(
            f"{path}: no cases found; expected volume files ({', '.join(VOLUME_SUFFIXES)}), pictures "
            f"({', '.join(PICTURE_SUFFIXES)}) or DICOM series folders"
        )
    return cases


def _file_case(path: Path, taken: set[str]) -> Case:
    suffix = volume_suffix(path)
    if suffix:
        kind = "volume"
    elif path.suffix.lower() in PICTURE_SUFFIXES:
        kind, suffix = "picture", path.suffix
    else:
        raise InputError(
            f"{path}: not a volume or picture; expected one of {', '.join(VOLUME_SUFFIXES + PICTURE_SUFFIXES)}, "
            "or a DICOM series folder"
        )
    stem = path.name[: -len(suffix)]
    return Case(stem if stem not in taken else path.name, path, kind)


def _holds_dicom_files(folder: Path) -> bool:
    """Whether ``folder`` itself holds DICOM files (``.dcm`` or a DICM preamble), i.e. is a series folder."""
    return any(
        entry.is_file() and (entry.suffix.lower() == ".dcm" or pydicom.misc.is_dicom(entry))
        for entry in folder.iterdir()
        if not entry.name.startswith(".")
    )
