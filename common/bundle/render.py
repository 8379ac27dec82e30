"""Write every bundle folder from :mod:`common.bundle.specs`, or check the checked-in ones are current.

python -m common bundles render [--root bundles]
python -m common bundles check  [--root bundles]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cards import LICENSE_TEXT, data_license, large_files, model_card
from .inference_config import inference_config
from .location import DEFAULT_ROOT
from .metadata import metadata
from .specs import BUNDLES, BundleSpec
from .train_configs import evaluate_config, multi_gpu_config, multi_gpu_evaluate_config, raw_btcv_config, train_config

LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""

MODELS_GITIGNORE = "# weights are not kept in git (see large_files.yml)\n*\n!.gitignore\n"


def _json(config: dict) -> str:
    return json.dumps(config, indent=4) + "\n"


def bundle_files(spec: BundleSpec) -> dict[str, str]:
    """Relative path -> text of every file of one bundle."""
    overlays = {"configs/raw_btcv.json": _json(raw_btcv_config(spec))} if spec.dataset == "synapse" else {}
    return {
        **overlays,
        "configs/metadata.json": _json(metadata(spec)),
        "configs/train.json": _json(train_config(spec)),
        "configs/evaluate.json": _json(evaluate_config(spec)),
        "configs/inference.json": _json(inference_config(spec)),
        # monai.bundle.load(..., workflow_type="infer") reads configs/infer.json: the same inference config
        "configs/infer.json": _json(inference_config(spec)),
        "configs/multi_gpu_train.json": _json(multi_gpu_config(spec)),
        "configs/multi_gpu_evaluate.json": _json(multi_gpu_evaluate_config(spec)),
        "configs/logging.conf": LOGGING_CONF,
        "docs/README.md": model_card(spec),
        "docs/data_license.txt": data_license(spec),
        "LICENSE": LICENSE_TEXT,
        "large_files.yml": large_files(),
        "models/.gitignore": MODELS_GITIGNORE,
    }


def render(root: str | Path = DEFAULT_ROOT) -> list[Path]:
    """Write all bundles under ``root``; returns the files written."""
    written = []
    for spec in BUNDLES:
        for relative, text in bundle_files(spec).items():
            path = Path(root) / spec.name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


#: metadata.json fields that record the versions installed where the bundle was rendered, not the templates
ENVIRONMENT_FIELDS = ("monai_version", "pytorch_version", "numpy_version")
#: ``required_packages_version`` entries that are this package, not the environment
OWN_PACKAGES = ("gdla-bundles",)


def _with_recorded_environment(rendered: str, checked_in: str) -> str:
    """``rendered`` metadata text with the installed-version fields taken from ``checked_in``.

    The checked-in bundles record the versions of the environment that rendered them; another environment renders
    other numbers there and nothing else differs, so those fields are not compared (everything else is, as text).
    """
    try:
        recorded = json.loads(checked_in)
    except json.JSONDecodeError:
        return rendered
    if not isinstance(recorded, dict):
        return rendered
    metadata = json.loads(rendered)
    for key in ENVIRONMENT_FIELDS:
        if key in recorded:
            metadata[key] = recorded[key]
    packages, recorded_packages = metadata.get("required_packages_version"), recorded.get("required_packages_version")
    if isinstance(packages, dict) and isinstance(recorded_packages, dict):
        for name in packages:
            if name not in OWN_PACKAGES and name in recorded_packages:
                packages[name] = recorded_packages[name]
    return _json(metadata)


def stale_files(root: str | Path = DEFAULT_ROOT) -> list[str]:
    """Files under ``root`` that are missing or differ from their rendering.

    ``configs/metadata.json`` is compared except for the versions of the installed packages it records
    (:data:`ENVIRONMENT_FIELDS`, third-party ``required_packages_version``), so the check holds in any environment.
    """
    stale = []
    for spec in BUNDLES:
        for relative, text in bundle_files(spec).items():
            path = Path(root) / spec.name / relative
            if not path.is_file():
                stale.append(f"{spec.name}/{relative}")
                continue
            checked_in = path.read_text()
            if relative == "configs/metadata.json":
                text = _with_recorded_environment(text, checked_in)
            if checked_in != text:
                stale.append(f"{spec.name}/{relative}")
    return stale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["render", "check"], help="write the bundles, or check they are current")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the bundles folder")


def run(args: argparse.Namespace) -> int:
    if args.action == "render":
        print(f"wrote {len(render(args.root))} files under {args.root}")
        return 0
    stale = stale_files(args.root)
    if stale:
        print("out of date (run `python -m common bundles render`):\n  " + "\n  ".join(stale))
        return 1
    print(f"all {len(BUNDLES)} bundles are current")
    return 0
