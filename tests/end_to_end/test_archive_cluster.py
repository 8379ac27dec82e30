"""``segment-archive --address`` joining a two-node Ray cluster on this host (``ray.cluster_utils.Cluster``, on
127.0.0.1 only), one node removed mid-run: the cases it held run again on the other node and the run completes.

The bundle and archive come from tests/archive_fixtures.py; the ``announce`` cases hold their worker for a few seconds
(tests/archive_network.py), so that both nodes are busy when one is removed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from archive_fixtures import manifest_rows, masks, signalled_bundle, write_volume
from repo_paths import TESTS

LOOPBACK = {"node_ip_address": "127.0.0.1", "num_cpus": 1}


def remove_when_both_busy(cluster, node, state_dir: Path, removed: list, stop: threading.Event) -> None:
    """Remove ``node`` (no graceful shutdown) once two workers hold an ``announce`` case."""
    while not stop.is_set():
        if len(list(state_dir.glob("announce-*"))) >= 2:
            cluster.remove_node(node, allow_graceful=False)
            removed.append(time.monotonic())
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_a_node_leaving_mid_run_costs_only_its_in_flight_case(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray process on 127.0.0.1 (scale-out.md)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    from ray.cluster_utils import Cluster  # after the loopback switch: Ray reads it when imported

    state_dir = tmp_path / "state"
    bundle = signalled_bundle(tmp_path / "bundles", state_dir)
    for k in range(4):
        write_volume(tmp_path / "archive" / f"held_{k}.nii.gz", "announce", k)
    write_volume(tmp_path / "archive" / "plain.nii.gz", None, 9)
    cluster = Cluster(initialize_head=True, head_node_args={**LOOPBACK, "include_dashboard": False})
    try:
        second = cluster.add_node(**LOOPBACK)
        removed: list[float] = []
        stop = threading.Event()
        remover = threading.Thread(
            target=remove_when_both_busy, args=(cluster, second, state_dir, removed, stop), daemon=True
        )
        remover.start()
        try:  # the driver in its own process, as on a real cluster (Ray reads the loopback switch at import)
            driver = subprocess.run(
                [sys.executable, "-m", "common", "segment-archive", "--bundle", str(bundle),
                 "--input", str(tmp_path / "archive"), "--output", str(tmp_path / "out"),
                 "--address", cluster.address, "--workers", "2", "--memory-per-worker", "0.2"],
                capture_output=True, text=True, timeout=400,
            )  # fmt: skip
        finally:
            stop.set()
    finally:
        cluster.shutdown()

    assert removed, "the second node was never removed: the two workers were not both busy"
    assert driver.returncode == 0, driver.stderr[-3000:]
    rows = manifest_rows(tmp_path / "out")
    last = {row["case"]: row for row in rows}
    assert sorted(last) == ["held_0.nii.gz", "held_1.nii.gz", "held_2.nii.gz", "held_3.nii.gz", "plain.nii.gz"]
    assert all(row["status"] == "ok" for row in last.values())
    assert sum(row["attempts"] == 2 for row in last.values()) == 1  # the case the lost node held, run again
    assert "[5/5]" in driver.stderr and "5 case(s) in" in driver.stdout
    assert all(np.isin(mask, (0, 1)).all() for mask in masks(tmp_path / "out").values())
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".staging-")]
