"""Start the MONAI Label server without the packages its process never uses.

``python -m common.apps.label_server start_server --app monailabel_app --studies ...`` takes the arguments of
``monailabel start_server`` and runs MONAI Label's own entry point (``monailabel.main``), after three things:

- Triton is left unloaded when torch sees no GPU (:mod:`common.environment.triton`; about 80 MiB resident).
- ``import monai`` imports every optional package it finds installed, and MONAI Label's environment installs
  many: mlflow, pandas (with pyarrow), matplotlib and scikit-learn alone hold about 135 MiB resident in the
  server (docs/benchmarks.md). The server process loads the app, answers ``/info``, ``/datastore``,
  ``/activelearning``, ``/infer`` and ``/scoring`` with it, and uses none of them: our tasks track no
  experiments, read no tables, draw no plots. MONAI Label trains, scores and batch-infers in the background in
  subprocesses of its own (``python -m monailabel.interfaces.utils.app``), which import everything as before.
  In this process ``import`` of those packages fails, so MONAI's optional imports treat them as not installed
  (a feature that needed one would say so when used). TensorBoard stays: a training run with ``run_sync=true``
  runs in the server process and the bundles' training logs with it.
- malloc is capped at one arena before any thread starts (:func:`common.inference.host_allocator.share_one_arena`), as
  ``segment`` does before it builds the network: the segmentation's lanes and the server's request threads then
  reuse each other's freed memory instead of each holding their own (docs/benchmarks.md).
"""

from __future__ import annotations

import runpy
import sys

from common.environment.triton import skip_triton_without_gpu
from common.inference.host_allocator import share_one_arena

#: packages MONAI imports when installed that the server process does not use (experiment tracking, data
#: tables, plots, scikit-learn's metrics); pyarrow comes only with pandas and mlflow
SERVER_UNUSED = ("mlflow", "pandas", "matplotlib", "sklearn")


def leave_out_unused_packages() -> None:
    """Make ``import`` of each of :data:`SERVER_UNUSED` not imported yet fail for the rest of the process (a
    ``None`` entry in ``sys.modules``, as for a missing package)."""
    for name in SERVER_UNUSED:
        sys.modules.setdefault(name, None)


def main(argv: list[str] | None = None) -> None:
    """Run ``monailabel`` with ``argv`` (default: this process's arguments) in this process."""
    skip_triton_without_gpu()
    leave_out_unused_packages()
    share_one_arena()
    sys.argv = ["monailabel", *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module("monailabel.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
