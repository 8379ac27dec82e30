"""Write miniature copies of the public dataset layouts for tests.

Each ``write_*`` function creates the folder tree a user gets from the publisher (real file and
folder names, spaces and parentheses included, extra files the readers must ignore) with a few tiny
synthetic images, and returns the folder a user would pass as ``--root``. Labels are discs and
squares, so every case has foreground. ``write_dicom_series`` writes a volume as a DICOM series;
``nimare_template`` finds the real MNI152 volumes that the nimare wheel ships.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from common.data.synapse import TRANSUNET_TEST_CASES, TRANSUNET_TRAIN_CASES
from common.data.uwmgi import UWMGI_CLASSES, encode_rle

LPS = np.diag([-1.0, -1.0, 1.0])


def disc(shape: Sequence[int], center: Sequence[float], radius: float) -> np.ndarray:
    """Boolean array of ``shape`` that is True within ``radius`` of ``center`` (any number of axes)."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, center)) <= radius**2


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``array`` as NIfTI (default affine: 1.5 x 1.5 x 3 mm, RAS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), path)
    return path


def write_picture(path: Path, array: np.ndarray) -> Path:
    """Save a (H, W) or (H, W, 3) array with PIL (format from the suffix; uint16 gives 16-bit PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _label_map(shape: Sequence[int], values: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Discs of the given label values at random places (later ones drawn on top)."""
    label = np.zeros(shape, dtype=np.uint8)
    for value in values:
        center = [rng.uniform(0.3 * n, 0.7 * n) for n in shape]
        label[disc(shape, center, 0.2 * min(shape[:2]))] = value
    return label


# ----------------------------------------------------------------------------- Synapse


def write_synapse_npz(
    root: Path,
    n_train_cases: int = 2,
    slices_per_case: int = 3,
    n_test_cases: int = 2,
    size: tuple[int, int] = (32, 32),
    depth: int = 4,
    with_lists: bool = True,
) -> Path:
    """TransUNet release: ``train_npz/caseNNNN_sliceNNN.npz``, ``test_vol_h5/caseNNNN.npy.h5``, lists."""
    rng = np.random.default_rng(0)
    train_names = []
    for case in TRANSUNET_TRAIN_CASES[:n_train_cases]:
        for k in range(slices_per_case):
            name = f"{case}_slice{k:03d}"
            label = _label_map(size, (1, 5, 8), rng).astype(np.float32)
            image = np.clip(label / 8 + rng.uniform(0, 0.2, size), 0, 1).astype(np.float32)
            (root / "train_npz").mkdir(parents=True, exist_ok=True)
            np.savez(root / "train_npz" / f"{name}.npz", image=image, label=label)
            train_names.append(name)
    for case in TRANSUNET_TEST_CASES[:n_test_cases]:
        label = _label_map((depth, *size), (2, 6), rng).astype(np.float32)
        (root / "test_vol_h5").mkdir(parents=True, exist_ok=True)
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"] = rng.uniform(0, 1, (depth, *size)).astype(np.float32)
            f["label"] = label
    if with_lists:
        lists = root / "lists" / "lists_Synapse"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / "train.txt").write_text("".join(f"{n}\n" for n in train_names))
        (lists / "test_vol.txt").write_text("".join(f"{c}\n" for c in TRANSUNET_TEST_CASES[:n_test_cases]))
    return root


def write_synapse_raw(
    root: Path, n_train_cases: int = 2, n_test_cases: int = 2, shape: tuple[int, int, int] = (24, 20, 6)
) -> Path:
    """Raw BTCV: ``RawData/Training/img/img0005.nii.gz`` + ``label/label0005.nii.gz`` (labels 0-13), and Testing/."""
    rng = np.random.default_rng(1)
    training = root / "RawData" / "Training"
    for case in TRANSUNET_TRAIN_CASES[:n_train_cases] + TRANSUNET_TEST_CASES[:n_test_cases]:
        number = case[len("case") :]
        label = _label_map(shape, (1, 5, 6, 11, 13), rng)
        image = (rng.normal(40, 20, shape) - 1000 * (label == 0) * disc(shape, (0, 0, 0), 8)).astype(np.int16)
        write_nifti(training / "img" / f"img{number}.nii.gz", image)
        write_nifti(training / "label" / f"label{number}.nii.gz", label)
    write_nifti(root / "RawData" / "Testing" / "img" / "img0061.nii.gz", np.zeros(shape, np.int16))
    return root


# ----------------------------------------------------------------------------- ACDC


