"""MONAI Label on the PACS: the app served against Orthanc's DICOMweb (MONAI Label's DICOMweb datastore, with the
app's streaming fetch and conversion).

A CT series (pydicom's CT slice, four slices) is uploaded to the test Orthanc; the server (``.venv-label``, as
``make label STUDIES=http://HOST/dicom-web`` runs it, dcmqi's ``itkimage2segimage`` on ``PATH``) segments it by
its SeriesInstanceUID from an uncompressed NIfTI in its cache, and a label saved through the datastore lands in
Orthanc as a DICOM SEG on that series.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from label_fixtures import VOLUME_MODEL, Server, run_in_label_env, running_label_server
from pacs_fixtures import Orthanc
from pacs_studies import referenced_instances, seg_series, sop_uids, study_series
from pydicom.uid import generate_uid
from repo_paths import REPO

from common.io.dicom_series import read_dicom_series

# both modules need .venv-label, which one worker builds: they run on that worker, while the other goes on
pytestmark = pytest.mark.xdist_group("monailabel")


@pytest.fixture(scope="module")
def pacs_series(orthanc: Orthanc, tmp_path_factory) -> tuple[str, str, Path, list[Path]]:
    """(StudyInstanceUID, SeriesInstanceUID, folder, files) of a CT series uploaded to Orthanc."""
    folder = tmp_path_factory.mktemp("pacs_series") / "series"
    study_uid = generate_uid()
    _, files = study_series(folder, study_uid)
    orthanc.upload(files)
    return study_uid, pydicom.dcmread(files[0]).SeriesInstanceUID, folder, files


#: four threads of one process ask the app's DICOMweb datastore for one series at once (run by .venv-label)
CONCURRENT_FETCH = """
import json, logging, sys, threading
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
app, root, series_uid, cache = sys.argv[1:5]
sys.path.insert(0, app)
from dicomweb_client.api import DICOMwebClient
from lib.datastore import StreamingDICOMWebDatastore

store = StreamingDICOMWebDatastore(DICOMwebClient(root), search_filter={"Modality": "CT"}, cache_path=cache)
found = {}
def fetch(k):
    found[k] = store.get_image_uri(series_uid)
threads = [threading.Thread(target=fetch, args=(k,)) for k in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def pacs_server(label_env, orthanc: Orthanc, bundles, tmp_path_factory):
    """``make label``'s command line with ``--studies`` Orthanc's DICOMweb root; stopped at teardown."""
    work = tmp_path_factory.mktemp("label_server")
    environment = {
        **os.environ,
        "PATH": f"{label_env / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "cache"),
    }
    conf = {"bundles": str(bundles), "models": VOLUME_MODEL}
    with running_label_server(label_env, work, orthanc.dicomweb, conf, environment) as running:
        yield running


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    for name, (filename, content) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.slow
def test_monailabel_segments_a_pacs_series_and_saves_the_label_as_a_seg(
    pacs_server: Server, orthanc, pacs_series, tmp_path
):
    study_uid, series_uid, folder, files = pacs_series
    series = read_dicom_series(folder)

    status, content = pacs_server.infer(VOLUME_MODEL, series_uid)
    assert status == 200, f"{content[:2000]!r}\n{pacs_server.log_tail()}"
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(content))
    assert mask.shape == series.array.shape  # (columns, rows, slices) of the series
    np.testing.assert_allclose(mask.affine, series.affine, atol=1e-3)
    # the series was fetched and converted by the app's datastore: an uncompressed NIfTI, read slab by slab
    cache = pacs_server.log.parent / "cache"  # MONAI_LABEL_DICOMWEB_CACHE_PATH of the server
    (converted,) = cache.rglob(f"{series_uid}.nii*")
    assert converted.name == f"{series_uid}.nii"
    np.testing.assert_array_equal(np.asarray(nib.load(converted).dataobj), series.array)
    assert not list(cache.rglob("*.partial"))

    labels = np.zeros(mask.shape, dtype=np.uint8)
    labels[20:90, 30:100, 1:3] = 1
    label_file = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(labels, mask.affine), label_file)
    body, content_type = multipart(
        {"params": json.dumps({"label_info": [{"name": "spleen"}]})},
        {"label": ("label.nii.gz", label_file.read_bytes())},
    )
    status, content = pacs_server.call("PUT", f"/datastore/label?image={series_uid}&tag=final", body, content_type)
    assert status == 200, f"{content[:2000]!r}\n{pacs_server.log_tail()}"

    (seg,) = seg_series(DICOMwebClient(orthanc.dicomweb), study_uid)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert referenced_instances(seg) <= sop_uids(files)
    assert int(np.count_nonzero(seg.pixel_array)) == int(labels.sum())


@pytest.mark.slow
def test_concurrent_requests_fetch_and_convert_a_series_once(label_env, orthanc, pacs_series, tmp_path):
    _, series_uid, folder, files = pacs_series
    found, log = run_in_label_env(label_env, CONCURRENT_FETCH, REPO, orthanc.dicomweb, series_uid, tmp_path / "cache")
    assert sorted(found) == ["0", "1", "2", "3"], log[-3000:]  # every thread got an answer
    assert len(set(found.values())) == 1 and found["0"].endswith(f"{series_uid}.nii"), found
    np.testing.assert_array_equal(np.asarray(nib.load(found["0"]).dataobj), read_dicom_series(folder).array)
    assert log.count(f"{series_uid}: {len(files)} instances fetched") == 1, log[-3000:]
    assert log.count("a slab at a time") == 1, log[-3000:]


@pytest.mark.slow
def test_series_the_server_cannot_use_are_refused_with_the_reason(pacs_server: Server, orthanc, tmp_path):
    from miniature_layouts import write_dicom_series

    values = np.full((16, 16, 6), 40.0)
    files = write_dicom_series(tmp_path / "gap", values, np.diag([1.0, 1.0, 2.5, 1.0]), modality="CT", skip_slices=(3,))
    orthanc.upload(files)
    gappy = str(pydicom.dcmread(files[0]).SeriesInstanceUID)

    status, content = pacs_server.infer(VOLUME_MODEL, gappy)  # a slice missing: not one regular volume
    assert status == 422, f"{status} {content[:2000]!r}"
    assert f"series {gappy}" in content.decode() and "about 1 missing slice" in content.decode()
    status, content = pacs_server.infer(VOLUME_MODEL, generate_uid())  # not on the PACS
    assert status == 404 and "not found on" in content.decode(), f"{status} {content[:2000]!r}"
    status, content = pacs_server.infer(VOLUME_MODEL, "..%2F..%2Fetc")  # never a path in the cache
    assert status == 404 and "expected a SeriesInstanceUID" in content.decode(), f"{status} {content[:2000]!r}"
