"""Staged outputs: a case's files are written into a hidden folder and moved into place only when it succeeds.

A case that fails part-way (its SEG cannot be made, the disk fills, a writer raises) then leaves nothing in the
output folder, not a mask without its report row, nor a half-written set of files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

STAGING_PREFIX = ".staging-"


@contextlib.contextmanager
def staged_folder(output_dir: Path, prefix: str = STAGING_PREFIX) -> Iterator[Path]:
    """Yield an empty hidden folder inside ``output_dir`` (same file system, so moves are renames); it is removed
    with whatever is left in it when the block ends, normally or by an exception. ``prefix`` (starting with
    :data:`STAGING_PREFIX`) may name the writer, so that a killed writer's folder can be told apart."""
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=prefix))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, output_dir: Path, outputs: Sequence[Path]) -> list[Path]:
    """Move every file written in ``staging`` into ``output_dir`` (replacing older files of the same name) and
    return ``outputs`` (paths inside ``staging``) as their new paths."""
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = output_dir / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    return [output_dir / Path(p).relative_to(staging) for p in outputs]
