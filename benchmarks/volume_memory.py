"""Peak memory and seconds of ``python -m common segment`` on large CTs, and the share of the matmul floor.

For each size in ``--slices`` the script writes a 512 x 512 x N int16 CT phantom (the anatomy of
``volume_inference.phantom`` in Hounsfield units: body and seven blobs) in each ``--format`` (``nii``, ``mha`` and
``nrrd``: uncompressed, read slab by slab; ``nii.gz``: read slab by slab from the gzip stream; ``dcm``: a DICOM
series folder, one CT file per slice, read a batch of files at a time; the format is the table's last column), and
runs ``segment`` on it with a PVT-GDLA Synapse bundle (random weights: the masks do not matter here) once per
``--precisions`` entry, each in a fresh process started through a small wrapper that reports the process's peak
resident set size (``getrusage``'s ``ru_maxrss`` of its child: what ``/usr/bin/time -v`` calls maximum resident
set size). ``--paths`` chooses what runs: ``streamed``
(``segment``), ``bundle`` (the bundle's ``inference.json`` through ``python -m monai.bundle run``, which streams
too), ``whole`` (the whole-volume path of earlier releases, ``segment_volume(..., streaming=False)`` plus the
same writers, for comparison), ``label`` (a MONAI Label server of ``make label-env``'s environment, started
for the run with the bundle and the CT as its datastore, answering one ``/infer`` request: the peak is the
server process's, start-up included; the bundle's own precision and batch size; a ``dcm`` series is uploaded to an
Orthanc started for the benchmark and served over DICOMweb, as from a PACS, the server's download and conversion
included) and ``pacs`` (``segment`` with ``--input`` the series' DICOMweb URL on that Orthanc: the download is
measured too; ``--format dcm`` only). ``--python`` runs the measured commands with another interpreter, e.g. that
of a virtual environment with only the project's runtime dependencies (``pip install -c constraints.txt .``): the
development environment imports more (MONAI imports scikit-learn and pandas when they are installed).

'growth B/voxel' is (peak - the same command's peak on a 16-slice volume) / voxels: what the volume adds beyond
a constant (the 16-slice run has four batches, so both lanes are busy as in a large volume). '% floor' is the
floor time (true MACs of the network at 224 x 224 per slice, times 2 FLOPs, divided by the matmul rate measured
here for the arithmetic the run uses) over the command's wall time, which includes reading, writing and the
start-up of the process (imports alone take seconds).

Usage: ``python benchmarks/volume_memory.py --slices 100 600 1500 --precisions float32 auto --paths streamed bundle whole
--format nii nii.gz``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import SimpleITK as sitk  # noqa: E402 (after the sys.path entry)
from miniature_layouts import write_dicom_series  # noqa: E402 (after the sys.path entry)
from pacs_fixtures import Orthanc, free_port, start_orthanc, stop_orthanc  # noqa: E402 (after the sys.path entry)
from volume_inference import phantom  # noqa: E402 (after the sys.path entry)

from common.inference.precision import autocast_dtype  # noqa: E402 (after the sys.path entry)
from common.networks import create_network  # noqa: E402 (after the sys.path entry)
from common.networks.complexity import true_flops  # noqa: E402 (after the sys.path entry)
from common.transforms.pipelines import CT_WINDOW_HU  # noqa: E402 (after the sys.path entry)

BUNDLE = "pvt_gdla_synapse_segmentation"
PATHS = ("streamed", "bundle", "whole", "label", "pacs")
BASE_SLICES = 16  # four batches: both lanes busy, as in a large volume
HU_SCALE, HU_OFFSET = CT_WINDOW_HU[1] - CT_WINDOW_HU[0], CT_WINDOW_HU[0]  # phantom [0, 1] -> the CT window in HU

WHOLE_VOLUME = """
import sys
from pathlib import Path
from common.io.volumes import load_volume
from common.io.previews import write_volume_overlay
from common.io.writers import structure_volumes, write_nifti
from common.segment.segmenter import SegmentOptions, load_bundle
bundle, source, out, precision, batch_size = sys.argv[1:6]
segmenter = load_bundle(
    bundle, SegmentOptions(device="cpu", precision=precision, batch_size=int(batch_size) or None)
)
volume = load_volume(source)
labels = segmenter.segment_volume(volume, streaming=False)
write_nifti(labels, volume.affine, Path(out) / "case_seg.nii.gz")
write_volume_overlay(volume.array, labels, volume.affine, Path(out) / "case_overlay.png")
structure_volumes(labels, volume.affine, segmenter.label_names)
"""

LABEL_SERVER = """
import os, shutil, signal, socket, subprocess, sys, time, urllib.error, urllib.request
from pathlib import Path
label_python, app, bundle, source, image, work = sys.argv[1:]
bundle, work = Path(bundle), Path(work)
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
if source.startswith("http"):  # a DICOMweb root: MONAI Label's DICOMweb datastore, its cache in work
    studies = source
