"""``python -m common release``: pack a trained bundle into a checksummed archive; download and verify one.

    python -m common release pack --bundle BUNDLE_DIR --weights model.pt [--url-base URL] [--output dist]
    python -m common release verify PATH            # an archive (with SHA256SUMS beside it) or a bundle folder
    python -m common release download --url URL --sha256 HEX [--output DIR]

``pack`` checks that the weights load (``weights_only=True``) into the bundle's ``network_def`` and that its
``inference.json`` builds, then writes to the output folder, each file atomically:

- ``<bundle>_v<version>.zip``: the bundle folder (configs, docs, licence) with the weights as ``models/model.pt``,
  the code its configs import (the ``common`` package, as ``scripts/common``; the configs put ``scripts/`` first on
  the import path when it holds ``common``, so the archive runs where only the metadata's
  ``required_packages_version`` are installed) and a ``large_files.yml`` that holds their SHA-256 and, with
  ``--url-base``, the address of
- ``<bundle>_v<version>_model.pt``: the weights alone, for ``python -m monai.bundle download_large_files``;
- ``SHA256SUMS``: the checksums of both, in ``sha256sum`` format (``sha256sum -c SHA256SUMS`` checks them).

``download`` fetches an archive, refuses it unless its SHA-256 is the one given, unpacks it (refusing members that
would land outside the output folder) and checks the weights against the archive's ``large_files.yml``. Nothing
downloaded is executed or unpickled beyond tensors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

import yaml

from ..io.atomic import atomic_path
from .cards import large_files

SUMS_FILE = "SHA256SUMS"
WEIGHTS = "models/model.pt"
PACKED = ("configs", "docs", "LICENSE")
#: the package the configs import, carried into the archive as ``scripts/common``
CODE = Path(__file__).resolve().parents[1]
CODE_SUFFIXES = (".py", ".json", ".typed")


class ReleaseError(Exception):
    """A bundle, archive or download that cannot be released or trusted; the message names the file."""


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bundle_identity(bundle: Path) -> tuple[str, str]:
    """(name, version) of a bundle folder: its folder name and ``configs/metadata.json``'s version."""
    meta_file = bundle / "configs" / "metadata.json"
    try:
        version = json.loads(meta_file.read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"{meta_file}: expected a bundle's metadata.json with a version ({exc})") from exc
    return bundle.resolve().name, str(version)


def pack(bundle: Path, weights: Path, output: Path, url_base: str = "") -> list[Path]:
    """Write the archive, the weights file and ``SHA256SUMS`` for ``bundle`` with ``weights``; returns their paths."""
    from ..segment.bundle_metadata import BundleError
    from ..segment.segmenter import SegmentOptions, load_bundle

    try:
        load_bundle(bundle, SegmentOptions(weights=weights, device="cpu"))
    except BundleError as exc:
        raise ReleaseError(str(exc)) from exc
    name, version = _bundle_identity(bundle)
    stem = f"{name}_v{version}"
    archive, weights_copy = output / f"{stem}.zip", output / f"{stem}_model.pt"
    weights_sha = sha256(weights)
    url = f"{url_base.rstrip('/')}/{weights_copy.name}" if url_base else ""
    with atomic_path(archive) as temporary, zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as zipped:
        for item in PACKED:
            source = bundle / item
            files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
            for path in files:
                zipped.write(path, f"{name}/{path.relative_to(bundle).as_posix()}")
        for path in sorted(
            p for p in CODE.rglob("*") if p.is_file() and p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts
        ):
            zipped.write(path, f"{name}/scripts/common/{path.relative_to(CODE).as_posix()}")
        zipped.writestr(f"{name}/large_files.yml", large_files(url, weights_sha))
        zipped.write(weights, f"{name}/{WEIGHTS}")
    with atomic_path(weights_copy) as temporary:
        shutil.copyfile(weights, temporary)
    sums = f"{sha256(archive)}  {archive.name}\n{weights_sha}  {weights_copy.name}\n"
    with atomic_path(output / SUMS_FILE) as temporary:
        temporary.write_text(sums)
    return [archive, weights_copy, output / SUMS_FILE]


