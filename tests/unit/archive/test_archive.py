"""``segment-archive`` on a tiny nested archive, with real Ray on 127.0.0.1 (no mocks).

The bundle is a copy of the ACDC bundle whose ``network_def`` is tests/archive_network.py's
``SignalledThreshold``: label 1 where the min-max scaled image exceeds 0.5, and faults set by the input data
(a volume whose slices have one of its signal values in every corner makes the worker exit once, exit always,
hang, or hold the case while the test SIGKILLs it). tests/ is put on the Ray workers' PYTHONPATH by this test
(the environment Ray is started with), so the workers import the network as any bundle's ``_target_``. One Ray
session (2 CPUs) is shared by the module's Ray runs; the engine uses a Ray already started in its process.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from archive_fixtures import AFFINE, manifest_rows, masks, signalled_bundle, write_volume
from archive_network import signalled_volume
from dicomweb_client.api import DICOMwebClient
from miniature_layouts import write_dicom_series
from pacs_studies import foreground_bundle, seg_series, study_series
from pydicom.uid import generate_uid
from repo_paths import TESTS

from common.__main__ import main
from common.archive.manifest import LOCK_FILE, MANIFEST_FILE, Manifest, RunLock


def good_archive(root: Path) -> Path:
    """Three NIfTI cases in nested folders and a DICOM series, beside a text file that is no case."""
    write_volume(root / "site_a" / "p1.nii.gz", None, 1)
    write_volume(root / "site_a" / "p2.nii.gz", None, 2)
    write_volume(root / "site_b" / "deep" / "p3.nii.gz", None, 3)
    write_dicom_series(root / "site_b" / "ct" / "series", np.round(signalled_volume(None, 4)), AFFINE)
    (root / "site_b" / "notes.txt").write_text("not a case")
    return root


def run(*args: str | Path) -> int:
    return main(["segment-archive", *(str(a) for a in args)])


def output_files(output: Path) -> dict[str, int]:
    """Each case output (masks and previews) and its mtime in ns."""
    return {
        str(p.relative_to(output)): p.stat().st_mtime_ns
        for p in output.rglob("*")
        if "_seg" in p.name or "_overlay" in p.name
    }


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("network_state")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, state_dir) -> Path:
    return signalled_bundle(tmp_path_factory.mktemp("bundles"), state_dir)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return good_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def segment_outputs(tmp_path_factory, bundle, archive) -> dict[str, np.ndarray]:
    """``segment``'s masks for the archive's cases, by the paths segment-archive gives them."""
    out = tmp_path_factory.mktemp("segment_out")
    expected = {}
    for folder in ("site_a", "site_b/deep", "site_b/ct/series"):
        assert (
            main(["segment", "--bundle", str(bundle), "--input", str(archive / folder), "--output", str(out / folder)])
            == 0
        )
    for path, mask in masks(out).items():
        expected[path.replace("site_b/ct/series/series_", "site_b/ct/series_")] = mask
    assert len(expected) == 4
    return expected


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (127.0.0.1 only, 2 CPUs) for the module, its workers able to import tests/archive_network.py.

    Ray reads its loopback switch when first imported, so this module imports Ray only here, after setting it
    (as the command does before its own import)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), before) if p)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    from common.archive.ray_engine import start_local_ray

    start_local_ray(num_cpus=2, num_gpus=0)
    yield
    ray.shutdown()
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


# ----------------------------------------------------------------------------- local engine: outputs and resume


def test_local_engine_writes_segments_outputs_and_resumes_only_what_is_missing(
    tmp_path, bundle, archive, segment_outputs, capsys
):
    out = tmp_path / "out"

    assert run("--bundle", bundle, "--input", archive, "--output", out, "--engine", "local") == 0

    assert masks(out).keys() == segment_outputs.keys()
    for path, mask in masks(out).items():
        np.testing.assert_array_equal(mask, segment_outputs[path])
        assert len(np.unique(mask)) == 2
    rows = manifest_rows(out)
    assert sorted(row["case"] for row in rows) == [
        "site_a/p1.nii.gz",
        "site_a/p2.nii.gz",
        "site_b/ct/series",
        "site_b/deep/p3.nii.gz",
    ]
    assert all(row["status"] == "ok" and row["attempts"] == 1 and row["device"] == "cpu" for row in rows)
    with open(out / "report.csv") as handle:
        assert csv.DictReader(handle).fieldnames == ["case", "source", "status", "outputs", "error", "warnings"]
    with open(out / "volumes.csv") as handle:
        volumes = list(csv.DictReader(handle))
    assert {row["case"] for row in volumes} == {row["case"] for row in rows}
    assert set(volumes[0]) == {"case", "label", "name", "voxels", "volume_ml"}
    capsys.readouterr()

    before = output_files(out)
    assert run("--bundle", bundle, "--input", archive, "--output", out, "--engine", "local") == 0
    assert output_files(out) == before  # nothing segmented again: same files, same mtimes
    assert len(manifest_rows(out)) == 4
    assert "4 of 4 case(s) done already" in capsys.readouterr().err

    (out / "site_a" / "p2_overlay.png").unlink()
    assert run("--bundle", bundle, "--input", archive, "--output", out, "--engine", "local") == 0
    assert [row["case"] for row in manifest_rows(out)[4:]] == ["site_a/p2.nii.gz"]
    after = output_files(out)
    assert {k for k in after if after[k] != before.get(k)} == {"site_a/p2_seg.nii.gz", "site_a/p2_overlay.png"}


def test_two_shards_cover_every_case_once(tmp_path, bundle, archive):
    out = tmp_path / "out"
    for shard in ("1/2", "2/2"):
        assert run("--bundle", bundle, "--input", archive, "--output", out, "--engine", "local", "--shard", shard) == 0
    first, second = ([row["case"] for row in manifest_rows(out, f"manifest-{k}-of-2.jsonl")] for k in (1, 2))
    assert not set(first) & set(second)
    assert sorted(first + second) == [
        "site_a/p1.nii.gz",
        "site_a/p2.nii.gz",
        "site_b/ct/series",
        "site_b/deep/p3.nii.gz",
    ]
    assert (out / "report-1-of-2.csv").is_file() and (out / "report-2-of-2.csv").is_file()


# ----------------------------------------------------------------------------- refusals: one line, exit 2, nothing written


def refused(capsys, *args) -> str:
    assert run(*args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_unusable_input_output_or_cluster_is_refused_with_nothing_written(tmp_path, bundle, archive, state_dir, capsys):
    out = tmp_path / "out"
    common = ("--bundle", bundle, "--output", out)
    assert "no such file or folder" in refused(capsys, *common, "--input", tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no case here")
    assert "no cases found" in refused(capsys, *common, "--input", tmp_path / "empty")
    line = refused(capsys, *common, "--input", archive, "--address", "127.0.0.1:1")
    assert "--address 127.0.0.1:1" in line and "found nothing answering there" in line
    assert not out.exists()

    out.mkdir()
    lock = RunLock(out / LOCK_FILE)
    lock.acquire()
    try:
        line = refused(capsys, *common, "--input", archive, "--engine", "local")
    finally:
        lock.release()
    assert "another segment-archive run is writing this folder" in line and f"pid {os.getpid()}" in line
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]

    assert run(*common, "--input", archive / "site_a", "--engine", "local") == 0
    capsys.readouterr()
    other = signalled_bundle(tmp_path / "other", state_dir, scale=2.0)  # other weights: another fingerprint
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    line = refused(capsys, "--bundle", other, "--output", out, "--input", archive / "site_a", "--engine", "local")
    assert "made by bundle" in line and "--rerun all" in line
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


# ----------------------------------------------------------------------------- Ray: faults, equality with segment


LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1 in /proc/net/tcp and tcp6


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (from /proc: parent ids)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def listening_addresses(pids: set[int]) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} write them) of the TCP sockets ``pids`` listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for fields in (line.split() for line in Path(table).read_text().splitlines()[1:]):
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addresses.add(fields[1].rsplit(":", 1)[0])
    return addresses


def ray_processes(pids: set[int]) -> set[int]:
    """Those of ``pids`` that are Ray's (its binaries and scripts under .../ray/, workers named ``ray::...``), not
    another server a test of this process started (Orthanc listens on every interface for DICOM)."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"/ray/" in command or command.startswith(b"ray::"):
                found.add(pid)
    return found