else:
    studies = str(work / "studies")
    os.mkdir(studies)
    os.link(source, Path(studies) / Path(source).name)
shutil.copytree(app, work / "app")
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
command = [label_python, "-m", "common.apps.label_server", "start_server", "--app", str(work / "app"), "--studies",
           studies, "--conf", "bundles", str(bundle.parent), "--conf", "models", bundle.name,
           "--host", "127.0.0.1", "--port", str(port)]
env = {**os.environ, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false", "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(work / "cache"),
       "PATH": f"{Path(label_python).parent}{os.pathsep}{os.environ['PATH']}"}
log = open(work / "server.log", "wb")
server = subprocess.Popen(command, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
def call(path, data=None, timeout=30):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data else "GET")
    if data:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()
try:
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit("the MONAI Label server did not start: " + (work / "server.log").read_text(errors="replace")[-3000:])
        try:
            if call("/info/")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(2)
    status, content = call(f"/infer/{bundle.name}?image={image}&output=image", b"params=%7B%7D", timeout=3600)
    if status != 200 or not content:
        sys.exit(f"/infer answered {status}")
    if "segmented slab by slab" not in (work / "server.log").read_text(errors="replace"):
        sys.exit("the server did not stream the volume: " + (work / "server.log").read_text(errors="replace")[-3000:])
finally:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)
"""

MEASURED = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
print(json.dumps({"code": code, "seconds": time.perf_counter() - started,
                  "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def write_ct(path: Path, slices: int, size: int) -> Path:
    """An int16 CT phantom ``[size, size, slices]`` (RAS, 0.7 x 0.7 x 1 mm) in the format ``path`` names: NIfTI
    (``.nii``, ``.nii.gz``, written without holding the volume whole), raw MetaImage (``.mha``) or raw NRRD
    (``.nrrd``), or a DICOM series (a folder ending ``.dcm``: one CT file per slice)."""
    nifti = path if path.name.endswith((".nii", ".nii.gz")) else path.with_name(path.name.split(".")[0] + ".nii")
    block, _ = phantom(size, min(slices, 50), seed=0)
    raw = path.with_suffix(".raw")
    array = np.memmap(raw, dtype=np.int16, mode="w+", shape=(size, size, slices), order="F")
    for start in range(0, slices, block.shape[-1]):
        part = block[..., : min(block.shape[-1], slices - start)]
        array[..., start : start + part.shape[-1]] = np.round(part * HU_SCALE + HU_OFFSET).astype(np.int16)
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    nib.save(nib.Nifti1Image(array, affine), nifti)
    del array
    raw.unlink()
    if nifti == path:
        return path
    volume = nib.load(nifti)
    if path.suffix == ".dcm":
        write_dicom_series(path, np.asarray(volume.dataobj), volume.affine, modality="CT")
    else:  # ITK stores LPS: the RAS axes x and y point the other way
        image = sitk.GetImageFromArray(np.asarray(volume.dataobj).transpose(2, 1, 0))
        image.SetSpacing([0.7, 0.7, 1.0])
        image.SetDirection([-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0])
        sitk.WriteImage(image, str(path), useCompression=False)
    nifti.unlink()
    return path


def remove(path: Path) -> None:
    """Delete a volume file or DICOM series folder."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def make_bundle(folder: Path) -> Path:
    """A copy of the Synapse PVT-GDLA bundle with seeded random weights."""
    root = folder / BUNDLE
    shutil.copytree(ROOT / "bundles" / BUNDLE, root, ignore=shutil.ignore_patterns("*.pt"))
    torch.manual_seed(0)
    network = create_network("pvt_gdla", in_channels=1, num_classes=9, encoder_weights="random")
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