def verify_bundle(bundle: Path) -> None:
    """Check ``models/model.pt`` against the SHA-256 in the bundle's ``large_files.yml``."""
    listing = bundle / "large_files.yml"
    try:
        entries = {e["path"]: e for e in yaml.safe_load(listing.read_text())["large_files"]}
        expected = entries[WEIGHTS]["hash_val"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ReleaseError(f"{listing}: expected large_files with an entry for {WEIGHTS} ({exc})") from exc
    if not expected:
        raise ReleaseError(f"{listing}: no hash_val for {WEIGHTS}; this bundle is not a release")
    weights = bundle / WEIGHTS
    if not weights.is_file():
        raise ReleaseError(f"{weights}: not found; fetch it with python -m monai.bundle download_large_files")
    found = sha256(weights)
    if found != expected:
        raise ReleaseError(f"{weights}: SHA-256 {found}, but {listing} expects {expected}")


def verify_archive(archive: Path, expected: str | None = None) -> None:
    """Check ``archive`` against ``expected`` or, if not given, the ``SHA256SUMS`` file beside it."""
    if expected is None:
        sums = archive.parent / SUMS_FILE
        if not sums.is_file():
            raise ReleaseError(f"{archive}: no {SUMS_FILE} beside it and no checksum given")
        listed = dict(reversed(line.split(maxsplit=1)) for line in sums.read_text().splitlines() if line.strip())
        if archive.name not in listed:
            raise ReleaseError(f"{sums}: lists no checksum for {archive.name}")
        expected = listed[archive.name]
    found = sha256(archive)
    if found != expected.lower():
        raise ReleaseError(f"{archive}: SHA-256 {found}, expected {expected}; the file is damaged or not this release")


def unpack(archive: Path, output: Path) -> Path:
    """Extract a release archive into ``output`` and return the bundle folder.

    Refuses members outside one top folder, and an existing bundle folder of that name; the folder appears only once
    it is complete and its weights match its ``large_files.yml``.
    """
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        unsafe = [n for n in names if PurePosixPath(n).is_absolute() or ".." in PurePosixPath(n).parts]
        roots = {PurePosixPath(n).parts[0] for n in names}
        if unsafe or len(roots) != 1:
            raise ReleaseError(f"{archive}: expected one bundle folder, found members {(unsafe or sorted(roots))[:5]}")
        target = output / roots.pop()
        if target.exists():
            raise ReleaseError(f"{target}: already exists; remove it or unpack elsewhere")
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=output, prefix=".unpack-") as staging:
            zipped.extractall(staging)
            staged = Path(staging) / target.name
            verify_bundle(staged)
            staged.rename(target)
    return target


def download(url: str, expected_sha256: str, output: Path, timeout: float = 60.0) -> Path:
    """Fetch the archive at ``url``, verify it, unpack it into ``output``; returns the bundle folder."""
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output, prefix=".download-") as scratch:
        archive = Path(scratch) / (PurePosixPath(urllib.parse.urlparse(url).path).name or "release.zip")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as handle:
                shutil.copyfileobj(response, handle, 1 << 20)
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors; ValueError: a malformed URL
            raise ReleaseError(f"{url}: download failed ({type(exc).__name__}: {exc})") from exc
        verify_archive(archive, expected_sha256)
        return unpack(archive, output)


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Pack a trained bundle into a checksummed release; download and verify one."
    actions = parser.add_subparsers(dest="action", required=True)
    packing = actions.add_parser("pack", help="archive a bundle with its weights and checksums")
    packing.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    packing.add_argument("--weights", type=Path, required=True, help="trained state dict (models/model.pt)")
    packing.add_argument("--output", type=Path, default=Path("dist"), help="folder for the release files (dist)")
    packing.add_argument("--url-base", default="", help="where the weights file will be published (for large_files)")
    checking = actions.add_parser("verify", help="check an archive's or a bundle folder's checksums")
    checking.add_argument("path", type=Path, help="release archive (.zip) or bundle folder")
    checking.add_argument("--sha256", help="expected archive checksum (default: SHA256SUMS beside it)")
    fetching = actions.add_parser("download", help="download, verify and unpack a release archive")
    fetching.add_argument("--url", required=True, help="address of the .zip")
    fetching.add_argument("--sha256", required=True, help="its published SHA-256")
    fetching.add_argument("--output", type=Path, default=Path("."), help="where to unpack the bundle (.)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "pack":
            for path in pack(args.bundle, args.weights, args.output, args.url_base):
                print(path)
        elif args.action == "verify":
            if args.path.is_dir():
                verify_bundle(args.path)
            else:
                verify_archive(args.path, args.sha256)
            print(f"{args.path}: checksums match")
        else:
            print(download(args.url, args.sha256, args.output))
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