def test_the_embedded_ray_listens_on_loopback_only(ray_session):
    addresses = listening_addresses(ray_processes(descendants(os.getpid())))
    assert addresses and addresses <= LOOPBACK_HEX, addresses


def test_a_worker_no_node_can_hold_is_refused_naming_the_shortfall(tmp_path, ray_session, bundle, archive, capsys):
    line = refused(capsys, "--bundle", bundle, "--input", archive, "--output", tmp_path / "out", "--cpus-per-worker", 4)
    assert "4 CPU, 0 GPU and 1.60 GiB memory per worker: no node of the Ray cluster can hold one worker" in line
    assert "the largest node has 2 CPU, 0 GPU" in line
    assert not (tmp_path / "out").exists()


def kill_first_announcer(state_dir: Path, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first worker that announces it holds a case (once)."""
    while not stop.is_set():
        found = sorted(state_dir.glob("announce-*"))
        if found:
            pid = int(found[0].read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_ray_run_survives_every_fault_and_equals_segment(
    tmp_path, ray_session, bundle, archive, state_dir, segment_outputs, capsys
):
    root = tmp_path / "archive"
    good_archive(root)
    (root / "site_b" / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    for name in ("exit_once", "exit_always", "hang", "announce"):
        write_volume(root / "faults" / f"{name}.nii.gz", name, 5)
    out = tmp_path / "out"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_announcer, args=(state_dir, killed, stop), daemon=True)
    killer.start()
    try:
        code = run(
            "--bundle",
            bundle,
            "--input",
            root,
            "--output",
            out,
            "--workers",
            "2",
            "--retries",
            "1",
            "--case-timeout",
            "8",
            "--memory-per-worker",
            "0.5",
        )
    finally:
        stop.set()
    printed = capsys.readouterr()

    assert code == 1
    last = {row["case"]: row for row in manifest_rows(out)}
    status = {case: (row["status"], row["attempts"]) for case, row in last.items()}
    assert status == {
        "faults/announce.nii.gz": ("ok", 2),  # its first worker was SIGKILLed
        "faults/exit_always.nii.gz": ("failed", 2),
        "faults/exit_once.nii.gz": ("ok", 2),
        "faults/hang.nii.gz": ("failed", 1),
        "site_a/p1.nii.gz": ("ok", 1),
        "site_a/p2.nii.gz": ("ok", 1),
        "site_b/broken.nii.gz": ("failed", 1),
        "site_b/ct/series": ("ok", 1),
        "site_b/deep/p3.nii.gz": ("ok", 1),
    }
    assert len(killed) == 1 and last["faults/announce.nii.gz"]["pid"] != killed[0]
    assert "worker died while segmenting this case" in last["faults/exit_always.nii.gz"]["error"]
    assert "after 2 attempt(s)" in last["faults/exit_always.nii.gz"]["error"]
    assert "no result within --case-timeout 8 s" in last["faults/hang.nii.gz"]["error"]
    assert "expected a NIfTI-1 or NIfTI-2 header" in last["site_b/broken.nii.gz"]["error"]
    assert len({row["pid"] for row in last.values() if row["status"] == "ok"}) >= 2
    assert not [p for p in out.rglob("*") if p.name.startswith(".staging-")]
    assert not list((out / "faults").glob("exit_always*")) and not list((out / "faults").glob("hang*"))
    ours = masks(out)
    for path, mask in segment_outputs.items():
        np.testing.assert_array_equal(ours[path], mask)
    assert "3 of 9 case(s) not segmented" in printed.out
    assert "[9/9]" in printed.err and "cases/h" in printed.err


# ----------------------------------------------------------------------------- a PACS as the archive


@pytest.mark.slow
def test_dicomweb_study_query_segments_each_series_and_stores_its_seg(tmp_path, orthanc, capsys):
    study_uid = generate_uid()
    for name in ("first", "second"):
        orthanc.upload(study_series(tmp_path / name, study_uid)[1])
    bundle = foreground_bundle(tmp_path)
    out = tmp_path / "out"
    query = ("--query", f"StudyInstanceUID={study_uid}", "--query", "ModalitiesInStudy=CT")

    code = run("--bundle", bundle, "--input", orthanc.dicomweb, *query, "--output", out, "--engine", "local",
               "--store-to", orthanc.dicomweb)  # fmt: skip

    assert code == 0, capsys.readouterr().err
    rows = manifest_rows(out)
    series = sorted(row["case"].split("/")[1] for row in rows)
    assert sorted(row["case"] for row in rows) == [f"{study_uid}/{uid}" for uid in series]
    assert all(row["status"] == "ok" and f"DICOM SEG stored to {orthanc.dicomweb}" in row["warnings"] for row in rows)
    segs = seg_series(DICOMwebClient(orthanc.dicomweb), study_uid)
    assert sorted(seg.ReferencedSeriesSequence[0].SeriesInstanceUID for seg in segs) == series
    assert main(["segment", "--bundle", str(bundle), "--input", f"{orthanc.dicomweb}/studies/{study_uid}",
                 "--output", str(tmp_path / "segment_out")]) == 0  # fmt: skip
    expected = masks(tmp_path / "segment_out")
    assert masks(out).keys() == expected.keys() == {f"{uid}_seg.nii.gz" for uid in series}
    for path, mask in masks(out).items():
        np.testing.assert_array_equal(mask, expected[path])

    capsys.readouterr()
    assert run("--bundle", bundle, "--input", orthanc.dicomweb, *query, "--output", out, "--engine", "local") == 0
    assert len(manifest_rows(out)) == 2 and "2 of 2 case(s) done already" in capsys.readouterr().err


def test_a_row_appended_after_a_torn_line_is_kept(tmp_path):
    """A driver killed mid-write leaves a line without its end; the next run's rows must not join it."""
    path = tmp_path / MANIFEST_FILE
    path.write_text(json.dumps({"case": "a", "status": "ok"}) + "\n" + '{"case": "b", "sta')
    manifest = Manifest(path)
    manifest.append({"case": "b", "status": "ok"})
    manifest.append({"case": "c", "status": "failed"})
    manifest.close()
    assert {case: row["status"] for case, row in Manifest(path).last_rows().items()} == {
        "a": "ok",
        "b": "ok",
        "c": "failed",
    }
