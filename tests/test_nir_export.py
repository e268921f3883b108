"""NIR export: write/read round trip for every block variant and the 84x84 stem, interpreter parity
with the PyTorch model on every neuron, refusals, and the node types emitted."""

import dataclasses
import itertools

import nir
import numpy as np
import pytest
import torch

from conftest import firing_model, random_pixels, small_config
from xoresnet.nir.check import compare_nir_to_model
from xoresnet.nir.export import export_nir, read_meta, read_nir, write_nir
from xoresnet.config import MERGES, SELECTIONS, SHORTCUTS, BlockSpec
from xoresnet.errors import UnsupportedModelError
from xoresnet.neuron import NeuronSpec
from xoresnet.stats import recording

STANDARD_TYPES = {nir.Input, nir.Output, nir.Conv2d, nir.Affine, nir.Flatten, nir.SumPool2d, nir.AvgPool2d,
                  nir.Scale, nir.Threshold, nir.IF, nir.LIF, nir.CubaLIF}

VARIANTS = [(kind, BlockSpec(sel, merge, sc))
            for kind in ("basic", "bottleneck")
            for sel, merge, sc in itertools.product(SELECTIONS, MERGES, SHORTCUTS)
            if not (merge == "add" and sel != "none") and not (kind == "bottleneck" and sel == "mid")]


def variant_config(kind, spec, **kw):
    if kind == "basic":  # stage 1: two identity blocks (the second selects against P); stage 2: stride 2
        return small_config(block=spec, **kw)
    # bottleneck: block 1 changes channels (non-identity), block 2 identity, block 3 identity selecting against P
    return small_config(block_type="bottleneck", blocks_per_stage=(3,), base_width=2, block=spec, **kw)


# ---------------------------------------------------------------------- comparison helpers

def _same(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b)
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(np.asarray(a), np.asarray(b))


def assert_same_graph(g1: nir.NIRGraph, g2: nir.NIRGraph):
    assert set(g1.nodes) == set(g2.nodes)
    assert sorted(g1.edges) == sorted(g2.edges)
    assert len(set(g1.edges)) == len(g1.edges)
    for name, n1 in g1.nodes.items():
        n2 = g2.nodes[name]
        assert type(n1) is type(n2), name
        for f in dataclasses.fields(n1):
            assert _same(getattr(n1, f.name), getattr(n2, f.name)), (name, f.name)
    assert read_meta(g1) == read_meta(g2)
    assert float(g2.metadata["dt"]) == 1.0


def compare_with_model(model, graph, pixels):
    """The production check (:func:`xoresnet.nir.check.compare_nir_to_model`, causal near-threshold rule)
    of ``graph`` against ``model``, held to what a correct export gives: nothing unexplained, and
    membranes and logits equal to float32 rounding wherever the models must agree. Returns the
    check's result and the model's firing rate per neuron layer (to keep the test from comparing silence)."""
    result = compare_nir_to_model(model, graph, pixels)
    assert result["passed"], f"unexplained NIR/PyTorch mismatches: {result}"
    assert result["max_membrane_difference"] < 1e-4 and result["max_logit_difference"] < 1e-5, result
    assert result["near_threshold_flips"] <= result["mismatching_neuron_steps"]
    with torch.no_grad(), recording(model) as rec:
        model(pixels.to(torch.float32) / model.config.input_levels)
    return result, [v["firing_rate"] for v in rec.summary()["layers"].values()]


# ---------------------------------------------------------------------- round trip + parity

@pytest.mark.parametrize("kind,spec", VARIANTS, ids=[f"{k}-{s.selection}-{s.merge}-{s.shortcut}" for k, s in VARIANTS])
def test_round_trip_and_interpreter_parity_every_variant(kind, spec, tmp_path):
    cfg = variant_config(kind, spec)
    model = firing_model(cfg, seed=11)
    graph = export_nir(model)
    path = tmp_path / "model.nir"
    write_nir(graph, path)
    back = read_nir(path)
    assert_same_graph(graph, back)
    assert set(map(type, back.nodes.values())) <= STANDARD_TYPES
    pixels = random_pixels(3, cfg, seed=12)
    result, rates = compare_with_model(model, back, pixels)
    assert result["neuron_nodes"] >= 5
    assert np.mean(rates) > 0.05 and max(rates) < 0.95, f"weak test: firing rates {rates}"


