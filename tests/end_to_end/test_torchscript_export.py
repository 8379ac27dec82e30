"""The model zoo's TorchScript export command, with its defaults (``torch.jit.script``), on every bundle.

Beside the traced export of ``test_bundles.py`` (``--use_trace True``): the command the model zoo's READMEs show,
without options, must write a TorchScript file whose outputs equal the eager network's. The fresh-environment
run of a downloaded bundle is in ``test_release.py``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import torch
from bundle_harness import BUNDLES_ROOT, copy_bundle, small_overrides
from monai.bundle import ConfigParser, ckpt_export

from common.bundle.cards import TORCHSCRIPT_COMMAND
from common.bundle.specs import BUNDLES
from common.networks import create_network
from common.networks.scripting import TracedNetwork


def _network(bundle, overrides: dict) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({**overrides, "bundle_root": str(bundle)})
    return parser.get_parsed_content("network_def")


def _assert_same_outputs(exported: torch.jit.ScriptModule, network: torch.nn.Module, channels: int) -> None:
    """The TorchScript module equals the eager network (eval mode) on random images at the trace's size."""
    network.eval()
    size = network.script_example_size
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), network(x), rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("spec", BUNDLES, ids=[spec.name for spec in BUNDLES])
def test_zoo_export_command_with_its_defaults_works_on_every_bundle(spec, tmp_path):
    """``ckpt_export`` as the zoo runs it (no ``use_trace``, no input shape), on the bundle's network shrunk."""
    bundle = copy_bundle(spec, tmp_path)
    small = {k: v for k, v in small_overrides(spec).items() if k.startswith("network_def#")}
    trained = _network(bundle, small)
    torch.save(trained.state_dict(), bundle / "models" / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(bundle / "models" / "model.ts"),
        ckpt_file=str(bundle / "models" / "model.pt"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        bundle_root=str(bundle),
        **small,
    )
    exported = torch.jit.load(bundle / "models" / "model.ts")
    _assert_same_outputs(exported, trained, trained.in_channels)


def test_the_model_cards_show_the_zoo_command_and_why_it_traces():
    for spec in BUNDLES:
        card = (BUNDLES_ROOT / spec.name / "docs" / "README.md").read_text()
        export = card.split("## Export", 1)[1].split("```bash", 1)[1]
        command = " ".join(export.split("\n")[1:3]).replace("\\", " ")
        assert " ".join(command.split()) == TORCHSCRIPT_COMMAND, spec.name
        assert re.search(rf"cannot compile `{spec.network}` as written: \S", card), spec.name


def test_scripting_a_network_keeps_its_mode_and_gives_one_compiled_wrapper():
    network = create_network("pvt_gdla", num_classes=3, encoder="pvt_v2_b0", encoder_weights="random")
    network.script_example_size = 64  # a small trace: the PVT networks' shapes follow the input
    scripted = torch.jit.script(network)
    assert network.training  # the trace is taken in eval mode; the network is left as it was
    assert isinstance(scripted, torch.jit.ScriptModule) and scripted.original_name == TracedNetwork.__name__
    _assert_same_outputs(scripted, network, 1)
    x = torch.rand(1, 1, 96, 160)  # other sizes work too
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_zoo_export_command_line_on_a_full_size_bundle(tmp_path):
    """The card's command, word for word, in a subprocess from the bundle folder, on the full-size network."""
    spec = next(spec for spec in BUNDLES if spec.name == "pvt_gdla_busi_segmentation")
    bundle = copy_bundle(spec, tmp_path)
    trained = _network(bundle, {})
    torch.save(trained.state_dict(), bundle / "models" / "model.pt")
    arguments = shlex.split(TORCHSCRIPT_COMMAND)[1:]
    result = subprocess.run([sys.executable, *arguments], cwd=bundle, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TracerWarning" not in result.stderr  # the input checks' expected tracer warnings are filtered
    _assert_same_outputs(torch.jit.load(bundle / "models" / "model.ts"), trained, trained.in_channels)
