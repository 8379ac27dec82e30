"""The PACS round trip against a real Orthanc (tests/pacs_fixtures.py): ``segment`` over DICOMweb and the DICOM node.

Series are pydicom's real CT slice as four-slice series (tests/segment_fixtures.py's ``ct_series``), uploaded through
Orthanc's REST API. Exact masks come from the intensity-threshold network; command-line runs use a bundle whose
heads are set to predict label 1 (spleen) everywhere, so each series gets a SEG whatever the random encoder does.
"""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from node_harness import TEST_RESERVE_GB, Results, csv_rows, wait_for_text
from pacs_fixtures import NODE_AET, NODE_MODALITY, ORTHANC_AET, Orthanc, free_port, start_orthanc, stop_orthanc
from pacs_studies import BUNDLE, SIZE, foreground_bundle, referenced_instances, seg_series, sop_uids, study_series
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, SegmentationStorage, Verification
from segment_fixtures import IntensityThreshold, copy_bundle

from common.__main__ import main
from common.io.dicom_series import read_dicom_series
from common.io.dicomweb import DicomWebError
from common.pacs.dicomweb_segment import retrieve_study, store_segs
from common.pacs.node import Destination, DicomNode, NodeSettings, serve
from common.segment.cases import segment_cases
from common.segment.segmenter import SegmentOptions

# ----------------------------------------------------------------------------- segment over DICOMweb


