"""What a bundle's ``configs/metadata.json`` says about segmenting with it: one reader for ``segment`` and MONAI Label.

:func:`read_bundle_metadata` reads the input channels (``network_data_format.inputs.image.num_channels``), the
labels (``outputs.pred.channel_def``: label value -> name), whether the prediction is multi-label (output
``format`` ``"classes"``: one sigmoid channel per structure, no background channel) and whether the bundle
segments volumes or 2-D pictures (``data_type``, in the one vocabulary below).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

#: ``data_type`` values (any case) of bundles whose inputs are 3-D volumes: ours write ``"nifti"``, the model zoo's
#: also ``"nibabel"``, ``"dicom"``, ``"itk"``. Any other value (ours ``"png"``, the zoo's ``"image"``) is 2-D pictures.
VOLUME_DATA_TYPES = ("nifti", "nibabel", "dicom", "itk", "nrrd")
#: Output ``format`` values (any case) of multi-label bundles: independent channels, each thresholded.
MULTILABEL_FORMATS = ("classes",)


class BundleError(ValueError):
    """The bundle folder or its weights cannot be used; the message names the file."""


@dataclass(frozen=True)
class BundleMetadata:
    """A bundle's ``metadata.json``, as far as segmenting with it goes.

    Attributes:
        num_channels: channels of the input images.
        channel_def: the prediction's ``channel_def``: label value -> name (a label map, 0 the background), or
            channel -> name (multi-label).
        multilabel: the prediction is independent binary channels rather than a label map.
        spatial_dims: 3 for a bundle that segments volumes (slice by slice), 2 for one that segments pictures.
    """

    num_channels: int
    channel_def: dict[int, str]
    multilabel: bool
    spatial_dims: int

    @property
    def num_classes(self) -> int:
        """Output channels of the network: labels with the background, or the multi-label channels."""
        return len(self.channel_def)

    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> name of the foreground labels (1..) of a label-map bundle; empty for a multi-label one."""
        return {} if self.multilabel else {value: name for value, name in self.channel_def.items() if value > 0}

    @property
    def channel_names(self) -> list[str] | None:
        """A multi-label bundle's channel names in channel order; ``None`` for a label-map bundle."""
        return [self.channel_def[k] for k in sorted(self.channel_def)] if self.multilabel else None

    @property
    def label_map_names(self) -> dict[int, str]:
        """Label value -> name of the label map of the bundle's prediction (background 0 included, where the
        ``channel_def`` names it): a multi-label bundle's channel ``k`` is value ``k + 1``, 0 the background."""
        if self.multilabel:
            return {0: "background", **{value + 1: name for value, name in sorted(self.channel_def.items())}}
        return dict(self.channel_def)


def read_bundle_metadata(path: str | Path) -> BundleMetadata:
    """Read the bundle metadata file ``path``; raises :class:`BundleError` naming the file and what is missing."""
    path = Path(path)
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read the bundle metadata ({exc})") from exc
    try:
        formats = metadata["network_data_format"]
        num_channels = int(formats["inputs"]["image"]["num_channels"])
        prediction = formats["outputs"]["pred"]
        channel_def = {int(value): str(name) for value, name in prediction["channel_def"].items()}
        if not channel_def:
            raise ValueError("channel_def is empty")
        multilabel = str(prediction.get("format", "")).lower() in MULTILABEL_FORMATS
        data_type = str(metadata.get("data_type", "")).lower()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(
            f"{path}: expected network_data_format with inputs.image.num_channels and outputs.pred.channel_def "
            f"naming the labels by value ({type(exc).__name__}: {exc})"
        ) from exc
    return BundleMetadata(num_channels, channel_def, multilabel, 3 if data_type in VOLUME_DATA_TYPES else 2)
