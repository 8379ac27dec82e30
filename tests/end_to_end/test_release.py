"""Release archives: pack with checksums, verify, download over HTTP on loopback, refuse what does not match."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from repo_paths import REPO

from common.__main__ import main
from common.bundle.cards import TORCHSCRIPT_COMMAND
from common.bundle.release import ReleaseError, download, pack, unpack, verify_archive, verify_bundle
from common.networks import create_network
from common.segment.segmenter import SegmentOptions, load_bundle

BUNDLES = REPO / "bundles"
NAME = "pvt_gdla_acdc_segmentation"


@pytest.fixture
def small_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the ACDC bundle with a PVT-v2-b0 encoder, and a state dict that fits it."""
    bundle = tmp_path / "src" / NAME
    shutil.copytree(BUNDLES / NAME, bundle)
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["network_def"]["encoder"] = "pvt_v2_b0"
    config_file.write_text(json.dumps(config, indent=4))
    torch.manual_seed(0)
    network = create_network("pvt_gdla", in_channels=1, num_classes=4, encoder="pvt_v2_b0", encoder_weights="random")
    weights = tmp_path / "trained.pt"
    torch.save(network.state_dict(), weights)
    return bundle, weights


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pack_writes_archive_weights_and_checksums(small_bundle, tmp_path):
    bundle, weights = small_bundle
    archive, weights_copy, sums = pack(bundle, weights, tmp_path / "dist", url_base="https://example.org/r1/")
    assert archive.name == f"{NAME}_v0.1.0.zip" and weights_copy.name == f"{NAME}_v0.1.0_model.pt"
    assert sums.read_text().splitlines() == [
        f"{digest(archive)}  {archive.name}",
        f"{digest(weights)}  {weights_copy.name}",
    ]
    with zipfile.ZipFile(archive) as zipped:
        names = set(zipped.namelist())
        listing = yaml.safe_load(zipped.read(f"{NAME}/large_files.yml"))["large_files"][0]
        assert zipped.read(f"{NAME}/models/model.pt") == weights.read_bytes()
    assert {
        f"{NAME}/configs/inference.json",
        f"{NAME}/configs/metadata.json",
        f"{NAME}/docs/README.md",
        f"{NAME}/LICENSE",
    } <= names
    assert listing == {
        "path": "models/model.pt",
        "url": f"https://example.org/r1/{weights_copy.name}",
        "hash_val": digest(weights),
        "hash_type": "sha256",
    }
    assert main(["release", "verify", str(archive)]) == 0


def test_damaged_archive_and_weights_are_refused(small_bundle, tmp_path, capsys):
    bundle, weights = small_bundle
    archive, _, _ = pack(bundle, weights, tmp_path / "dist")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    assert main(["release", "verify", str(archive)]) == 1
    assert f"{archive}: SHA-256" in capsys.readouterr().err
    with pytest.raises(ReleaseError, match="no SHA256SUMS beside it"):
        verify_archive(tmp_path / "elsewhere.zip")
    released = unpack(pack(bundle, weights, tmp_path / "dist2")[0], tmp_path / "unpacked")
    (released / "models" / "model.pt").write_bytes(b"not the weights")
    with pytest.raises(ReleaseError, match=r"model\.pt: SHA-256 .* expects"):
        verify_bundle(released)


def test_weights_that_do_not_fit_are_not_packed(small_bundle, tmp_path):
    bundle, _ = small_bundle
    wrong = tmp_path / "wrong.pt"
    torch.save(
        create_network(
            "pvt_gdla", in_channels=1, num_classes=9, encoder="pvt_v2_b0", encoder_weights="random"
        ).state_dict(),
        wrong,
    )
    with pytest.raises(ReleaseError, match=r"wrong\.pt: these weights do not fit the bundle's network_def"):
        pack(bundle, wrong, tmp_path / "dist")
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_unsafe_archives_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("bundle/configs/inference.json", "{}")
        zipped.writestr("../outside.txt", "x")
    with pytest.raises(ReleaseError, match="expected one bundle folder"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "out" / "bundle").exists()