def test_dicomweb_series_round_trip_gives_an_exact_seg_in_the_study(tmp_path, orthanc: Orthanc):
    study_uid = generate_uid()
    volume, files = study_series(tmp_path / "series", study_uid)
    orthanc.upload(files)
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    bundle = copy_bundle(tmp_path, BUNDLE, spatial_size=SIZE)

    folder = retrieve_study(f"{orthanc.dicomweb}/studies/{study_uid}", tmp_path / "out", series=series_uid)
    results = segment_cases(
        bundle, folder, tmp_path / "out", SegmentOptions(network=IntensityThreshold(), device="cpu"), progress=False
    )
    rows = store_segs(results, orthanc.dicomweb, tmp_path / "out")

    assert folder == tmp_path / "out" / "retrieved" / study_uid / series_uid
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{uid}.dcm" for uid in sop_uids(files))
    assert [row["status"] for row in rows] == ["stored"]
    (seg,) = seg_series(DICOMwebClient(orthanc.dicomweb), study_uid)
    assert seg.StudyInstanceUID == study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert referenced_instances(seg) == sop_uids(files)
    source = read_dicom_series(tmp_path / "series")
    slice_of = {uid: k for k, uid in enumerate(source.sop_instance_uids)}
    frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        k = slice_of[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(frame, (volume[:, :, k] > 75).T)  # CT window [-125, 275] HU: 0.5 is 75 HU


@pytest.mark.slow
def test_segment_command_segments_each_image_series_of_a_study_and_stores_the_segs(tmp_path, orthanc, capsys):
    study_uid = generate_uid()
    uploaded = {}
    for name in ("first", "second"):
        _, files = study_series(tmp_path / name, study_uid)
        orthanc.upload(files)
        uploaded[pydicom.dcmread(files[0]).SeriesInstanceUID] = sop_uids(files)
    bundle = foreground_bundle(tmp_path)
    out = tmp_path / "out"

    code = main(
        [
            "segment",
            "--bundle",
            str(bundle),
            "--input",
            f"{orthanc.dicomweb}/studies/{study_uid}",
            "--output",
            str(out),
            "--store-to",
            orthanc.dicomweb,
            "--device",
            "cpu",
        ]
    )

    assert code == 0, capsys.readouterr()
    web = DICOMwebClient(orthanc.dicomweb)
    segs = seg_series(web, study_uid)
    assert {seg.ReferencedSeriesSequence[0].SeriesInstanceUID: referenced_instances(seg) for seg in segs} == uploaded
    with open(out / "stow.csv") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["stored", "stored"]
    # a second run leaves the SEGs just stored out (not image series) and segments the two CT series again
    assert (
        main(
            [
                "segment",
                "--bundle",
                str(bundle),
                "--input",
                f"{orthanc.dicomweb}/studies/{study_uid}",
                "--output",
                str(tmp_path / "again"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "again" / "retrieved" / study_uid).iterdir()) == sorted(uploaded)


def test_dicomweb_errors_name_the_url_and_status_and_keep_local_outputs(tmp_path, orthanc, capsys):
    bundle = copy_bundle(tmp_path, BUNDLE, spatial_size=SIZE)
    missing = f"{orthanc.dicomweb}/studies/{generate_uid()}/series/{generate_uid()}"
    assert main(["segment", "--bundle", str(bundle), "--input", missing, "--output", str(tmp_path / "a")]) == 2
    assert f"error: WADO-RS {missing}: HTTP 404 Not Found" in capsys.readouterr().err
    missing_study = f"{orthanc.dicomweb}/studies/{generate_uid()}"  # QIDO-RS answers an empty list
    assert main(["segment", "--bundle", str(bundle), "--input", missing_study, "--output", str(tmp_path / "a")]) == 2
    assert f"error: QIDO-RS {missing_study}: the study has no series" in capsys.readouterr().err

    down = f"http://127.0.0.1:{free_port()}/dicom-web/studies/{generate_uid()}"
    with pytest.raises(DicomWebError, match=re.escape(f"QIDO-RS {down}/series: ConnectionError")):
        retrieve_study(down, tmp_path / "b", attempts=1)  # the command tries 5 times over about 30 s

    # a local DICOM folder segmented, its SEG refused by the server: the SEG stays, the status is reported
    study_uid = generate_uid()
    volume, files = study_series(tmp_path / "series", study_uid)
    results = segment_cases(
        bundle,
        tmp_path / "series",
        tmp_path / "c",
        SegmentOptions(network=IntensityThreshold(), device="cpu"),
        progress=False,
    )
    rows = store_segs(results, f"{orthanc.url}/no-such-root", tmp_path / "c")
    assert [row["status"] for row in rows] == ["failed"]
    assert f"{orthanc.url}/no-such-root/studies/{study_uid}" in rows[0]["error"] and "404" in rows[0]["error"]
    assert (tmp_path / "c" / "series_seg.dcm").is_file()


def test_credentials_come_from_the_environment(tmp_path, monkeypatch):
    server = start_orthanc(
        tmp_path / "pacs", free_port(), {"AuthenticationEnabled": True, "RegisteredUsers": {"radiology": "s3cret"}}
    )
    try:
        study_uid = generate_uid()
        _, files = study_series(tmp_path / "series", study_uid)
        server.upload(files, auth=("radiology", "s3cret"))
        url = f"{server.dicomweb}/studies/{study_uid}"
        monkeypatch.delenv("GDLA_DICOMWEB_USER", raising=False)
        monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
        with pytest.raises(DicomWebError, match="401"):
            retrieve_study(url, tmp_path / "out")
        monkeypatch.setenv("GDLA_DICOMWEB_USER", "radiology")
        monkeypatch.setenv("GDLA_DICOMWEB_PASSWORD", "s3cret")
        folder = retrieve_study(url, tmp_path / "out")
        assert len(list(folder.iterdir())) == 1
        monkeypatch.delenv("GDLA_DICOMWEB_USER")
        (tmp_path / "netrc").write_text("machine 127.0.0.1 login radiology password s3cret\n")
        monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
        assert retrieve_study(url, tmp_path / "netrc-out").is_dir()
    finally:
        stop_orthanc(server)


# ----------------------------------------------------------------------------- the DICOM node


def start_node(tmp_path: Path, port: int, destination: Destination, **settings) -> tuple[DicomNode, Results]:
    bundle = copy_bundle(tmp_path, BUNDLE, spatial_size=SIZE)
    node_settings = NodeSettings(
        output=tmp_path / "node",
        port=port,
        ae_title=NODE_AET,
        host="127.0.0.1",
        destination=destination,
        quiet_seconds=1.0,
        reserve_gb=TEST_RESERVE_GB,
        **settings,
    )
    node = serve(bundle, node_settings, SegmentOptions(device="cpu", network=IntensityThreshold()))
    results = Results()
    node.on_result = results.add
    return node, results


def c_store(port: int, datasets: list[pydicom.Dataset], abort_after: int | None = None) -> list[int]:
    """Send ``datasets`` to the node in one association; the C-STORE statuses. ``abort_after``: abort then."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    statuses = []
    for number, dataset in enumerate(datasets):
        if number == abort_after:
            assoc.abort()
            return statuses
        statuses.append(assoc.send_c_store(dataset).Status)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    return statuses


def test_orthanc_sends_a_study_to_the_node_and_gets_the_seg_back(tmp_path, orthanc):
    node, results = start_node(tmp_path, orthanc.node_port, Destination(ORTHANC_AET, "127.0.0.1", orthanc.dicom_port))
    try:
        study_uid = generate_uid()
        volume, files = study_series(tmp_path / "series", study_uid)
        orthanc.upload(files)
        orthanc.request(
            "POST", f"/modalities/{NODE_MODALITY}/store", orthanc.study_id(study_uid).encode(), "text/plain"
        )
        (row,) = results.wait_for(1)
    finally:
        node.stop()
    assert row["status"] == "stored" and row["instances"] == 4 and row["calling_ae"].startswith(ORTHANC_AET)
    (seg,) = seg_series(DICOMwebClient(orthanc.dicomweb), study_uid)
    assert referenced_instances(seg) == sop_uids(files)
    assert np.count_nonzero(seg.pixel_array) == np.count_nonzero(volume > 75)
    with open(tmp_path / "node" / "series.csv") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["stored"]


def test_node_survives_bad_input_aborts_and_a_destination_that_is_down(tmp_path):
    destination = Destination("ARCHIVE", "127.0.0.1", free_port())  # nothing listens there yet
    port = free_port()
    node, results = start_node(tmp_path, port, destination, store_retries=2, retry_delay=0.1)
    received: list[pydicom.Dataset] = []
    archive = None
    try:
        _, files = study_series(tmp_path / "a", generate_uid())
        good = [pydicom.dcmread(f) for f in files]
        # an instance without a SeriesInstanceUID is refused; the association goes on
        broken = pydicom.dcmread(files[0])
        del broken.SeriesInstanceUID
        broken.SOPInstanceUID = generate_uid()
        assert c_store(port, [broken]) == [0xC210]
        # an association aborted half-way: what came is kept, the rest follows in a new association
        assert c_store(port, good, abort_after=2) == [0, 0]
        assert c_store(port, good[2:]) == [0, 0]
        # a series whose pixel data is cut short fails, and is kept for a retry
        _, cut_files = study_series(tmp_path / "cut", generate_uid())
        cut = [pydicom.dcmread(f) for f in cut_files]
        for dataset in cut:
            dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 3]
        assert c_store(port, cut) == [0] * 4
        rows = results.wait_for(2)
        by_series = {row["series_uid"]: row for row in rows}
        assert by_series[good[0].SeriesInstanceUID]["status"] == "unsent"  # destination down: kept on disk
        assert by_series[good[0].SeriesInstanceUID]["instances"] == 4
        assert by_series[cut[0].SeriesInstanceUID]["status"] == "failed"
        failed = [p for p in (tmp_path / "node" / "failed").iterdir()]
        assert len(failed) == 1 and len(list(failed[0].glob("*.dcm"))) == 4 and (failed[0] / "error.txt").is_file()
        assert len(list((tmp_path / "node" / "unsent").glob("*.dcm"))) == 1

        # the destination comes up: the next SEG goes, and the waiting one with it
        archive = storage_scp(destination, received)
        _, files_b = study_series(tmp_path / "b", generate_uid())
        assert c_store(port, [pydicom.dcmread(f) for f in files_b]) == [0] * 4
        rows = results.wait_for(3)
    finally:
        node.stop()
        if archive is not None:
            archive.shutdown()
    assert rows[-1]["status"] == "stored"
    assert sorted(ds.ReferencedSeriesSequence[0].SeriesInstanceUID for ds in received) == sorted(
        [good[0].SeriesInstanceUID, pydicom.dcmread(files_b[0]).SeriesInstanceUID]
    )
    assert not list((tmp_path / "node" / "unsent").iterdir())

    # --retry-failed: the kept series is tried again at start (and, still cut short, kept again)
    node = DicomNode(
        node.segmenter,
        NodeSettings(
            output=tmp_path / "node",
            port=free_port(),
            quiet_seconds=1.0,
            retry_failed=True,
            reserve_gb=TEST_RESERVE_GB,
        ),
    )
    retried = Results()
    node.on_result = retried.add
    node.start()
    try:
        (row,) = retried.wait_for(1)
    finally:
        node.stop()
    assert row["series_uid"] == cut[0].SeriesInstanceUID and row["status"] == "failed"
    assert [p.name for p in (tmp_path / "node" / "failed").iterdir()] == [p.name for p in failed]


def storage_scp(destination: Destination, received: list[pydicom.Dataset]):
    """A pynetdicom Storage SCP at ``destination`` that keeps what it receives."""

    def keep(event):
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title=destination.ae_title)
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(SegmentationStorage)
    return ae.start_server((destination.host, destination.port), block=False, evt_handlers=[(evt.EVT_C_STORE, keep)])


@pytest.mark.slow
def test_listen_command_finishes_its_series_on_sigterm_and_resumes_the_queue(tmp_path, orthanc):
    bundle = foreground_bundle(tmp_path)
    port, out = free_port(), tmp_path / "node"
    command = [
        sys.executable,
        "-m",
        "common",
        "listen",
        "--bundle",
        str(bundle),
        "--port",
        str(port),
        "--ae-title",
        NODE_AET,
        "--host",
        "127.0.0.1",
        "--store-to",
        f"{ORTHANC_AET}@127.0.0.1:{orthanc.dicom_port}",
        "--output",
        str(out),
        "--reserve-gb",
        str(TEST_RESERVE_GB),
        "--quiet-seconds",
        "1",
        "--device",
        "cpu",
    ]
    study_uid = generate_uid()
    sent = []
    for name in ("first", "second"):
        _, files = study_series(tmp_path / name, study_uid)
        sent += [pydicom.dcmread(f) for f in files]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        wait_for_text(out / "node.log", "listening as GDLA")
        assert c_store(port, sent) == [0] * 8
        wait_for_text(out / "node.log", "segmenting")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        finished = csv_rows(out / "series.csv")
        waiting = list((out / "queue").iterdir()) + list((out / "incoming").iterdir())  # left for the restart
        assert finished[0]["status"] == "stored" and len(finished) + len(waiting) == 2
        process = subprocess.Popen(command, stderr=subprocess.DEVNULL)  # a restart takes up what was queued
        deadline = time.monotonic() + 120
        while len(csv_rows(out / "series.csv")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert [row["status"] for row in csv_rows(out / "series.csv")] == ["stored", "stored"]
    assert len(seg_series(DICOMwebClient(orthanc.dicomweb), study_uid)) == 2
    log = (out / "node.log").read_text()
    assert "signal received" in log and "C-ECHO from TESTSCU" in log
