"""The network registry: explicit options (unknown ones refused with the network's name) and each network's facts."""

import inspect

import pytest

from common.bundle.specs import BUNDLES, published_metrics
from common.evaluation.published import PUBLISHED_RESULTS, published_rows
from common.networks import create_network, list_networks, network_facts, register_network
from common.networks.papers import EMCAD_CITATION, GDLA_CITATION, PVT_CITATION, XATTNRES_CITATION


def test_an_option_the_network_does_not_have_is_refused_naming_the_network_and_its_options():
    with pytest.raises(ValueError, match="'pvt_linearattn' has no option 'gate'") as info:
        create_network("pvt_linearattn", gate="silu")
    assert "ffn" in str(info.value) and "encoder_weights" in str(info.value)


def test_a_misspelt_option_is_refused_with_the_closest_name():
    with pytest.raises(
        ValueError, match=r"'pvt_gdla' has no option 'deep_supervison' \(did you mean 'deep_supervision'"
    ):
        create_network("pvt_gdla", deep_supervison=False)


def test_an_unknown_network_lists_the_registered_names():
    with pytest.raises(ValueError, match="unknown network 'pvt_gdlaa'"):
        create_network("pvt_gdlaa")


@pytest.mark.parametrize("name", list_networks())
def test_every_factory_lists_its_options_and_defaults(name):
    facts = network_facts(name)
    parameters = inspect.signature(facts.factory).parameters.values()
    assert all(p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in parameters)
    assert all(p.default is not p.empty for p in parameters), "defaults are the paper's model"
    assert {"in_channels", "num_classes", "deep_supervision"} <= set(facts.options)


def test_a_factory_with_kwargs_cannot_be_registered():
    def loose_network(**kwargs):
        raise AssertionError("never built")

    with pytest.raises(TypeError, match="'loose_network' must list its options explicitly"):
        register_network(loose_network)


def test_the_gdla_mixer_options_are_refused_by_other_mixers():
    from common.networks.pvt_decoders import PVTDecoderNet

    with pytest.raises(ValueError, match="'linear' mixer has no options"):
        PVTDecoderNet("linear", encoder="pvt_v2_b0", encoder_weights="random", gate="silu")


def test_facts_of_the_pvt_family():
    gdla = network_facts("pvt_gdla")
    assert (gdla.encoder, gdla.encoder_weights_file, gdla.deep_supervision) == ("pvt_v2", "pvt_v2_b2.pth", True)
    assert gdla.citations == (GDLA_CITATION, PVT_CITATION)
    assert gdla.defaults["gate"] == "sigmoid" and gdla.defaults["ffn"] == "mixffn"
    assert network_facts("pvt_emcad").citations[-1] == EMCAD_CITATION
    assert network_facts("pvt_emcad_xattnres").citations[-2:] == (EMCAD_CITATION, XATTNRES_CITATION)
    for name in ("setr", "transunet", "cvt", "mlla_unet"):
        facts = network_facts(name)
        assert facts.encoder is None and facts.encoder_weights_file is None and not facts.deep_supervision
        with pytest.raises(ValueError, match="no deep supervision"):
            create_network(name, deep_supervision=True)


def test_published_rows_come_from_the_published_tables():
    rows = published_rows(network_facts("pvt_gdla").paper_model)
    assert set(rows) == {d for d, table in PUBLISHED_RESULTS.items() if "PVT-GDLA" in table}
    assert rows["synapse"].mean_dice == pytest.approx(85.32)
    assert published_rows(network_facts("pvt_gdla_xattnres_noskip").paper_model) == {}


def test_bundles_of_the_paper_models_show_the_networks_published_row():
    for spec in BUNDLES:
        facts = network_facts(spec.network)
        if facts.paper_model == spec.paper_model and spec.dataset in published_rows(facts.paper_model):
            assert published_metrics(spec)["mean_dice"] == published_rows(facts.paper_model)[spec.dataset].mean_dice
