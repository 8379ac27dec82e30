"""Reading medical images: volumes (NIfTI, NRRD, MetaImage, TransUNet HDF5), DICOM series, 2-D pictures."""

from common.io.dicom_series import DicomSeries, DicomSeriesError, list_dicom_series, read_dicom_series
from common.io.images import ImageReadError, read_binary_mask, read_image_2d
from common.io.volumes import (
    Volume,
    VolumeReadError,
    display_to_ras_axial,
    load_volume,
    ras_axial_to_display,
    reorient,
)

__all__ = [
    "DicomSeries",
    "DicomSeriesError",
    "ImageReadError",
    "Volume",
    "VolumeReadError",
    "display_to_ras_axial",
    "list_dicom_series",
    "load_volume",
    "ras_axial_to_display",
    "read_binary_mask",
    "read_dicom_series",
    "read_image_2d",
    "reorient",
]
