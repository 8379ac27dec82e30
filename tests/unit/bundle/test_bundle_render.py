"""The rendered-bundle check compares everything but the installed package versions metadata.json records."""

from __future__ import annotations

import json

from common.bundle.render import render, stale_files
from common.bundle.specs import BUNDLES


def _edit_metadata(path, change) -> None:
    metadata = json.loads(path.read_text())
    change(metadata)
    path.write_text(json.dumps(metadata, indent=4) + "\n")


def test_the_check_ignores_installed_versions_and_nothing_else(tmp_path):
    render(tmp_path)
    assert stale_files(tmp_path) == []
    name = BUNDLES[0].name
    metadata = tmp_path / name / "configs" / "metadata.json"
    rendered = metadata.read_text()

    def other_environment(m: dict) -> None:
        m.update(monai_version="1.0.0", pytorch_version="2.0.0", numpy_version="1.24.0")
        m["required_packages_version"].update(timm="0.9.0", nibabel="5.0.0")
        m["required_packages_version"]["pytorch-ignite"] = "0.4.0"

    _edit_metadata(metadata, other_environment)
    assert stale_files(tmp_path) == []

    _edit_metadata(metadata, lambda m: m["required_packages_version"].update({"gdla-bundles": "9.9.9"}))
    assert stale_files(tmp_path) == [f"{name}/configs/metadata.json"]

    metadata.write_text(rendered)
    _edit_metadata(metadata, lambda m: m.update(task="something else"))
    assert stale_files(tmp_path) == [f"{name}/configs/metadata.json"]

    metadata.write_text(rendered.replace("    ", "  "))  # same content, other layout
    assert stale_files(tmp_path) == [f"{name}/configs/metadata.json"]