@pytest.mark.parametrize("neuron,node_type", [
    (NeuronSpec(du=1.0, dv=0.0), nir.IF),
    (NeuronSpec(du=1.0, dv=1000 / 4096), nir.LIF),
    (NeuronSpec(du=0.5, dv=0.25), nir.CubaLIF),
    (NeuronSpec(du=3000 / 4096, dv=700 / 4096, vth=0.75), nir.CubaLIF),
], ids=["IF", "LIF", "CubaLIF", "CubaLIF-odd-decays"])
def test_round_trip_and_parity_per_neuron_kind(neuron, node_type, tmp_path):
    cfg = small_config(neuron=neuron, block=BlockSpec("prev_input", "xor", "spike"), timesteps=4)
    model = firing_model(cfg, seed=21)
    graph = export_nir(model)
    kinds = {type(n) for n in graph.nodes.values() if isinstance(n, (nir.IF, nir.LIF, nir.CubaLIF))}
    assert kinds == {node_type}
    write_nir(graph, tmp_path / "m.nir")
    back = read_nir(tmp_path / "m.nir")
    assert_same_graph(graph, back)
    _, rates = compare_with_model(model, back, random_pixels(4, cfg, seed=22))
    assert np.mean(rates) > 0.05


def test_round_trip_and_parity_84x84_or_pool_stem(tmp_path):
    cfg = small_config(input_size=84, blocks_per_stage=(1, 1), base_width=2, in_channels=3, input_levels=255)
    assert cfg.stem == "conv_s2_orpool"
    model = firing_model(cfg, seed=31)
    graph = export_nir(model)
    assert isinstance(graph.nodes["stem.pool"], nir.SumPool2d)
    assert isinstance(graph.nodes["stem.or_pool"], nir.Threshold)
    assert ("stem.or_pool", "layer1.0.convs.0") in graph.edges
    write_nir(graph, tmp_path / "s.nir")
    back = read_nir(tmp_path / "s.nir")
    assert_same_graph(graph, back)
    _, rates = compare_with_model(model, back, random_pixels(2, cfg, seed=32))
    assert np.mean(rates) > 0.05


# ---------------------------------------------------------------------- parameters, by hand

def test_batch_norm_folding_and_neuron_parameters():
    """Conv weights = w * gamma / sqrt(var + eps), bias = beta - mu * gamma / sqrt(var + eps); with du = 1
    the bias rides in the conv; with du < 1 it is the CubaLIF's v_leak * dv; taus are 1/du and 1/dv."""
    for neuron in (NeuronSpec(du=1.0, dv=0.5), NeuronSpec(du=0.5, dv=0.25)):
        cfg = small_config(neuron=neuron)
        model = firing_model(cfg, seed=41)
        graph = export_nir(model)
        cb = model.stem.cb
        bn = cb.bn
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
        shift = (bn.bias.detach().double() - bn.running_mean.double() * torch.as_tensor(scale)).numpy()
        w = cb.conv.weight.detach().double().numpy() * scale[:, None, None, None]
        conv = graph.nodes["stem.cb"]
        np.testing.assert_allclose(conv.weight, w, rtol=1e-6, atol=1e-7)
        sn = graph.nodes["stem.sn"]
        assert np.all(sn.v_threshold == 1.0) and np.all(sn.v_reset == 0.0)
        if neuron.du == 1.0:
            assert isinstance(sn, nir.LIF)
            np.testing.assert_allclose(conv.bias, shift, rtol=1e-6, atol=1e-7)
            assert np.all(sn.tau == 2.0) and np.all(sn.r == 2.0) and np.all(sn.v_leak == 0.0)
        else:
            assert isinstance(sn, nir.CubaLIF)
            assert np.all(conv.bias == 0.0)
            assert np.all(sn.tau_syn == 2.0) and np.all(sn.w_in == 2.0)
            assert np.all(sn.tau_mem == 4.0) and np.all(sn.r == 4.0)
            np.testing.assert_allclose(sn.v_leak[:, 0, 0], shift / 0.25, rtol=1e-6, atol=1e-6)
        meta = read_meta(sn)
        assert meta["role"] == "neuron" and meta["du"] == neuron.du and meta["dv"] == neuron.dv
        gm = read_meta(graph)
        assert gm["timesteps"] == cfg.timesteps and gm["input_levels"] == cfg.input_levels
        assert gm["config"] == cfg.to_dict()