def run_measured(command: list[str]) -> dict:
    """Run ``command`` in a fresh process; its exit code, wall seconds and peak RSS (MiB)."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURED, *command], capture_output=True, text=True, cwd=ROOT, check=False
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report["code"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return {"seconds": report["seconds"], "peak_mib": report["peak_kib"] / 1024}


def uploaded_series(series: Path, pacs: Orthanc | None) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of the DICOM series folder ``series``, uploaded to ``pacs``."""
    if pacs is None:
        raise ValueError(f"{series}: this path reads DICOM series from a PACS; none was started")
    files = sorted(series.iterdir())
    pacs.upload(files)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    return str(header.StudyInstanceUID), str(header.SeriesInstanceUID)


def served_image(source: Path, pacs: Orthanc | None) -> tuple[str, str]:
    """(the MONAI Label server's ``--studies``, the image id to infer) for ``source``: a volume file is served from
    a studies folder under its name; a DICOM series folder is uploaded to ``pacs`` and served over DICOMweb by its
    SeriesInstanceUID, as MONAI Label serves a PACS."""
    if not source.is_dir():
        return str(source), source.name.split(".")[0]
    _, series_uid = uploaded_series(source, pacs)  # says so if no PACS was started
    return pacs.dicomweb, series_uid


def segment_command(
    path_kind: str,
    bundle: Path,
    source: Path,
    out: Path,
    precision: str,
    python: str,
    batch_size: int | None,
    pacs: Orthanc | None = None,
) -> list[str]:
    """The command line of ``path_kind`` (see :data:`PATHS`); ``batch_size`` ``None`` keeps the bundle's; ``pacs``
    serves DICOM series to the ``label`` and ``pacs`` paths."""
    if path_kind in ("streamed", "pacs"):
        batch = ["--batch-size", str(batch_size)] if batch_size else []
        where = str(source)
        if path_kind == "pacs":  # segment reads the series from the PACS by its DICOMweb URL
            study_uid, series_uid = uploaded_series(source, pacs)
            where = f"{pacs.dicomweb}/studies/{study_uid}/series/{series_uid}"
        return [
            python,
            "-m",
            "common",
            "segment",
            "--bundle",
            str(bundle),
            "--input",
            where,
            "--output",
            str(out),
            "--device",
            "cpu",
            "--precision",
            precision,
            *batch,
        ]
    if path_kind == "bundle":
        batch = ["--inferer#sw_batch_size", str(batch_size)] if batch_size else []
        return [
            python,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(bundle / "configs" / "inference.json"),
            "--bundle_root",
            str(bundle),
            "--datalist",
            f"['{source}']",
            "--output_dir",
            str(out),
            "--device",
            "$torch.device('cpu')",
            "--inferer#precision",
            precision,
            *batch,
        ]
    if path_kind == "label":
        app, label_python = ROOT / "monailabel_app", ROOT / ".venv-label" / "bin" / "python"
        studies, image = served_image(source, pacs)
        return [sys.executable, "-c", LABEL_SERVER, str(label_python), str(app), str(bundle), studies, image, str(out)]
    return [python, "-c", WHOLE_VOLUME, str(bundle), str(source), str(out), precision, str(batch_size or 0)]