def write_acdc(root: Path, n_patients: int = 10, shape: tuple[int, int, int] = (20, 18, 4), n_frames: int = 6) -> Path:
    """ACDC: ``database/training/patientNNN/`` with Info.cfg, ED/ES frames, ``_gt`` labels and the 4-D cine."""
    rng = np.random.default_rng(2)
    training = root / "database" / "training"
    for n in range(1, n_patients + 1):
        patient = training / f"patient{n:03d}"
        ed, es = 1, int(rng.integers(2, n_frames + 1))
        patient.mkdir(parents=True, exist_ok=True)
        (patient / "Info.cfg").write_text(
            f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 170.0\nNbFrame: {n_frames}\nWeight: 70.0\n"
        )
        for frame in (ed, es):
            label = _label_map(shape, (2, 3, 1), rng)
            image = (label * 100 + rng.uniform(0, 50, shape)).astype(np.int16)
            write_nifti(patient / f"patient{n:03d}_frame{frame:02d}.nii.gz", image, np.diag([1.5, 1.5, 10.0, 1.0]))
            write_nifti(patient / f"patient{n:03d}_frame{frame:02d}_gt.nii.gz", label, np.diag([1.5, 1.5, 10.0, 1.0]))
        write_nifti(patient / f"patient{n:03d}_4d.nii.gz", np.zeros((*shape, n_frames), np.int16))
    (root / "database" / "testing" / "patient101").mkdir(parents=True, exist_ok=True)
    return root


# ----------------------------------------------------------------------------- 2-D colour pictures with 0/255 masks


def write_busi(
    root: Path, counts: dict[str, int] | None = None, size: tuple[int, int] = (40, 32), extra_mask_every: int = 3
) -> Path:
    """BUSI: ``Dataset_BUSI_with_GT/benign/benign (1).png`` + ``benign (1)_mask.png`` (+ ``_mask_1`` extras).

    Images are grey stored as RGB; normal images have empty masks; every ``extra_mask_every``-th
    benign/malignant image gets a second mask file elsewhere in the picture.
    """
    rng = np.random.default_rng(3)
    counts = counts or {"benign": 4, "malignant": 3, "normal": 2}
    folder = root / "Dataset_BUSI_with_GT"
    for class_name, count in counts.items():
        for n in range(1, count + 1):
            stem = folder / class_name / f"{class_name} ({n})"
            mask = np.zeros(size, np.uint8)
            if class_name != "normal":
                mask[disc(size, (size[0] * 0.3, size[1] * 0.3), 5)] = 255
            grey = (rng.uniform(0, 120, size) + (mask > 0) * 100).astype(np.uint8)
            write_picture(stem.with_name(stem.name + ".png"), np.repeat(grey[..., None], 3, axis=-1))
            write_picture(stem.with_name(stem.name + "_mask.png"), mask)
            if class_name != "normal" and n % extra_mask_every == 0:
                extra = np.zeros(size, np.uint8)
                extra[disc(size, (size[0] * 0.75, size[1] * 0.75), 4)] = 255
                write_picture(stem.with_name(stem.name + "_mask_1.png"), extra)
    return root


