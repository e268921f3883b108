"""Calibration: every integer parameter inside Loihi 2's ranges, never a silent clip; hand-made
violations raise RangeError naming the culprit and its value; QuantSpec and HDF5 round trips."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from calibration.float_graph import FloatGraph, FloatPopulation, FloatSynapse, nir_to_float_graph
from calibration.integer_graph import (INPUT, READOUT, IntegerGraph, Population, Synapse, load_integer_graph,
                                       save_integer_graph)
from calibration.quantize import QuantSpec, calibrate, calibrate_nir
from conftest import firing_model, random_pixels, small_config
from xoresnet.nir.export import export_nir
from calibration.schedule import schedule
from xoresnet.config import BlockSpec
from xoresnet.errors import RangeError, UnsupportedModelError
from xoresnet.neuron import NeuronSpec

CASES = {
    "xor-or": small_config(),
    "sew-iand-cuba": small_config(block=BlockSpec("none", "iand", "spike"), neuron=NeuronSpec(du=0.5, dv=0.25)),
    "mid-xor-if": small_config(block=BlockSpec("mid", "xor", "spike"), neuron=NeuronSpec(du=1.0, dv=0.0, vth=0.75)),
    "sew-add-bottleneck": small_config(block_type="bottleneck", blocks_per_stage=(2,), base_width=2,
                                       block=BlockSpec("none", "add", "spike")),
    "spiking-resnet-84": small_config(input_size=84, in_channels=3, input_levels=255, blocks_per_stage=(1, 1),
                                      base_width=2, block=BlockSpec("none", "add_current", "add_current")),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def calibrated(request):
    cfg = CASES[request.param]
    model = firing_model(cfg, seed=5)
    graph = export_nir(model)
    pixels = random_pixels(4, cfg, seed=6)
    cal = calibrate_nir(graph, pixels)
    return cfg, nir_to_float_graph(graph), cal, pixels, graph


# ---------------------------------------------------------------------- ranges of calibrated graphs

def test_calibrated_graph_is_within_loihi_ranges(calibrated):
    cfg, fg, cal, _, _ = calibrated
    g = cal.graph
    g.validate()
    for p in g.populations.values():
        assert 0 <= p.du_code <= 4095 and 0 <= p.dv_code <= 4095
        assert 0 <= p.vth_mant <= 131071
        assert p.bias_mant.min() >= -4096 and p.bias_mant.max() <= 4095
        assert p.bias_exp.min() >= 0 and p.bias_exp.max() <= 7
        assert p.bias_mant.shape == p.shape and p.bias_exp.shape == p.shape
    for s in g.synapses:
        w = s.weight
        assert np.issubdtype(w.dtype, np.integer)
        if w.min() < 0 < w.max():
            assert w.min() >= -256 and w.max() <= 254 and not np.any(w % 2), f"{s.name}: mixed weights must be even"
        elif w.min() >= 0:
            assert w.max() <= 255
        else:
            assert w.min() >= -255
        if s.kind == "conv":
            assert s.weight_exp == 0
        assert 0 <= s.weight_exp <= 7 and s.delay == 0


def test_neuron_codes_thresholds_and_scales(calibrated):
    """du code = du * 4096 - 1, dv code = dv * 4096; gates du = dv = 4095, vth from the NIR threshold;
    neurons: scale = vth_mant / vth, so vth_mant = vth * scale."""
    cfg, fg, cal, _, _ = calibrated
    spec = cfg.neuron
    du_code = {1.0: 4095, 0.5: 2047}[spec.du]
    dv_code = {0.5: 2048, 0.25: 1024, 0.0: 0}[spec.dv]
    for p in cal.graph.populations.values():
        if p.kind == "gate":
            assert (p.du_code, p.dv_code, p.scale) == (4095, 4095, 1.0) and not p.has_bias
            assert p.vth_mant == {"xor.and": 1}.get(p.op, 0)
            continue
        assert (p.du_code, p.dv_code) == (du_code, dv_code), p.name
        vth = fg.populations[p.name].vth
        assert vth == spec.vth
        assert p.scale == p.vth_mant / vth
        if spec.vth in (1.0, 0.75):  # exact in binary floating point for these thresholds
            assert vth * p.scale == p.vth_mant
        assert p.vth_mant >= 1
        assert cal.spec.vth_mant[p.name] == p.vth_mant


def test_no_silent_clipping(calibrated):
    """Every integer weight is the float weight times the population's scale, rounded (mixed: to even),
    times 2^weight_exp: |w_int 2^e - w s| <= 2^e. Biases likewise (in v-units, 64 s per float unit)."""
    _, fg, cal, _, _ = calibrated
    g = cal.graph
    fsyn = {s.name: s for s in fg.synapses}
    for s in g.synapses:
        if s.dst == READOUT:
            continue
        scale = g.populations[s.dst].scale
        err = np.abs(s.weight * 2.0 ** s.weight_exp - fsyn[s.name].weight * scale)
        assert err.max() <= 2.0 ** s.weight_exp + 1e-9, s.name
    for p in g.populations.values():
        fp = fg.populations[p.name]
        if p.kind != "neuron":
            continue
        eff = p.bias_mant * 2.0 ** p.bias_exp
        err = np.abs(eff - fp.bias * p.scale * 64)
        assert np.all(err <= 2.0 ** p.bias_exp / 2 + 1e-6), p.name


def test_worst_case_current_fits_u(calibrated):
    """Recomputed here: the largest |input| any neuron can receive (all positive or all negative
    weights active, the graded input at input_levels) times 64, accumulated with decay du + 1,
    stays below 2^23: |a| <= 2^17 (du + 1) / 4096."""
    cfg, _, cal, _, _ = calibrated
    g = cal.graph
    for p in g.populations.values():
        pos = np.zeros(p.shape)
        neg = np.zeros(p.shape)
        for s in g.incoming(p.name):
            w = s.weight.astype(np.float64) * 2.0 ** s.weight_exp
            m = g.input_levels if s.graded else 1
            if s.kind == "conv":
                pp = np.clip(w, 0, None).reshape(w.shape[0], -1).sum(1) * m
                nn = np.clip(w, None, 0).reshape(w.shape[0], -1).sum(1) * m
                pos += pp.reshape(-1, *([1] * (len(p.shape) - 1)))
                neg += nn.reshape(-1, *([1] * (len(p.shape) - 1)))
            elif s.kind == "identity":
                pos += np.clip(w, 0, None) * m
                neg += np.clip(w, None, 0) * m
            else:
                pos += (np.clip(w, 0, None).sum(1) * m).reshape(p.shape)
                neg += (np.clip(w, None, 0).sum(1) * m).reshape(p.shape)
        worst = max(pos.max(), -neg.min())
        assert worst * 64 * 4096 / (p.du_code + 1) <= 2 ** 23, p.name
        if p.kind == "gate":
            assert worst < 64  # no memory left in v


# ---------------------------------------------------------------------- hand-made float graphs

def one_population_graph(*, bias=0.0, weight=0.5, levels=16, channels=2, vth=1.0, du=1.0, dv=0.5, kind="conv",
                         graded=True) -> FloatGraph:
    """input (1, 4, 4) -> population "p" (channels, 4, 4) -> readout."""
    shape = (channels, 4, 4)
    pops = {"p": FloatPopulation("p", shape, "neuron", du_fraction=du, dv_fraction=dv, vth=vth,
                                 bias=np.broadcast_to(np.asarray(bias, np.float64), shape).copy())}
    if kind == "conv":
        syn = FloatSynapse("c", INPUT, "p", "conv", np.broadcast_to(np.asarray(weight, np.float64),
                                                                     (channels, 1, 3, 3)).copy(),
                           padding=(1, 1), graded=graded)
    else:
        raise AssertionError(kind)
    syns = [syn, FloatSynapse("readout:p", "p", READOUT, "dense", np.ones((2, channels * 16)))]
    return FloatGraph((1, 4, 4), levels, 2, pops, syns, np.zeros(2))


PIX = torch.randint(0, 17, (3, 1, 4, 4), generator=torch.Generator().manual_seed(0))


def test_bias_mantissa_and_exponent_by_hand():
    # scale = vth_mant / vth = 100. bias (float units) * 100 * 64 v-units:
    #   10    -> 64000: 64000/2 = 32000, /4 = 16000, /8 = 8000, /16 = 4000 <= 4095 -> mant 4000, exp 4
    #  -0.5   -> -3200: fits -> mant -3200, exp 0
    #   0.01  -> 64 -> mant 64, exp 0
    #   1.0   -> 6400 -> 3200 -> mant 3200, exp 1
    #  -0.64  -> -4096 fits exactly (mantissa range -4096..4095) -> mant -4096, exp 0
    #   0.64  -> 4096 does not -> 2048, exp 1
    bias = np.zeros((2, 4, 4))
    bias.flat[:6] = [10.0, -0.5, 0.01, 1.0, -0.64, 0.64]
    cal = calibrate(one_population_graph(bias=bias, weight=0.01), PIX, None, spec=QuantSpec({"p": 100}))
    p = cal.graph.populations["p"]
    assert p.vth_mant == 100 and p.scale == 100.0
    assert p.bias_mant.flat[:6].tolist() == [4000, -3200, 64, 3200, -4096, 2048]
    assert p.bias_exp.flat[:6].tolist() == [4, 0, 0, 1, 0, 1]
    assert np.all(p.bias_mant.flat[6:] == 0)
    # weights: 0.01 per pixel unit * 100 = 1 (excitatory, kept odd)
    [c] = cal.graph.incoming("p")
    assert np.all(c.weight == 1) and c.weight_exp == 0


def test_current_bound_picks_the_scale_by_hand():
    """Graded input (levels 255), a 3x3 kernel of 1.0 per pixel unit, du = 1 (u = a << 6):
    worst |a| = 9 * 255 * s <= 2^17 = 131072 -> s <= 57.11 -> vth_mant 57 (vth 1).
    With du = 0.5 (code 2047, effective 2048) the limit halves: s <= 28.55 -> 28."""
    for du, expected in [(1.0, 57), (0.5, 28)]:
        cal = calibrate(one_population_graph(weight=1.0, levels=255, du=du), PIX, None)
        p = cal.graph.populations["p"]
        assert p.vth_mant == expected
        entry = cal.report["populations"]["p"]
        assert entry["binding_limit"] == "current"
        [c] = cal.graph.incoming("p")
        assert np.all(c.weight == expected)


def test_a_candidate_that_rounding_pushes_over_the_current_limit_gives_way_to_the_one_below():
    """Levels 100, 3x3 kernel of 0.5: worst |a| = 9 * 100 * 0.5 * s <= 2^17 -> s <= 291.27 -> top 291.
    But 0.5 * 291 = 145.5 rounds (half to even) to 146, and 9 * 100 * 146 = 131400 > 131072: refused.
    290 gives 145 (130500 <= 131072): taken, even with a single candidate."""
    for samples, trace in [(PIX[:0], None), (PIX, {"p": torch.zeros(2, 3, 2, 4, 4)})]:
        cal = calibrate(one_population_graph(weight=0.5, levels=100), samples, trace, candidates=1)
        entry = cal.report["populations"]["p"]
        assert cal.graph.populations["p"].vth_mant == 290 and entry["max_vth_mant"] == 291
        refused, taken = entry["candidates"]
        assert refused["vth_mant"] == 291 and "131400" in refused["refused"] and taken["vth_mant"] == 290
    with pytest.raises(RangeError, match="131400"):  # a quantization spec is honoured exactly, or refused
        calibrate(one_population_graph(weight=0.5, levels=100), PIX, None, spec=QuantSpec({"p": 291}))


def test_threshold_bound_keeps_vth_within_17_bits():
    cal = calibrate(one_population_graph(weight=1e-6, vth=1.0), PIX, None)
    p = cal.graph.populations["p"]
    assert cal.report["populations"]["p"]["binding_limit"] == "threshold"
    assert 131067 <= p.vth_mant <= 131071
    with pytest.raises(RangeError, match=r"population p: threshold mantissa 131072"):
        calibrate(one_population_graph(weight=1e-6), PIX, None, spec=QuantSpec({"p": 131072}))


def test_huge_bias_with_a_fixed_spec_names_population_and_value():
    # bias 1e6 float units * scale 1 = 1e6 a-units = 6.4e7 v-units: 6.4e7 / 128 = 500000 > 4095
    with pytest.raises(RangeError, match=r"population p: bias 1000000 a-units"):
        calibrate(one_population_graph(bias=1e6), PIX, None, spec=QuantSpec({"p": 1}))


def test_huge_bias_in_the_scale_search_names_population_and_value():
    # bias bound: 4095 * 128 / (64 * 1e6) = 0.00819 -> no vth mantissa >= 1 fits
    with pytest.raises(RangeError, match=r"population p.*1000000") as info:
        calibrate(one_population_graph(bias=1e6), PIX, None)
    assert "bias" in str(info.value)


def test_huge_bias_through_nir():
    """The same, from a PyTorch model whose batch-norm shift is huge: refused, naming the neuron."""
    cfg = small_config()
    model = firing_model(cfg, seed=1)
    with torch.no_grad():
        model.layer1[0].convs[0].bn.bias[0] = 1e6
    with pytest.raises(RangeError, match=r"layer1\.0\.neurons\.0"):
        calibrate_nir(export_nir(model), random_pixels(2, cfg, 0))


def test_weight_that_cannot_fit_with_a_fixed_spec():
    # conv: 300 per pixel unit * scale 1 = 300 > 255 (excitatory; conv has no exponent)
    with pytest.raises(RangeError, match=r"synapse c into p: a weight quantizes to 300.*\[0, 255\]"):
        calibrate(one_population_graph(weight=300.0), PIX, None, spec=QuantSpec({"p": 1}))
    # mixed signs: +-200 * 2 = +-400 outside [-256, 254]
    w = np.ones((2, 1, 3, 3)) * 200.0
    w[1] *= -1
    with pytest.raises(RangeError, match=r"synapse c into p: a weight quantizes to 400.*mixed range \[-256, 254\]"):
        calibrate(one_population_graph(weight=w), PIX, None, spec=QuantSpec({"p": 2}))


def test_identity_weight_uses_the_exponent_then_refuses():
    """Identity synapse: weight 1000 * scale 1: 1000 / 2^2 = 250 fits -> (250, exp 2). 40000: even
    with exponent 7 (40000 / 128 = 312.5 -> 312) it does not fit -> RangeError with the value."""
    def graph(w):
        shape = (1, 2, 2)
        pops = {n: FloatPopulation(n, shape, "neuron", du_fraction=1.0, dv_fraction=0.5, vth=1.0, bias=np.zeros(shape))
                for n in ("a", "b")}
        syns = [FloatSynapse("c", INPUT, "a", "conv", np.ones((1, 1, 1, 1)), graded=True),
                FloatSynapse("a->b", "a", "b", "identity", np.full(shape, float(w))),
                FloatSynapse("readout:b", "b", READOUT, "dense", np.ones((2, 4)))]
        return FloatGraph((1, 2, 2), 1, 2, pops, syns, np.zeros(2))

    pix = torch.ones((1, 1, 2, 2), dtype=torch.int64)
    cal = calibrate(graph(1000), pix, None, spec=QuantSpec({"a": 1, "b": 1}))
    [s] = cal.graph.incoming("b")
    assert np.all(s.weight == 250) and s.weight_exp == 2
    with pytest.raises(RangeError, match=r"synapse a->b into b: a weight quantizes to 312.*exponent 7"):
        calibrate(graph(40000), pix, None, spec=QuantSpec({"a": 1, "b": 1}))


def test_worst_case_current_overflow_with_a_fixed_spec():
    """vth_mant 200 -> weights 1.0 * 200 = 200 (fit 8 bits), but 9 of them times pixel 255:
    9 * 200 * 255 = 459000 a-units > 2^17 = 131072 -> u could wrap: refused, not clipped."""
    with pytest.raises(RangeError, match=r"population p: a worst-case input current of 459000 .*limit 131072"):
        calibrate(one_population_graph(weight=1.0, levels=255), PIX, None, spec=QuantSpec({"p": 200}))
    # du = 0.5 halves the limit (u accumulates up to a * 64 * 4096 / 2048): vth_mant 30 -> 9*30*255 = 68850 > 65536
    with pytest.raises(RangeError, match=r"population p: a worst-case input current of 68850 .*limit 65536"):
        calibrate(one_population_graph(weight=1.0, levels=255, du=0.5), PIX, None, spec=QuantSpec({"p": 30}))
    # 28 fits: 9 * 28 * 255 = 64260 <= 65536
    calibrate(one_population_graph(weight=1.0, levels=255, du=0.5), PIX, None, spec=QuantSpec({"p": 28}))


def test_gate_with_large_or_fractional_weights_is_refused():
    def graph(w):
        shape = (1, 2, 2)
        pops = {"a": FloatPopulation("a", shape, "neuron", du_fraction=1.0, dv_fraction=0.5, vth=1.0,
                                     bias=np.zeros(shape)),
                "g": FloatPopulation("g", shape, "gate", vth=0.5, op="or")}
        syns = [FloatSynapse("c", INPUT, "a", "conv", np.ones((1, 1, 1, 1)), graded=True),
                FloatSynapse("a->g", "a", "g", "identity", np.full(shape, float(w))),
                FloatSynapse("readout:g", "g", READOUT, "dense", np.ones((2, 4)))]
        return FloatGraph((1, 2, 2), 1, 2, pops, syns, np.zeros(2))

    pix = torch.ones((1, 1, 2, 2), dtype=torch.int64)
    g = calibrate(graph(63), pix, None).graph.populations["g"]  # |sum| 63 < 64: still memoryless
    assert g.vth_mant == 0
    with pytest.raises(RangeError, match=r"gate g: input sums up to 64"):
        calibrate(graph(64), pix, None)
    with pytest.raises(UnsupportedModelError, match=r"gate g: input weights must be integers"):
        calibrate(graph(0.5), pix, None)


# ---------------------------------------------------------------------- hand-made integer graphs

def tiny_integer_graph(**changes) -> IntegerGraph:
    shape = (2, 3, 3)
    z = np.zeros(shape, np.int64)
    p = Population("p", shape, du_code=4095, dv_code=2048, vth_mant=10, bias_mant=z.copy(), bias_exp=z.copy())
    q = Population("q", shape, du_code=0, dv_code=0, vth_mant=5, bias_mant=z.copy(), bias_exp=z.copy())
    syns = [Synapse("in->p", INPUT, "p", "conv", np.full((2, 1, 3, 3), 4, np.int64), padding=(1, 1), graded=True),
            Synapse("p->q", "p", "q", "dense", np.tile(np.array([[2, -4]]), (18, 9))),
            Synapse("p->q.id", "p", "q", "identity", np.ones(shape, np.int64)),
            Synapse("readout:q", "q", READOUT, "dense", np.ones((2, 18), np.int64))]
    g = IntegerGraph((1, 3, 3), 16, 3, {"p": p, "q": q}, syns, np.array([1, -2]), 2.5, meta={"k": [1, 2]})
    for path, value in changes.items():
        obj_name, attr = path.rsplit(".", 1)
        obj = g.populations[obj_name] if obj_name in g.populations else next(s for s in g.synapses
                                                                              if s.name == obj_name)
        setattr(obj, attr, value)
    return g


def test_tiny_integer_graph_is_valid():
    tiny_integer_graph().validate()


@pytest.mark.parametrize("change,pattern", [
    ({"p->q.weight": np.tile(np.array([[3, -4]]), (18, 9))}, r"synapse p->q: mixed-sign weight 3 is odd"),
    ({"p->q.weight": np.tile(np.array([[2, -258]]), (18, 9))}, r"synapse p->q: weight = -258 .*\[-256, 254\]"),
    ({"p->q.weight": np.tile(np.array([[256, -4]]), (18, 9))}, r"synapse p->q: weight = 256 .*\[-256, 254\]"),
    ({"p->q.id.weight": np.full((2, 3, 3), 256)}, r"synapse p->q\.id: weight = 256 .*\[0, 255\]"),
    ({"p->q.id.weight": np.full((2, 3, 3), -256)}, r"synapse p->q\.id: weight = -256 .*\[-255, 0\]"),
    ({"p->q.delay": 70}, r"synapse p->q: delay = 70 .*\[0, 62\]"),
    ({"p->q.delay": 63}, r"synapse p->q: delay = 63"),
    ({"p->q.weight_exp": 8}, r"synapse p->q: weight_exp = 8"),
    ({"in->p.weight_exp": 1}, r"synapse in->p: .*Conv ignores weight_exp"),
    ({"in->p.delay": 1}, r"synapse in->p: .*no synaptic delay"),
    ({"p.du_code": 5000}, r"population p: du = 5000 .*\[0, 4095\]"),
    ({"q.dv_code": -1}, r"population q: dv = -1"),
    ({"q.vth_mant": 131072}, r"population q: vth = 131072 .*\[0, 131071\]"),
    ({"p.bias_mant": np.full((2, 3, 3), 4096)}, r"population p: bias_mant = 4096"),
    ({"p.bias_mant": np.full((2, 3, 3), -4097)}, r"population p: bias_mant = -4097"),
    ({"p.bias_exp": np.full((2, 3, 3), 8)}, r"population p: bias_exp = 8"),
], ids=lambda v: "-".join(f"{k}={np.asarray(x).flat[0]}" for k, x in v.items()) if isinstance(v, dict) else None)
def test_validate_names_the_culprit_and_value(change, pattern):
    g = tiny_integer_graph(**change)
    with pytest.raises(RangeError, match=pattern):
        g.validate()


def test_validate_accepts_the_range_edges():
    tiny_integer_graph(**{"p->q.weight": np.tile(np.array([[254, -256]]), (18, 9)), "p->q.delay": 62,
                          "p->q.id.weight": np.full((2, 3, 3), 255), "q.vth_mant": 131071,
                          "p.bias_mant": np.full((2, 3, 3), -4096), "p.bias_exp": np.full((2, 3, 3), 7)}).validate()


# ---------------------------------------------------------------------- QuantSpec and HDF5 round trips

def assert_same_integer_graph(a: IntegerGraph, b: IntegerGraph, *, check_meta=True):
    assert tuple(a.input_shape) == tuple(b.input_shape)
    assert (a.input_levels, a.timesteps, a.reset_interval) == (b.input_levels, b.timesteps, b.reset_interval)
    assert a.readout_scale == b.readout_scale
    assert np.array_equal(a.readout_bias, b.readout_bias)
    assert list(a.populations) == list(b.populations)
    for name, p in a.populations.items():
        q = b.populations[name]
        for f in ("name", "shape", "du_code", "dv_code", "vth_mant", "kind", "op", "block", "scale", "latency"):
            assert getattr(p, f) == getattr(q, f), (name, f)
        assert np.array_equal(p.bias_mant, q.bias_mant) and np.array_equal(p.bias_exp, q.bias_exp)
    assert [s.name for s in a.synapses] == [s.name for s in b.synapses]
    for s, t in zip(a.synapses, b.synapses):
        for f in ("src", "dst", "kind", "weight_exp", "stride", "padding", "groups", "graded", "delay"):
            assert getattr(s, f) == getattr(t, f), (s.name, f)
        assert s.weight.shape == t.weight.shape and np.array_equal(s.weight, t.weight), s.name
    if check_meta:
        assert a.meta == b.meta


def test_quant_spec_round_trip_reproduces_the_integer_graph(calibrated):
    _, _, cal, pixels, graph = calibrated
    d = json.loads(json.dumps(cal.spec.to_dict()))
    spec = QuantSpec.from_dict(d)
    assert spec.vth_mant == cal.spec.vth_mant and spec.meta == cal.spec.meta
    assert set(spec.vth_mant) == {n for n, p in cal.graph.populations.items() if p.kind == "neuron"}
    again = calibrate_nir(graph, pixels, spec=spec)
    assert_same_integer_graph(cal.graph, again.graph, check_meta=False)
    # without calibration samples too (the spec alone fixes every number)
    alone = calibrate_nir(graph, pixels[:0], spec=spec)
    assert_same_integer_graph(cal.graph, alone.graph, check_meta=False)


def test_quant_spec_is_really_used_and_checked(calibrated):
    _, _, cal, pixels, graph = calibrated
    name = next(n for n, p in cal.graph.populations.items() if p.kind == "neuron" and p.vth_mant > 2)
    changed = dict(cal.spec.vth_mant)
    changed[name] -= 1
    g2 = calibrate_nir(graph, pixels[:1], spec=QuantSpec(changed)).graph
    assert g2.populations[name].vth_mant == cal.graph.populations[name].vth_mant - 1
    missing = dict(cal.spec.vth_mant)
    del missing[name]
    with pytest.raises(UnsupportedModelError, match=name.replace(".", r"\.")):
        calibrate_nir(graph, pixels[:1], spec=QuantSpec(missing))
    with pytest.raises(UnsupportedModelError, match="version"):
        QuantSpec.from_dict({"version": 99, "vth_mant": {}})


def test_hdf5_round_trip_preserves_everything(calibrated, tmp_path):
    _, _, cal, _, _ = calibrated
    for g in (cal.graph, schedule(cal.graph)):
        path = tmp_path / "g.h5"
        save_integer_graph(g, path)
        back = load_integer_graph(path)
        assert_same_integer_graph(g, back)
        back.validate()


def test_hdf5_round_trip_of_a_hand_graph_with_delays_and_relays(tmp_path):
    g = tiny_integer_graph(**{"p->q.delay": 5, "q.latency": 7, "p.bias_mant": np.arange(18).reshape(2, 3, 3) - 9,
                              "p.bias_exp": np.arange(18).reshape(2, 3, 3) % 8})
    g.populations["q"].kind, g.populations["q"].op, g.populations["q"].block = "relay", "relay", "blk"
    g.reset_interval = 8
    save_integer_graph(g, tmp_path / "h.h5")
    back = load_integer_graph(tmp_path / "h.h5")
    assert_same_integer_graph(g, back)
    assert back.populations["p"].op is None and back.populations["p"].block is None
    assert back.meta == {"k": [1, 2]}


def test_hdf5_never_silently_changes_an_out_of_range_value(tmp_path):
    """Saving an invalid graph must either be refused or keep the values (so validate() still sees them)."""
    g = tiny_integer_graph(**{"p->q.id.weight": np.full((2, 3, 3), 65536 + 7), "p.bias_exp": np.full((2, 3, 3), 259)})
    try:
        save_integer_graph(g, tmp_path / "bad.h5")
    except RangeError:
        return
    back = load_integer_graph(tmp_path / "bad.h5")
    assert np.all(back.populations["p"].bias_exp == 259)
    assert np.all(next(s for s in back.synapses if s.name == "p->q.id").weight == 65536 + 7)


def test_validate_refuses_unknown_kinds_and_dangling_synapses():
    g = tiny_integer_graph(**{"q.kind": "compartment"})
    with pytest.raises(UnsupportedModelError, match="population q: unknown kind 'compartment'"):
        g.validate()
    g = tiny_integer_graph(**{"p->q.kind": "sparse_conv"})
    with pytest.raises(UnsupportedModelError, match="synapse p->q: unknown kind"):
        g.validate()
    g = tiny_integer_graph(**{"p->q.src": "nowhere"})
    with pytest.raises(UnsupportedModelError, match="synapse p->q refers to unknown population nowhere"):
        g.validate()


def test_calibration_of_the_nir_file_equals_calibration_in_memory(tmp_path):
    """Writing the NIR graph to a file and reading it back changes nothing downstream (node order may
    differ after the round trip; populations stay in a topological order)."""
    from xoresnet.nir.export import read_nir, write_nir
    cfg = small_config(block=BlockSpec("prev_input", "xor", "spike"), neuron=NeuronSpec(du=3000 / 4096, dv=700 / 4096))
    graph = export_nir(firing_model(cfg, seed=9))
    write_nir(graph, tmp_path / "m.nir")
    pixels = random_pixels(4, cfg, seed=3)
    a = calibrate_nir(graph, pixels)
    b = calibrate_nir(read_nir(tmp_path / "m.nir"), pixels)
    assert a.spec.vth_mant == b.spec.vth_mant
    b.graph.populations = {n: b.graph.populations[n] for n in a.graph.populations}
    order = {s.name: i for i, s in enumerate(a.graph.synapses)}
    b.graph.synapses.sort(key=lambda s: order[s.name])
    assert_same_integer_graph(a.graph, b.graph, check_meta=False)


def test_loading_something_else_is_refused(tmp_path):
    bad = tmp_path / "not.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(UnsupportedModelError):
        load_integer_graph(bad)
    import h5py
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(UnsupportedModelError, match="not an xoresnet integer graph"):
        load_integer_graph(tmp_path / "other.h5")
    g = tiny_integer_graph()
    save_integer_graph(g, tmp_path / "v.h5")
    with h5py.File(tmp_path / "v.h5", "a") as f:
        f.attrs["version"] = 99
    with pytest.raises(UnsupportedModelError, match="version 99"):
        load_integer_graph(tmp_path / "v.h5")


# ---------------------------------------------------------------------- the scale search uses the calibration data

def two_channel_graph() -> FloatGraph:
    """input (2, 1, 1) -> 1x1 conv with weights 1.0 (channel 0) and 0.0624 (channel 1) per pixel unit
    -> population "p" (1, 1, 1), vth 1, du 1, dv 0.5 -> readout. Levels 16, T = 2."""
    shape = (1, 1, 1)
    pops = {"p": FloatPopulation("p", shape, "neuron", du_fraction=1.0, dv_fraction=0.5, vth=1.0, bias=np.zeros(shape))}
    syns = [FloatSynapse("c", INPUT, "p", "conv", np.array([1.0, 0.0624]).reshape(1, 2, 1, 1), graded=True),
            FloatSynapse("readout:p", "p", READOUT, "dense", np.ones((2, 1)))]
    return FloatGraph((2, 1, 1), 16, 2, pops, syns, np.zeros(2))


def test_candidate_mantissas_span_the_top_eighth_octave():
    from calibration.quantize import SEARCH_SPAN, candidate_mantissas
    assert candidate_mantissas(255, 1) == [255] and candidate_mantissas(0, 32) == []
    assert candidate_mantissas(255, 32) == list(range(255, 233, -1))  # 255 * 2^-1/8 = 233.8: all 22 of them
    grid = candidate_mantissas(1706, 32)
    assert grid[0] == 1706 and len(grid) == 32 and grid == sorted(set(grid), reverse=True)
    assert grid[-1] == int(np.ceil(1706 * 2 ** -SEARCH_SPAN))


def test_calibration_data_choose_a_scale_below_the_range_limit():
    """The weight 1.0 bounds the scale: vth_mant <= 255 (1.0 * 255 = 255, excitatory). Only the
    weight 0.0624 rounds: at 255 it is 15.91 -> 16 (error 0.088 / 255 of a pixel unit), at 240 it
    is 14.976 -> 15 (error 0.024 / 240), the smallest relative error among 234..255. Samples that
    use channel 1 (pixel 16) therefore choose 240; samples that use only channel 0 (exact at every
    scale) keep 255, and so does a calibration without samples.
    With pixel 16 on channel 1 the float current is 0.9984 < vth at step 1 (no spike) and the
    membrane 0.4992 + 0.9984 > vth at step 2. At 240 the integer input is 15 * 16 = 240, not above
    vth_mant 240: no spike, then a spike, as in float. At 255 it is 16 * 16 = 256 > 255: a spike at
    step 1 that the float model does not have."""
    g = two_channel_graph()
    on_1 = torch.tensor([0, 16]).view(1, 2, 1, 1)
    on_0 = torch.tensor([16, 0]).view(1, 2, 1, 1)
    float_spikes = {"p": torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1)}
    cal = calibrate(g, on_1, float_spikes)
    entry = cal.report["populations"]["p"]
    assert cal.graph.populations["p"].vth_mant == cal.spec.vth_mant["p"] == entry["vth_mant"] == 240
    assert entry["max_vth_mant"] == 255 and entry["binding_limit"] == "weights of c"
    assert entry["scale_bound"] == pytest.approx(255.0)
    rows = {r["vth_mant"]: r["current_rmse_vth"] for r in entry["candidates"]}
    assert sorted(rows) == list(range(234, 256))
    assert rows[240] == min(rows.values()) < rows[255]
    assert rows[255] == pytest.approx(16 * (16 / 255 - 0.0624))  # |16 / 255 - 0.0624| per pixel unit, 16 units
    assert "smallest current error on 1 calibration samples" in entry["choice"]
    assert entry["spike_mismatch"] == 0.0 and entry["current_rmse_vth"] == rows[240]
    [c] = cal.graph.incoming("p")
    assert c.weight.ravel().tolist() == [240, 15]
    at_limit = calibrate(g, on_1, float_spikes, spec=QuantSpec({"p": 255})).report["populations"]["p"]
    assert at_limit["spike_mismatch"] == 0.5  # the extra spike at step 1

    assert calibrate(g, on_0, {"p": torch.zeros(2, 1, 1, 1, 1)}).graph.populations["p"].vth_mant == 255
    blind = calibrate(g, on_1, None)
    assert blind.graph.populations["p"].vth_mant == 255 and blind.report["calibration_samples"] == 0
    assert blind.report["populations"]["p"]["choice"] == "the largest scale that fits (no calibration samples)"


def test_calibration_report_has_the_per_population_fields(calibrated):
    """Every neuron population: all bounds and the binding one, the candidates tried with their
    scores, the choice and why, and the quantization error (weights, current, spikes)."""
    _, _, cal, pixels, _ = calibrated
    report = cal.report
    assert report["calibration_samples"] == len(pixels) and not report["spec_given"]
    for name, e in report["populations"].items():
        p = cal.graph.populations[name]
        assert e["vth_mant"] == p.vth_mant and e["scale"] == p.scale
        assert 0.0 <= e["spike_mismatch"] <= 1.0 and e["current_rmse_vth"] >= 0.0
        if e["kind"] == "gate":
            assert e["current_rmse_vth"] == 0.0 and e["weight_rmse_rel"] == 0.0  # integer weights, exact
            continue
        assert e["binding_limit"] in e["bounds"] and e["scale_bound"] == min(e["bounds"].values())
        assert e["max_vth_mant"] == int(np.floor(cal.graph.populations[name].vth_mant / p.scale * e["scale_bound"] + 1e-9))
        scored = [r for r in e["candidates"] if "current_rmse_vth" in r]
        assert len(scored) > 1 and all(r["vth_mant"] <= e["max_vth_mant"] for r in e["candidates"])
        best = min(scored, key=lambda r: (r["current_rmse_vth"], -r["vth_mant"]))
        assert best["vth_mant"] == e["vth_mant"] and best["current_rmse_vth"] == e["current_rmse_vth"]
        # small populations are scored on every row: the score is the exact drive error
        assert e["scored_rows"] == e["total_rows"] == len(pixels) * np.prod(p.shape[1:]) * cal.graph.timesteps
        assert "smallest current error" in e["choice"]
        assert 0.0 < e["weight_rmse_rel"] < 0.05


def _qat_checkpoint_path():
    from conftest import REPO
    path = REPO / "models" / "xoresnet-digits-qat.pt"
    if not path.is_file():
        pytest.skip("no bundled QAT digits model")
    return path


def test_calib_samples_choose_the_scales_of_the_digits_model(digits_model_path):
    """``--calib-samples N`` (``deploy.pipeline``): N training images are scored, none keeps the largest
    scales; a quantization-aware trained checkpoint keeps its scales whatever the samples."""
    from deploy.pipeline import calibrate_checkpoint, calibration_pixels
    from xoresnet.checkpoint import load_model

    model, ckpt = load_model(digits_model_path)
    pixels = calibration_pixels("digits", None, 8)
    assert pixels.shape[0] == 8 and calibration_pixels("digits", None, 0).shape[0] == 0
    none = calibrate_checkpoint(model, ckpt, pixels[:0])
    some = calibrate_checkpoint(model, ckpt, pixels)
    assert some.report["calibration_samples"] == some.spec.meta["calibration_samples"] == 8
    assert none.report["calibration_samples"] == 0
    for name, e in none.report["populations"].items():
        if e["kind"] == "neuron":
            assert e["vth_mant"] == e["max_vth_mant"] and len(e["candidates"]) == 1
            s = some.report["populations"][name]
            assert s["max_vth_mant"] == e["max_vth_mant"] and len(s["candidates"]) > 1
            assert "on 8 calibration samples" in s["choice"]

    qat_model, qat_ckpt = load_model(_qat_checkpoint_path())
    trained = QuantSpec.from_dict(qat_ckpt.quant).vth_mant
    for n in (0, 8):
        cal = calibrate_checkpoint(qat_model, qat_ckpt, pixels[:n])
        assert cal.spec.vth_mant == trained and cal.report["spec_given"]
        assert all(len(e["candidates"]) == 1 for e in cal.report["populations"].values() if e["kind"] == "neuron")


# ---------------------------------------------------------------------- fast calibration: quantizer, scorer, chunks

def reference_quantization(pop, syns, levels, vth_mant):
    """The per-scale quantization written out plainly (the definition PopulationQuantizer must equal):
    quantize_bias on every neuron, quantize_weight on every scaled matrix, worst_case_current on the
    integer weights, residual w_int 2^exp - scale w in float64."""
    from calibration import fixed_point as fx
    from calibration.quantize import current_limit, max_input, quantize_bias, quantize_weight, worst_case_current
    scale = vth_mant / pop.vth
    mant, exp = quantize_bias(torch.as_tensor(pop.bias * scale * 64), what=f"population {pop.name}")
    weights = []
    for s in syns:
        q, e = quantize_weight(torch.as_tensor(s.weight) * scale, allow_exp=s.kind != "conv",
                               what=f"synapse {s.name} into {pop.name}")
        weights.append((q, e, (q * 2.0 ** e - torch.as_tensor(s.weight) * scale).to(torch.float32)))
    worst = worst_case_current([(q * (1 << e), s.kind, max_input(s, levels)) for s, (q, e, _) in zip(syns, weights)],
                               pop.shape)
    if max(worst[0], -worst[1]) > current_limit(fx.decay_codes(pop.du_fraction, pop.dv_fraction)[0]):
        raise RangeError(f"population {pop.name}: a worst-case input current of {max(worst[0], -worst[1]):.0f} ")
    return mant, exp, weights, worst


@pytest.mark.parametrize("seed", range(6))
def test_population_quantizer_equals_the_plain_definition(seed):
    """Random conv / identity / dense synapses of every sign mode, biases that need exponents, scales
    at and beyond the limits: the same integers, exponents, worst-case currents, residuals (bit for
    bit) and the same refusals."""
    from calibration.quantize import PopulationQuantizer
    g = torch.Generator().manual_seed(seed)
    shape = (6, 3, 3)

    def rand(*size, sign=0):
        w = torch.randn(*size, generator=g, dtype=torch.float64) * 0.05
        return (w.abs() * sign if sign else w).numpy()

    signs = [(-1, 0, 1)[(seed + k) % 3] for k in range(3)]
    syns = [FloatSynapse("c", INPUT, "p", "conv", rand(6, 2, 3, 3, sign=signs[0]) / 16, padding=(1, 1), graded=True),
            FloatSynapse("i", "a", "p", "identity", rand(*shape, sign=signs[1]) * 40),
            FloatSynapse("d", "b", "p", "dense", rand(54, 10, sign=signs[2]))]
    bias = rand(*shape) * [1.0, 1e2, 1e3][seed % 3]
    bias[0, 0, 0] = bias[1, 1, 1]  # repeated values
    pop = FloatPopulation("p", shape, "neuron", du_fraction=0.5, dv_fraction=0.25, vth=0.7, bias=bias)
    quantizer = PopulationQuantizer(pop, syns, 16)
    for vth_mant in (1, 77, 1000, 5000, 40000, 131071):
        try:
            mant, exp, weights, worst = reference_quantization(pop, syns, 16, vth_mant)
        except RangeError as e:
            with pytest.raises(RangeError) as got:
                quantizer.quantize(vth_mant)
            assert str(got.value).startswith(str(e))
            continue
        for integers in (True, False):
            q = quantizer.quantize(vth_mant, integers=integers)
            assert np.array_equal(q.population.bias_mant, mant.long().numpy())
            assert np.array_equal(q.population.bias_exp, exp.long().numpy())
            assert q.worst_current == worst
            assert len(q.synapses) == (len(syns) if integers else 0)
            for k, (w, e, r) in enumerate(weights):
                assert torch.equal(q.residuals[k], r)
                if integers:
                    assert np.array_equal(q.synapses[k].weight, w.long().numpy()) and q.synapses[k].weight_exp == e


def test_packed_spikes_round_trip():
    from calibration.drive import PackedSpikes
    g = torch.Generator().manual_seed(3)
    for shape in [(5, 3, 3), (8,), (1, 1, 1)]:
        s = torch.rand((3, 7) + shape, generator=g) < 0.3
        p = PackedSpikes.pack(s.float() * 2)  # any non-zero value is a spike
        assert p.bits.dtype == torch.uint8 and p.bits.shape == (3, 7, -(-int(np.prod(shape)) // 8))
        assert torch.equal(p.unpack(), s) and torch.equal(p.unpack(2, 5), s[:, 2:5])
        room = PackedSpikes.empty(3, 7, shape)
        room.store(4, s[:, 4:])
        room.store(0, s[:, :4])
        assert torch.equal(room.unpack(), s)


def test_stratified_rows_take_one_row_per_stratum():
    from calibration.drive import stratified_rows
    assert torch.equal(stratified_rows(10, 10), torch.arange(10))
    for n, m in [(1000, 7), (1000, 999), (17, 5), (262144, 1820)]:
        rows = stratified_rows(n, m)
        assert len(rows) == m and bool((rows[1:] > rows[:-1]).all()) and 0 <= int(rows[0]) and int(rows[-1]) < n
        edges = torch.floor(torch.arange(m + 1, dtype=torch.float64) * n / m).long()
        assert bool(((rows >= edges[:-1]) & (rows < edges[1:])).all())


def scorer_case(seed=0):
    """A population (4, 6, 6) fed by graded pixels (3x3 conv, stride 2, padding 1, from 12x12), a
    grouped conv (groups 2), an identity and a dense synapse (from 10 neurons) from spiking sources,
    T = 3, B = 5; its quantization at one scale; the samples."""
    from calibration.drive import PackedSpikes, PopulationSamples
    from calibration.quantize import quantize_population
    g = torch.Generator().manual_seed(seed)
    shape, T, B = (4, 6, 6), 3, 5
    syns = [FloatSynapse("px", INPUT, "p", "conv", torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64).numpy()
                         / 40, stride=(2, 2), padding=(1, 1), graded=True),
            FloatSynapse("gc", "a", "p", "conv", torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64).numpy() / 30,
                         padding=(1, 1), groups=2),
            FloatSynapse("id", "b", "p", "identity", torch.rand(shape, generator=g, dtype=torch.float64).numpy()),
            FloatSynapse("dn", "c", "p", "dense", torch.randn(144, 10, generator=g, dtype=torch.float64).numpy() / 9)]
    pop = FloatPopulation("p", shape, "neuron", du_fraction=1.0, dv_fraction=0.5, vth=1.0,
                          bias=torch.randn(shape, generator=g, dtype=torch.float64).numpy() / 10)
    sources = [torch.randint(0, 17, (B, 1, 12, 12), generator=g),
               PackedSpikes.pack(torch.rand((T, B, 4, 6, 6), generator=g) < 0.3),
               PackedSpikes.pack(torch.rand((T, B) + shape, generator=g) < 0.2),
               PackedSpikes.pack(torch.rand((T, B, 10), generator=g) < 0.4)]
    samples = PopulationSamples(sources, PackedSpikes.pack(torch.rand((T, B) + shape, generator=g) < 0.2))
    return pop, syns, samples, quantize_population(pop, syns, 16, 1000)


def full_drive_error(pop, syns, samples, q):
    """The drive error of every neuron-step, ``[T, B, *shape]`` (float64, from the definition)."""
    from calibration.drive import bias_residual, synapse_drive
    T, B = samples.timesteps, samples.images
    err = bias_residual(q.population, pop).expand((T, B) + pop.shape).clone()
    for i, (s, w_int) in enumerate(zip(syns, q.synapses)):
        x = samples.source(i, 0, B)
        r = replace(s, weight=w_int.weight * 2.0 ** w_int.weight_exp - s.weight * q.population.scale)
        if s.src == INPUT:
            err += synapse_drive(r, x.to(torch.float64)).view((1, B) + pop.shape)
        else:
            err += synapse_drive(r, x.flatten(0, 1).to(torch.float64)).view((T, B) + pop.shape)
    return err


def test_sampled_rows_and_mean_frame_are_the_drive_error_there():
    """Every gathered receptive field (stride, padding, groups, graded pixels, identity): the sampled
    rows' errors are the full drive error at those (timestep, image, position), and the mean rows are
    each neuron's error averaged over all T * B frames."""
    from calibration.drive import CandidateScorer
    pop, syns, samples, q = scorer_case()
    full = full_drive_error(pop, syns, samples, q)
    T, B, (C, H, W) = samples.timesteps, samples.images, pop.shape
    scorer = CandidateScorer(pop, syns, samples, score_macs=40 * 1552)  # multiply-adds per row: 4 x 9 + 4 x 2 x 9 + 4 + 144 x 10
    assert not scorer.exact and scorer.total_rows == T * B * H * W and scorer.rows == 40
    mean, rows = scorer.sampled_errors(q.population, q.residuals)
    assert torch.allclose(mean.double(), full.mean((0, 1)).reshape(C, H * W).T, atol=1e-4)
    frame, pos = scorer.sampled // (H * W), scorer.sampled % (H * W)
    expected = full.reshape(T * B, C, H * W)[frame, :, pos]
    assert torch.allclose(rows.double(), expected, atol=1e-4)