@pytest.fixture
def http_server(tmp_path: Path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / 'site'``; yields its base URL."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_verifies_then_unpacks_a_working_bundle(small_bundle, tmp_path, http_server):
    bundle, weights = small_bundle
    site, base = http_server
    archive, _, _ = pack(bundle, weights, site)
    url = f"{base}/{archive.name}"
    with pytest.raises(ReleaseError, match="the file is damaged or not this release"):
        download(url, "0" * 64, tmp_path / "fetched")
    assert [p.name for p in (tmp_path / "fetched").iterdir()] == []  # nothing left behind
    assert (
        main(["release", "download", "--url", url, "--sha256", digest(archive), "--output", str(tmp_path / "fetched")])
        == 0
    )
    fetched = tmp_path / "fetched" / NAME
    verify_bundle(fetched)
    segmenter = load_bundle(fetched, SegmentOptions(device="cpu"))  # models/model.pt loads into the bundle's network
    assert segmenter is not None
    with pytest.raises(ReleaseError, match="already exists"):
        download(url, digest(archive), tmp_path / "fetched")
    with pytest.raises(ReleaseError, match="download failed"):
        download(f"{base}/missing.zip", digest(archive), tmp_path / "other")


def test_archive_carries_the_code_its_configs_import(small_bundle, tmp_path):
    """The archive holds ``scripts/common`` and its metadata asks only for packages a package index serves."""
    bundle, weights = small_bundle
    archive = pack(bundle, weights, tmp_path / "dist")[0]
    with zipfile.ZipFile(archive) as zipped:
        names = set(zipped.namelist())
        metadata = json.loads(zipped.read(f"{NAME}/configs/metadata.json"))
    assert {
        f"{NAME}/scripts/common/__init__.py",
        f"{NAME}/scripts/common/networks/registry.py",
        f"{NAME}/scripts/common/transforms/__init__.py",
        f"{NAME}/scripts/common/data/inputs.py",
    } <= names
    assert not any("__pycache__" in n for n in names)
    assert "gdla-bundles" not in metadata["required_packages_version"]


@pytest.mark.slow
def test_released_bundle_runs_in_a_fresh_environment(small_bundle, tmp_path, http_server):
    """A user's path: a new virtual environment with only the metadata's packages, ``monai.bundle download`` of the
    archive over HTTP, inference from an empty folder, TorchScript export; nothing from this repository."""
    import subprocess
    import sys
    import time

    import nibabel as nib
    import numpy as np

    bundle, weights = small_bundle
    site, base = http_server
    archive = pack(bundle, weights, site, url_base=base)[0]
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    packages = [
        f"torch=={metadata['pytorch_version']}",
        f"numpy=={metadata['numpy_version']}",
        f"monai=={metadata['monai_version']}",
        *(f"{name}=={version}" for name, version in metadata["required_packages_version"].items()),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    venv = tmp_path / "venv"
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-compile", *packages],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    print(f"fresh environment with {len(packages)} packages: {time.monotonic() - start:.0f} s")

    work = tmp_path / "work"
    work.mkdir()

    def run(*args: str, cwd: Path = work) -> subprocess.CompletedProcess:
        result = subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    assert subprocess.run([python, "-c", "import common"], cwd=work, env=env).returncode != 0
    run("-m", "monai.bundle", "download", "--name", NAME, "--url", f"{base}/{archive.name}", "--bundle_dir", ".")
    downloaded = work / NAME
    (work / "images").mkdir()
    affine = np.diag([1.2, 1.2, 8.0, 1.0])
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).normal(100, 30, (40, 36, 3)).astype(np.float32), affine),
        work / "images" / "case.nii.gz",
    )
    run("-m", "monai.bundle", "download_large_files", "--bundle_path", NAME)
    run(
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"{NAME}/configs/inference.json",
        "--bundle_root",
        NAME,
        "--dataset_dir",
        "images",
        "--output_dir",
        "masks",
        "--num_workers",
        "0",
    )
    mask = nib.load(work / "masks" / "case_seg.nii.gz")
    assert mask.shape[:3] == (40, 36, 3)
    np.testing.assert_allclose(mask.affine, affine, atol=1e-4)
    run(
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        "model.ts",
        "--ckpt_file",
        f"{NAME}/models/model.pt",
        "--meta_file",
        f"{NAME}/configs/metadata.json",
        "--config_file",
        f"{NAME}/configs/inference.json",
        "--bundle_root",
        NAME,
        "--use_trace",
        "True",
    )
    assert (work / "model.ts").stat().st_size > 1_000_000
    run(*TORCHSCRIPT_COMMAND.split()[1:], cwd=downloaded)  # the model zoo's command with its defaults, in the bundle
    scripted, traced = downloaded / "models" / "model.ts", work / "model.ts"
    run(
        "-c",
        f"import torch; x = torch.rand(2, 1, 224, 224); a, b = torch.jit.load('{scripted}'), "
        f"torch.jit.load('{traced}'); torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-5)",
    )
    assert downloaded.is_dir()