def write_ham10000(root: Path, n_images: int = 10, size: tuple[int, int] = (30, 40)) -> Path:
    """HAM10000: ``HAM10000_images_part_1|2/ISIC_nnnnnnn.jpg`` + ``HAM10000_segmentations_lesion_tschandl/``."""
    rng = np.random.default_rng(4)
    for n in range(n_images):
        case = f"ISIC_{24306 + n:07d}"
        part = "HAM10000_images_part_1" if n < n_images / 2 else "HAM10000_images_part_2"
        mask = disc(size, (size[0] / 2, size[1] / 2), 6).astype(np.uint8) * 255
        rgb = (rng.uniform(0, 100, (*size, 3)) + (mask[..., None] > 0) * 120).astype(np.uint8)
        write_picture(root / part / f"{case}.jpg", rgb)
        write_picture(root / "HAM10000_segmentations_lesion_tschandl" / f"{case}_segmentation.png", mask)
    (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\n")
    return root


def write_ph2(root: Path, n_images: int = 10, size: tuple[int, int] = (28, 36)) -> Path:
    """PH2: ``PH2Dataset/PH2 Dataset images/IMDnnn/`` with ``_Dermoscopic_Image``, ``_lesion``, ``_roi`` folders."""
    rng = np.random.default_rng(5)
    images = root / "PH2Dataset" / "PH2 Dataset images"
    for n in range(n_images):
        case = f"IMD{2 + 2 * n:03d}"
        mask = disc(size, (size[0] / 2, size[1] / 2), 7).astype(np.uint8) * 255
        rgb = (rng.uniform(0, 100, (*size, 3)) + (mask[..., None] > 0) * 100).astype(np.uint8)
        write_picture(images / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp", rgb)
        write_picture(images / case / f"{case}_lesion" / f"{case}_lesion.bmp", mask)
        write_picture(images / case / f"{case}_roi" / f"{case}_R1_Label4.bmp", mask)
    (root / "PH2Dataset" / "PH2_dataset.txt").write_text("|| Name || Histological Diagnosis ||\n")
    return root


# ----------------------------------------------------------------------------- UW-Madison GI Tract


def write_uwmgi(
    root: Path, n_cases: int = 5, days_per_case: int = 2, slices_per_day: int = 3, size: tuple[int, int] = (24, 20)
) -> Path:
    """UW-Madison: ``train/caseN/caseN_dayM/scans/slice_NNNN_W_H_1.50_1.50.png`` (16-bit) + ``train.csv`` (RLE)."""
    rng = np.random.default_rng(6)
    height, width = size
    rows = []
    for c in range(n_cases):
        case = f"case{101 + c}"
        for d in range(days_per_case):
            day = f"{case}_day{d * 10}"
            for s in range(1, slices_per_day + 1):
                masks = {
                    "large_bowel": disc(size, (height * 0.4, width * 0.4), 5),
                    "small_bowel": disc(size, (height * 0.5, width * 0.5), 4),  # overlaps large bowel
                    "stomach": disc(size, (height * 0.7, width * 0.3), 3) if s != 1 else np.zeros(size, bool),
                }
                image = (rng.uniform(0, 2000, size) + masks["large_bowel"] * 10000).astype(np.uint16)
                write_picture(
                    root / "train" / case / day / "scans" / f"slice_{s:04d}_{width}_{height}_1.50_1.50.png", image
                )
                rows += [(f"{day}_slice_{s:04d}", name, encode_rle(masks[name])) for name in UWMGI_CLASSES]
    with (root / "train.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "class", "segmentation"])
        writer.writerows(rows)
    return root


# ----------------------------------------------------------------------------- nnU-Net raw


def write_nnunet(
    root: Path,
    n_train: int = 5,
    n_test: int = 2,
    n_channels: int = 1,
    shape: tuple[int, int, int] = (16, 16, 5),
    labels: Sequence[str] = ("background", "liver", "tumour"),
    name: str = "Dataset501_Mini",
) -> Path:
    """nnU-Net v2: ``DatasetNNN_Name/dataset.json``, ``imagesTr/case_0000.nii.gz``, ``labelsTr/``, ``imagesTs/``."""
    rng = np.random.default_rng(7)
    folder = root / name
    channel_names = {str(i): "CT" if i == 0 else f"MR{i}" for i in range(n_channels)}
    for subset, count, offset in (("Tr", n_train, 0), ("Ts", n_test, 100)):
        for n in range(count):
            case = f"mini_{n + offset:03d}"
            for channel in range(n_channels):
                write_nifti(
                    folder / f"images{subset}" / f"{case}_{channel:04d}.nii.gz",
                    rng.normal(0, 100, shape).astype(np.float32),
                )
            label = _label_map(shape, range(1, len(labels)), rng)
            write_nifti(folder / f"labels{subset}" / f"{case}.nii.gz", label)
    (folder / "imagesTr" / "._mini_000_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    description = {
        "channel_names": channel_names,
        "labels": {label: value for value, label in enumerate(labels)},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(description, indent=1))
    return folder


# ----------------------------------------------------------------------------- DICOM


def write_dicom_series(
    folder: Path,
    values: np.ndarray,
    affine: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    modality: str = "MR",
    series_uid: str | None = None,
    study_uid: str | None = None,
    skip_slices: Sequence[int] = (),
    shuffle_seed: int = 0,
    prefix: str = "IM",
) -> list[Path]:
    """Write a (X, Y, Z) volume with a RAS ``affine`` as single-frame DICOM files, in shuffled file order.

    Stored pixels are ``round((values - intercept) / slope)`` as int16; slice ``k`` goes to a file whose
    name does not reveal ``k``. Slices in ``skip_slices`` are left out (a gappy series). Returns the files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.round((np.asarray(values, dtype=np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("values do not fit int16 with this slope and intercept")
    series_uid, study_uid, frame_uid = series_uid or generate_uid(), study_uid or generate_uid(), generate_uid()
    columns, rows = (np.linalg.norm(affine[:3, i]) for i in (0, 1))
    row_cosine, column_cosine = LPS @ affine[:3, 0] / columns, LPS @ affine[:3, 1] / rows
    file_numbers = np.random.default_rng(shuffle_seed).permutation(values.shape[2])
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    paths = []
    for k in range(values.shape[2]):
        if k in skip_slices:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID, ds.PatientName, ds.Modality, ds.SeriesDescription = "MINI", "Mini^Test", modality, "miniature"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [DSfloat(v, auto_format=True) for v in LPS @ (affine @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [DSfloat(v, auto_format=True) for v in (*row_cosine, *column_cosine)]
        ds.PixelSpacing = [DSfloat(rows, auto_format=True), DSfloat(columns, auto_format=True)]
        ds.SliceThickness = DSfloat(np.linalg.norm(affine[:3, 2]), auto_format=True)
        ds.RescaleSlope, ds.RescaleIntercept = DSfloat(slope, auto_format=True), DSfloat(intercept, auto_format=True)
        ds.Rows, ds.Columns = values.shape[1], values.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype("<i2")).tobytes()
        path = folder / f"{prefix}{file_numbers[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- real volumes shipped in packages


def nimare_template(filename: str = "tpl-MNI152NLin6Asym_res-02_T1w.nii.gz") -> Path:
    """Path of an MNI152 template NIfTI shipped inside the nimare wheel (found without importing nimare)."""
    import importlib.util

    spec = importlib.util.find_spec("nimare")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nimare is not installed")
    path = Path(spec.submodule_search_locations[0]) / "resources" / "templates" / filename
    if not path.is_file():
        raise FileNotFoundError(path)
    return path