def test_sampled_score_estimates_the_exact_drive_error():
    """All rows: the score is the RMS of the drive error (the definition). A quarter of the rows:
    close to it; with inputs that do not change from frame to frame, the deviations vanish and the
    exact per-neuron mean makes the estimate exact whatever the rows."""
    from calibration.drive import CandidateScorer, PackedSpikes, PopulationSamples
    pop, syns, samples, q = scorer_case(seed=1)
    rms = float(full_drive_error(pop, syns, samples, q).square().mean().sqrt()) / (q.population.scale * pop.vth)
    exact = CandidateScorer(pop, syns, samples, score_macs=1 << 40)
    assert exact.exact and exact.score(q.population, q.residuals) == pytest.approx(rms, rel=1e-5)
    sampled = CandidateScorer(pop, syns, samples, score_macs=exact.total_rows * 1552 // 4)
    assert sampled.rows == exact.total_rows // 4
    assert sampled.score(q.population, q.residuals) == pytest.approx(rms, rel=0.05)
    still = PopulationSamples([samples.sources[0][:1].expand(5, -1, -1, -1)] +
                              [PackedSpikes.pack(x[:1, :1].expand_as(x)) for x in
                               (samples.source(i, 0, 5) for i in (1, 2, 3))], samples.float_spikes)
    rms = float(full_drive_error(pop, syns, still, q).square().mean().sqrt()) / (q.population.scale * pop.vth)
    assert CandidateScorer(pop, syns, still, score_macs=3 * 1552).score(q.population, q.residuals) == \
        pytest.approx(rms, rel=1e-5)


def test_a_sampled_search_says_so_and_takes_its_smallest_score():
    cfg = CASES["xor-or"]
    graph = export_nir(firing_model(cfg, seed=5))
    pixels = random_pixels(4, cfg, seed=6)
    cal = calibrate_nir(graph, pixels, score_macs=1 << 12)
    sampled = 0
    for name, e in cal.report["populations"].items():
        if e["kind"] != "neuron":
            continue
        scored = [r for r in e["candidates"] if "current_rmse_vth" in r]
        best = min(scored, key=lambda r: (r["current_rmse_vth"], -r["vth_mant"]))
        assert best["vth_mant"] == e["vth_mant"] and e["scored_rows"] <= e["total_rows"]
        if e["scored_rows"] < e["total_rows"]:
            sampled += 1
            assert f"sampled on {e['scored_rows']} of {e['total_rows']} rows" in e["choice"]
        assert best["current_rmse_vth"] == e["current_rmse_vth"]  # the chosen scale's score (here an estimate)
    assert sampled >= 3 and cal.report["score_macs"] == 1 << 12


def sampled_and_exact_choices(score_macs: int) -> list[tuple[str, int, int, int, int]]:
    """Per neuron population of a small firing network (8/16 channels, 16x16, T=4, 16 random images):
    ``(name, exact choice, sampled choice, rows scored, all rows)``, the threshold mantissas that
    :func:`~calibration.quantize.choose_scale` picks with the exact drive error (every row) and with
    the sampled score at ``score_macs``, on the same inputs (the integer spikes of the exact choices
    upstream)."""
    from calibration.drive import CandidateScorer, PopulationSamples, measure
    from calibration.quantize import DEFAULT_CANDIDATES, choose_scale, float_trace, quantize_population

    cfg = small_config(base_width=8, input_size=16, timesteps=4)
    graph = export_nir(firing_model(cfg, seed=0))
    pixels = random_pixels(16, cfg, seed=1)
    fg = nir_to_float_graph(graph)
    trace = float_trace(graph, fg, pixels)
    spikes, out = {}, []
    for name, pop in fg.populations.items():
        syns = fg.incoming(name)
        view = PopulationSamples([pixels if s.src == INPUT else spikes[s.src] for s in syns], trace[name])
        if pop.kind == "gate":
            q = quantize_population(pop, syns, fg.input_levels, None)
        else:
            q, _ = choose_scale(pop, syns, fg.input_levels, CandidateScorer(pop, syns, view, 1 << 62), fixed=None,
                                candidates=DEFAULT_CANDIDATES)
            sampled = CandidateScorer(pop, syns, view, score_macs)
            fast, _ = choose_scale(pop, syns, fg.input_levels, sampled, fixed=None, candidates=DEFAULT_CANDIDATES)
            out.append((name, q.population.vth_mant, fast.population.vth_mant, sampled.rows, sampled.total_rows))
        spikes[name] = measure(q.population, q.synapses, view, keep_spikes=True).spikes
    return out


def test_the_sampled_score_chooses_the_exact_scale():
    """Where the exact drive error is computable, the sampled score (here on 1/9 to 8/9 of the rows
    of each population) picks the very scale the exact one picks, in every population."""
    choices = sampled_and_exact_choices(score_macs=1 << 20)
    assert len(choices) == 7 and all(rows < total for _, _, _, rows, total in choices)  # all sampled
    assert [(name, exact) for name, exact, _, _, _ in choices] == [(name, fast) for name, _, fast, _, _ in choices]


def test_the_choice_comparison_can_fail():
    """The comparison above detects a scorer that chooses differently: at a budget far too small (a few
    rows per population) the sampled choice leaves the exact one in some population."""
    choices = sampled_and_exact_choices(score_macs=1 << 14)
    assert any(exact != fast for _, exact, fast, _, _ in choices)


def test_chunks_of_images_change_nothing(monkeypatch):
    """The float trace and the exact pass in chunks of one image: the same spikes, errors, choices."""
    import calibration.drive as drive
    cfg = CASES["spiking-resnet-84"]
    graph = export_nir(firing_model(cfg, seed=5))
    pixels = random_pixels(3, cfg, seed=6)
    whole = calibrate_nir(graph, pixels)
    monkeypatch.setattr(drive, "CHUNK_NEURON_STEPS", 1)
    assert drive.image_chunks(3, 10) == [(0, 1), (1, 2), (2, 3)]
    chunked = calibrate_nir(graph, pixels)
    assert chunked.spec.vth_mant == whole.spec.vth_mant
    for name, e in whole.report["populations"].items():
        c = chunked.report["populations"][name]
        assert c["spike_mismatch"] == e["spike_mismatch"]
        assert c["current_rmse_vth"] == pytest.approx(e["current_rmse_vth"], rel=1e-6)  # float32 convolutions
