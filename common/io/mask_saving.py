"""MONAI dictionary transforms that write predicted label masks named after their inputs: 2-D masks as PNG files,
label volumes as NIfTI files."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

from monai.config import KeysCollection
from monai.transforms import MapTransform

from .volumes import volume_suffix
from .writers import write_nifti, write_png_mask


class SaveMask2Dd(MapTransform):
    """Write ``data[key]`` (a ``[1, H, W]`` label map) to ``output_dir/<source stem>_seg.png``.

    ``source_key`` names the item's input path (kept in the datalist because 2-D loading drops metadata).
    Binary (2-class) masks are stored 0/255 like the public datasets' masks; more classes as 0..K-1.
    With ``channel_names`` (multi-label bundles), a ``[K, H, W]`` stack of binary channels is written as one
    0/255 mask per channel, ``<source stem>_<channel name>.png``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | Path,
        num_classes: int,
        source_key: str = "source",
        postfix: str = "seg",
        channel_names: list[str] | None = None,
    ):
        super().__init__(keys)
        self.output_dir, self.num_classes = Path(output_dir), num_classes
        self.source_key, self.postfix, self.channel_names = source_key, postfix, channel_names

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        stem = Path(str(d[self.source_key])).stem
        for key in self.key_iterator(d):
            mask = d[key]
            if self.channel_names is not None:
                if mask.ndim != 3 or mask.shape[0] != len(self.channel_names):
                    raise ValueError(
                        f"{d[self.source_key]}: expected [{len(self.channel_names)}, H, W] binary "
                        f"channels, found {tuple(mask.shape)}"
                    )
                for name, channel in zip(self.channel_names, mask):
                    write_png_mask(channel > 0, self.output_dir / f"{stem}_{name}.png", values="binary255")
                continue
            if mask.ndim == 3:
                if mask.shape[0] != 1:
                    raise ValueError(f"{d[self.source_key]}: expected a [1, H, W] label map, found {tuple(mask.shape)}")
                mask = mask[0]
            values = "binary255" if self.num_classes == 2 else "labels"
            write_png_mask(mask, self.output_dir / f"{stem}_{self.postfix}.png", values=values)
        return d


class SaveMask3Dd(MapTransform):
    """Write ``data[key]`` (a MetaTensor label map ``[1, X, Y, Z]`` on its input's voxel grid) to
    ``output_dir/<input name>_<postfix>.nii.gz``: uint8, the input's affine, written atomically.

    The input name is the ``filename_or_obj`` of the mask's metadata without its volume suffix (``ct.nii.gz`` ->
    ``ct``), or the folder name of a DICOM series: the names ``segment`` gives. Nothing is resampled and the
    mask is not copied to floating point on the way (MONAI's ``SaveImaged`` makes a float32 copy of the volume).
    """

    def __init__(self, keys: KeysCollection, output_dir: str | Path, postfix: str = "seg"):
        super().__init__(keys)
        self.output_dir, self.postfix = Path(output_dir), postfix

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            meta = getattr(mask, "meta", {})
            source = meta.get("filename_or_obj")
            if not source or "affine" not in meta:
                raise ValueError(f"{key}: expected a MetaTensor with filename_or_obj and affine in its metadata")
            if mask.ndim != 4 or mask.shape[0] != 1:
                raise ValueError(f"{source}: expected a [1, X, Y, Z] label map, found {tuple(mask.shape)}")
            source = Path(str(source))
            name = source.name[: len(source.name) - len(volume_suffix(source))]  # a DICOM folder has no suffix
            write_nifti(mask[0], meta["affine"], self.output_dir / f"{name}_{self.postfix}.nii.gz")
        return d
