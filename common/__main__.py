"""Command line: ``python -m common <command> ...``.

Each command lives in its own module, imported only when used, which provides
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .environment.triton import skip_triton_without_gpu

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("common.data.cli", "inspect a dataset folder before training (data check)"),
    "bundles": ("common.bundle.render", "write the bundles from their templates, or check they are current"),
    "segment": ("common.apps.segment", "segment volumes, DICOM series or 2-D pictures with a bundle"),
    "demo": ("common.apps.demo", "train, evaluate and apply a PVT-GDLA bundle on the MNI152 brain template (CPU)"),
    "release": ("common.bundle.release", "pack a trained bundle into a checksummed archive; download and verify one"),
    "reproduce": ("common.apps.reproduce", "evaluate (or train, then evaluate) a bundle beside its paper row"),
    "listen": ("common.pacs.node", "a DICOM node: receive series, segment them, send the DICOM SEG on"),
    "segment-archive": (
        "common.apps.segment_archive",
        "segment a whole archive: resumable, on Ray workers or in process",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns its exit code."""
    parser = argparse.ArgumentParser(prog="python -m common", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(_module=module_name)
    argv = sys.argv[1:] if argv is None else argv
    known, _ = parser.parse_known_args(argv[:1])
    skip_triton_without_gpu()  # before the command's imports pull in torch._dynamo (through MONAI and torchvision)
    module = importlib.import_module(known._module)
    full = argparse.ArgumentParser(prog=f"python -m common {known.command}")
    module.add_arguments(full)
    return module.run(full.parse_args(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