def matmul_gflops(dtype: torch.dtype | None, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of a ``size`` x ``size`` matmul (float32, or under autocast to ``dtype``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        torch.matmul(a, b)
        for _ in range(repeats):
            started = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def cpu_description() -> str:
    """The CPU model and the flags that decide the fast paths (AVX2, AVX-512, AVX512-BF16, AMX)."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model.strip():
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return f"{model}; flags: {' '.join(f for f in wanted if f in flags) or 'none of AVX2/AVX-512/AMX'}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 600, 1500], help="volume sizes (slices)")
    parser.add_argument("--size", type=int, default=512, help="slice width and height (default 512)")
    parser.add_argument("--precisions", nargs="+", default=["float32", "auto"], choices=["float32", "auto"])
    parser.add_argument(
        "--format",
        nargs="+",
        default=["nii"],
        choices=["nii", "nii.gz", "mha", "nrrd", "dcm"],
        help="file formats of the CT, each measured in turn (mha and nrrd uncompressed; dcm: a DICOM series folder)",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        default=["streamed"],
        choices=PATHS,
        help="streamed: `segment`; bundle: the bundle's inference.json (`monai.bundle run`, streamed too); "
        "whole: the whole-volume path of earlier releases; label: a MONAI Label server (make label-env) "
        "answering one /infer request; pacs: `segment` reading the series (--format dcm) by its DICOMweb URL",
    )
    parser.add_argument("--threads", type=int, default=2, help="threads for the matmul rate (default 2)")
    parser.add_argument("--batch-size", type=int, help="slices per forward pass (default: the bundle's, 4)")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter of the measured commands (default: this one)"
    )
    args = parser.parse_args()
    if "pacs" in args.paths and args.format != ["dcm"]:
        parser.error("--paths pacs reads a DICOM series from a PACS: it needs --format dcm (alone)")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    network = create_network("pvt_gdla", in_channels=1, num_classes=9, encoder_weights="random")
    flops_per_slice = true_flops(network)
    rates = {"float32": matmul_gflops(None)}
    auto = autocast_dtype("auto", torch.device("cpu"))
    rates["auto"] = matmul_gflops(auto) if auto is not None else rates["float32"]
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_description()}; torch {torch.__version__}, "
        f"{args.threads} threads; matmul {rates['float32']:.0f} GFLOP/s float32, {rates['auto']:.0f} GFLOP/s "
        f"'auto' ({auto or 'float32'}); PVT-GDLA {flops_per_slice / 2e9:.2f} true GMACs per slice; "
        f"commands run by {args.python}; batch size {args.batch_size or 'as in the bundle'}"
    )
    kinds = args.paths
    with tempfile.TemporaryDirectory() as temporary, contextlib.ExitStack() as cleanup:
        folder = Path(temporary)
        bundle = make_bundle(folder)
        pacs = None
        if {"label", "pacs"} & set(kinds) and "dcm" in args.format:  # outside the measured processes
            pacs = start_orthanc(folder / "pacs", node_port=free_port())
            cleanup.callback(stop_orthanc, pacs)
        base = {}
        for suffix in args.format:
            source = write_ct(folder / f"base.{suffix}", BASE_SLICES, args.size)
            for kind in kinds:
                base[kind, suffix] = run_measured(
                    segment_command(kind, bundle, source, folder / "out", "float32", args.python, args.batch_size, pacs)
                )["peak_mib"]
            remove(source)
        print(
            f"{'path':<9} {'slices':>6} {'precision':>9} {'seconds':>8} {'slices/s':>8} {'% floor':>7} "
            f"{'peak MiB':>9} {'input MiB':>9} {'growth B/voxel':>14} format"
        )
        for slices in args.slices:
            voxels = args.size * args.size * slices
            for suffix in args.format:
                source = write_ct(folder / f"ct{slices}.{suffix}", slices, args.size)
                for precision in args.precisions:
                    for kind in kinds:
                        result = run_measured(
                            segment_command(
                                kind, bundle, source, folder / "out", precision, args.python, args.batch_size, pacs
                            )
                        )
                        floor = slices * flops_per_slice / (rates[precision] * 1e9)
                        growth = (result["peak_mib"] - base[kind, suffix]) * 2**20 / voxels
                        print(
                            f"{kind:<9} {slices:6d} {precision:>9} {result['seconds']:8.1f} "
                            f"{slices / result['seconds']:8.2f} {100 * floor / result['seconds']:6.0f}% "
                            f"{result['peak_mib']:9.0f} {voxels * 2 / 2**20:9.0f} {growth:14.2f} {suffix}",
                            flush=True,
                        )
                remove(source)
        print(
            f"{BASE_SLICES}-slice runs (the constant): "
            + ", ".join(f"{kind} {suffix} {peak:.0f} MiB" for (kind, suffix), peak in base.items())
        )


if __name__ == "__main__":
    main()
