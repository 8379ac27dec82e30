"""Every public network class documents its arguments and carries an ``Examples::`` block, and the examples run."""

from __future__ import annotations

import doctest
import importlib

import pytest

from common.networks import cvt, emcad, mlla_unet, pvt_decoders, setr, transunet, xattnres

NETWORK_CLASSES = [
    pvt_decoders.PVTDecoderNet,
    emcad.EMCADNet,
    xattnres.XAttnResNet,
    mlla_unet.MLLAUNet,
    setr.SETR,
    transunet.TransUNet,
    cvt.CvT,
]
MODULES = [
    "base",
    "pvt_decoders",
    "emcad",
    "xattnres",
    "mlla_unet",
    "setr",
    "transunet",
    "cvt",
    "kv_transformers",
    "scripting",
]


@pytest.mark.parametrize("network", NETWORK_CLASSES, ids=lambda c: c.__name__)
def test_network_classes_have_args_and_examples(network):
    assert "Args:" in network.__doc__ and "Examples::" in network.__doc__


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"common.networks.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {module.__name__} failed"
    if name != "kv_transformers":
        assert result.attempted > 0
