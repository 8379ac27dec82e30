"""MONAI Label's DICOMweb datastore, fetching and converting a series without holding it in memory.

MONAI Label's own ``DICOMWebDatastore`` retrieves a series as one WADO-RS response held whole (the DICOM bytes
about three times over while it is split into instances) and converts it with SimpleITK, which holds the whole
volume, to a ``.nii.gz`` that the inference task must then decompress whole again. Here the instances are
written to the cache as they arrive (:func:`common.io.dicomweb.retrieve_series`, into a folder that takes the
series' name only when complete, so an interrupted download is not taken for a series), and the series becomes
an uncompressed ``<SeriesInstanceUID>.nii`` written a slab of slices at a time
(:func:`common.io.writers.write_volume_nifti`; the grid and voxels of SimpleITK's conversion), which the
inference task reads a slab at a time from the file. Everything else (search, labels as DICOM SEG,
credentials, the cache folder) is MONAI Label's.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from pydicom.uid import UID

from common.io.dicomweb import DicomWebError, retrieve_series, study_of_series
from common.io.lazy_volumes import open_lazy_volume
from common.io.writers import write_volume_nifti

logger = logging.getLogger(__name__)


class StreamingDICOMWebDatastore(DICOMWebDatastore):
    """:class:`DICOMWebDatastore` whose series download and NIfTI conversion hold a slab, not the volume."""

    def get_image_uri(self, image_id: str) -> str:
        """The cached ``<image_id>.nii`` (or the series folder, with MONAI Label's conversion turned off), fetched
        and converted on first use. MONAI Label's frame-by-frame fetch, where configured, is left to it."""
        if self._fetch_by_frame:
            return super().get_image_uri(image_id)
        if not UID(image_id).is_valid:  # it names files in the cache: nothing but a UID may
            raise HTTPException(status_code=404, detail=f"image {image_id!r}: expected a SeriesInstanceUID")
        images = Path(self._datastore.image_path()).resolve()
        series_folder, nifti = images / image_id, images / f"{image_id}.nii"
        # one fetch and conversion per series, however many requests ask for it at once (each waits for the first)
        with FileLock(str(images.parent / f"{image_id}.lock")):
            if not series_folder.is_dir() or not any(series_folder.iterdir()):
                try:
                    self._download(image_id, series_folder)
                except LookupError as exc:  # the viewer shows the reason: not on the PACS (HTTP 404)
                    raise HTTPException(status_code=404, detail=str(exc)) from exc
                except DicomWebError as exc:  # the PACS failed to deliver it (HTTP 502)
                    raise HTTPException(status_code=502, detail=str(exc)) from exc
            if not self._convert_to_nifti:
                return str(series_folder)
            if not nifti.is_file():
                try:
                    self._convert(image_id, series_folder, nifti)
                except ValueError as exc:  # a series the bundles cannot read: why, to the viewer (HTTP 422)
                    raise HTTPException(status_code=422, detail=f"series {image_id}: {exc}") from exc
        return str(nifti)

    def _convert(self, series_uid: str, folder: Path, nifti: Path) -> None:
        """The series in ``folder`` as ``nifti``, added to the datastore; written outside the datastore folder,
        whose watcher would see it, and copied in by ``add_image``."""
        with tempfile.TemporaryDirectory(dir=nifti.parent.parent) as scratch:
            converted = write_volume_nifti(open_lazy_volume(folder, series_uid=series_uid), Path(scratch) / nifti.name)
            LocalDatastore.add_image(self, series_uid, str(converted), self._dicom_info(series_uid))
        logger.info(f"{series_uid}: converted to {nifti} a slab at a time")

    def _download(self, series_uid: str, folder: Path) -> None:
        """WADO-RS the series into ``folder``, an instance at a time, through ``<folder>.partial``; a series the
        PACS does not hold raises :class:`LookupError`."""
        study_uid = study_of_series(self._client, self._client.base_url, series_uid)
        if study_uid is None:
            raise LookupError(f"series {series_uid}: not found on {self._client.base_url}")
        partial = folder.with_name(f"{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        files = retrieve_series(self._client, self._client.base_url, study_uid, series_uid, partial)
        shutil.rmtree(folder, ignore_errors=True)  # an empty folder left by an earlier attempt
        partial.rename(folder)
        logger.info(f"{series_uid}: {len(files)} instances fetched into {folder}")