def test_add_current_merge_sums_two_edges_into_one_neuron():
    """Non-identity add_current: the last neuron has exactly two inputs, the backbone conv and the
    shortcut conv, and their batch-norm shifts add (in the conv biases, du = 1)."""
    cfg = small_config(block=BlockSpec("none", "or", "add_current"))
    graph = export_nir(firing_model(cfg, seed=42))
    ins = sorted(s for s, d in graph.edges if d == "layer2.0.neurons.1")
    assert ins == ["layer2.0.convs.1", "layer2.0.shortcut"]
    # merge 'add_current' in identity blocks: backbone conv + the shortcut spikes directly (weight 1)
    cfg = small_config(block=BlockSpec("none", "add_current", "add_current"))
    graph = export_nir(firing_model(cfg, seed=42))
    ins = sorted(s for s, d in graph.edges if d == "layer1.1.neurons.1")
    assert ins == ["layer1.0.neurons.1", "layer1.1.convs.1"]


# ---------------------------------------------------------------------- refusals

def test_soft_reset_is_refused():
    model = firing_model(small_config(neuron=NeuronSpec(reset="soft")), seed=1)
    with pytest.raises(UnsupportedModelError, match="soft reset"):
        export_nir(model)


def test_du_below_one_with_dv_zero_is_refused():
    model = firing_model(small_config(neuron=NeuronSpec(du=0.5, dv=0.0)), seed=1)
    with pytest.raises(UnsupportedModelError, match=r"du=0\.5.*dv=0"):
        export_nir(model)


@pytest.mark.parametrize("tensor", ["layer1.0.convs.1.conv.weight", "stem.cb.bn.running_var", "head.bias"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(tensor, value):
    model = firing_model(small_config(), seed=1)
    with torch.no_grad():
        model.state_dict()[tensor].view(-1)[0] = value
    with pytest.raises(UnsupportedModelError, match=tensor.replace(".", r"\.")):
        export_nir(model)


def test_only_standard_nir_node_types_are_emitted():
    """Over a model with every gate kind and neuron kind, the node types are exactly NIR's own classes."""
    seen = set()
    for spec, neuron, size in [(BlockSpec("prev_input", "xor", "spike"), NeuronSpec(du=1.0, dv=0.0), 8),
                               (BlockSpec("mid", "iand", "spike"), NeuronSpec(du=1.0, dv=0.5), 8),
                               (BlockSpec("none", "or", "add_current"), NeuronSpec(du=0.5, dv=0.5), 84)]:
        cfg = small_config(block=spec, neuron=neuron, input_size=size, base_width=2)
        graph = export_nir(firing_model(cfg, seed=2))
        for node in graph.nodes.values():
            assert type(node) in STANDARD_TYPES and type(node).__module__.startswith("nir")
            seen.add(type(node).__name__)
    assert seen == {"Input", "Output", "Conv2d", "Affine", "Flatten", "SumPool2d", "AvgPool2d", "Scale",
                    "Threshold", "IF", "LIF", "CubaLIF"}
