"""Quiet output: the known third-party noise is silenced message by message; ours and everything else still show."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import torch
from bundle_harness import copy_bundle
from monai.bundle import ConfigParser

from common.bundle.specs import BUNDLES
from common.environment.quiet import THIRD_PARTY_LOG_RECORDS, THIRD_PARTY_WARNINGS, quiet_third_party

#: what `segment` itself writes to stderr: the case counter, the slice progress bar, a case's warnings
OUR_STDERR_LINE = re.compile(r"\[\d+/\d+\] \S.*|slices: .*|  warning: .*")


def _small_bundle(tmp_path) -> str:
    """The ACDC bundle with a PVT-v2-b0 encoder at 64 x 64 and random weights in models/model.pt."""
    bundle = copy_bundle(next(spec for spec in BUNDLES if spec.name == "pvt_gdla_acdc_segmentation"), tmp_path)
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config.update(spatial_size=[64, 64], num_workers=0)
    config["network_def"]["encoder"] = "pvt_v2_b0"
    config_file.write_text(json.dumps(config))
    parser = ConfigParser()
    parser.read_config(str(config_file))
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return str(bundle)


def test_segment_writes_only_our_lines_to_stderr(tmp_path):
    """A folder with a good volume and a broken one: stderr holds only our lines, and the broken case's error
    still shows in the report."""
    bundle = _small_bundle(tmp_path)
    cases = tmp_path / "cases"
    cases.mkdir()
    volume = np.random.default_rng(0).normal(100, 30, (40, 36, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.2, 1.2, 8.0, 1.0])), cases / "good.nii.gz")
    (cases / "broken.nii").write_bytes(b"not a NIfTI header")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "common",
            "segment",
            "--bundle",
            bundle,
            "--input",
            str(cases),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in re.split(r"[\r\n]", result.stderr) if line.strip()]
    assert lines and not [line for line in lines if not OUR_STDERR_LINE.fullmatch(line)], result.stderr
    assert result.returncode == 1 and "1 of 2 case(s) segmented, 1 failed" in result.stdout
    assert re.search(r"broken\s+failed\s+\S*broken\.nii", result.stdout), result.stdout  # the error names the file


def test_only_the_listed_messages_and_categories_are_silenced():
    quiet_third_party()
    quiet_third_party()  # idempotent: one filter per entry
    for _category, message in THIRD_PARTY_WARNINGS:
        assert sum(f[1] is not None and f[1].pattern.startswith(re.escape(message)) for f in warnings.filters) == 1
    category, message = THIRD_PARTY_WARNINGS[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn(message, category, stacklevel=1)
        warnings.warn(message + " And something new.", category, stacklevel=1)  # a longer message is not ours
        warnings.warn(message, RuntimeWarning, stacklevel=1)  # nor another category
        warnings.warn("our own warning", UserWarning, stacklevel=1)
    assert [(w.category, str(w.message)) for w in caught] == [
        (category, message + " And something new."),
        (RuntimeWarning, message),
        (UserWarning, "our own warning"),
    ]


def test_only_the_listed_log_records_are_dropped(caplog):
    quiet_third_party()
    name, level, message = THIRD_PARTY_LOG_RECORDS[0]
    logger = logging.getLogger(name)
    with caplog.at_level(logging.DEBUG, logger=name):
        logger.log(level, message)
        logger.log(level, message + " (and more)")
        logger.error(message)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (level, message + " (and more)"),
        (logging.ERROR, message),
    ]
