"""hw_targets: targets and dispatch, design rules and packing, statistics, energy (reports: test_report.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Population, Synapse
from calibration.reference import ZeroDelayResult
from deploy.dispatch import run_on_hardware
from hw_targets import TARGETS, get_target
from hw_targets.base import NoHardwareError, UnknownTargetError
from hw_targets.energy import EnergyTable, ann_macs, estimate_energy
from hw_targets.loihi2 import missing_loihi2_modules
from hw_targets.connectivity import synapse_connectivity
from hw_targets.design_rules import check_design_rules, require_design_rules
from calibration.fan_in import InputRange
from hw_targets.stats import StatsAccumulator
from xoresnet.errors import DesignRuleError, DispatchUnavailableError


# ---------------------------------------------------------------------- hand-made graphs

def pop(name: str, shape: tuple[int, ...], kind: str = "neuron", **kw) -> Population:
    z = np.zeros(shape, np.int64)
    return Population(name, tuple(shape), du_code=4095, dv_code=0, vth_mant=10, bias_mant=z, bias_exp=z.copy(), kind=kind, **kw)


def make_graph(pops: list[Population], syns: list[Synapse], *, input_shape=(1, 4, 4), T: int = 2, K: int = 2,
               P: int = 2, levels: int = 16) -> IntegerGraph:
    return IntegerGraph(tuple(input_shape), levels, T, {p.name: p for p in pops}, syns, np.zeros(K, np.int64), 1.0,
                        reset_interval=P)


def dense(name: str, src: str, dst: str, w, **kw) -> Synapse:
    return Synapse(name, src, dst, "dense", np.asarray(w, np.int64), **kw)


def identity(name: str, src: str, dst: str, shape, value: int = 1, **kw) -> Synapse:
    return Synapse(name, src, dst, "identity", np.full(shape, value, np.int64), **kw)


def two_layer_graph(**syn_kw) -> IntegerGraph:
    """input (1,4,4) -> a (16,) dense -> b (16,) identity (with ``syn_kw``) -> readout."""
    return make_graph(
        [pop("a", (16,)), pop("b", (16,))],
        [dense("in->a", INPUT, "a", np.eye(16, dtype=np.int64) * 2, graded=True),
         identity("a->b", "a", "b", (16,), **syn_kw),
         dense("readout:b", "b", READOUT, np.ones((2, 16)))])


# ---------------------------------------------------------------------- targets, dispatch

def test_registry_and_unknown_target():
    assert get_target().name == "loihi2"
    assert set(TARGETS) >= {"loihi2", "lava-sim"}
    with pytest.raises(UnknownTargetError) as e:
        get_target("tpu9000")
    assert e.value.exit_code == 2 and "tpu9000" in str(e.value) and "\n" not in str(e.value)
    try:  # onnx is written elsewhere: either registered by its module or a clear "not available yet"
        assert get_target("onnx").name == "onnx"
    except UnknownTargetError as e:
        assert "onnx" in str(e)


def test_every_limit_has_source_and_evidence_grade():
    from calibration import loihi2_limits

    for t in TARGETS.values():
        for name, lim in t.limits.items():
            assert lim.name == name and lim.source and lim.evidence in loihi2_limits.EVIDENCE
            assert lim.estimate == (lim.evidence in ("INFER", "MEM"))
    lim = get_target("loihi2").limits
    assert lim["cores_per_chip"].value == 120 and "NUM_VIRTUAL_CORES_L3" in lim["cores_per_chip"].source
    assert lim["delay_max"].value == 62 and lim["weight_bits"].value == 8
    assert lim["synmem_units_per_core"].value == 12000 and lim["axon_in_units_per_core"].value == 16000
    assert lim["axon_in_units_per_core"].estimate and not lim["delay_max"].estimate
    assert [s.chips for s in get_target("loihi2").systems] == [1, 8, 1152]
    # one home per limit: the target's limits are calibration's objects, which IntegerGraph.validate reads
    assert lim["delay_max"] is loihi2_limits.DELAY and lim == loihi2_limits.LIMITS
    g = two_layer_graph(delay=loihi2_limits.DELAY_MAX + 1)
    with pytest.raises(Exception, match=f"delay = {loihi2_limits.DELAY_MAX + 1} is outside"):
        g.validate()


def test_loihi2_dispatch_unavailable_names_missing_modules(tmp_path):
    missing = missing_loihi2_modules()
    if not missing:
        pytest.skip("lava-loihi is installed here")
    with pytest.raises(DispatchUnavailableError) as e:
        run_on_hardware(get_target("loihi2"), tmp_path)
    msg = str(e.value)
    assert e.value.exit_code == 7 and "\n" not in msg
    assert "lava.magma.core.model.nc.model" in msg and "nxcore" in msg
    assert "lava-loihi" in msg and "INRC" in msg
    ok, note = get_target("loihi2").dispatch_status()
    assert not ok and "lava-loihi" in note


def test_lava_sim_has_no_hardware(tmp_path):
    with pytest.raises(NoHardwareError) as e:
        run_on_hardware(get_target("lava-sim"), tmp_path)
    assert isinstance(e.value, DispatchUnavailableError) and e.value.exit_code == 7
    assert "no hardware" in str(e.value) and "lava-sim" in str(e.value)


# ---------------------------------------------------------------------- connectivity

def conv(name, src, dst, w, stride=(1, 1), padding=(1, 1), groups=1) -> Synapse:
    return Synapse(name, src, dst, "conv", np.asarray(w, np.int64), stride=stride, padding=padding, groups=groups)


def test_conv_synapse_count_by_hand():
    # 3x3, padding 1, stride 1 on 4x4, 1 -> 1 channel: per axis 3*4 - 2 = 10 (source, target) pairs,
    # so 10 * 10 = 100 = 16 * 9 - 44 border losses; corners have 4 inputs, edges 6, inside 9.
    g = make_graph([pop("a", (1, 4, 4)), pop("b", (1, 4, 4))], [conv("c", "a", "b", np.ones((1, 1, 3, 3)))])
    c = synapse_connectivity(g, g.synapses[0])
    assert c.count == 100 == 16 * 9 - 44
    fan_in = c.fan_in.reshape(4, 4)
    assert fan_in[0, 0] == 4 and fan_in[0, 1] == 6 and fan_in[1, 1] == 9
    assert np.array_equal(c.fan_out, c.fan_in)  # symmetric kernel and padding
    # a zero center tap removes one synapse per output neuron
    w = np.ones((1, 1, 3, 3))
    w[0, 0, 1, 1] = 0
    assert synapse_connectivity(g, conv("c", "a", "b", w)).count == 100 - 16
    # stride 2: outputs (0,0): 2x2 taps, (0,1) and (1,0): 2x3, (1,1): 3x3 -> 4 + 6 + 6 + 9 = 25
    g2 = make_graph([pop("a", (1, 4, 4)), pop("b", (1, 2, 2))],
                    [conv("c", "a", "b", np.ones((1, 1, 3, 3)), stride=(2, 2))])
    c2 = synapse_connectivity(g2, g2.synapses[0])
    assert c2.count == 25 and c2.fan_out.sum() == 25 and c2.fan_out.shape == (16,)
    assert c2.fan_out.reshape(4, 4)[3, 3] == 1  # only output (1,1) reaches the last input
    # no padding: 2x2 outputs x 9; groups=2 on 2 channels: twice the single-channel count
    g3 = make_graph([pop("a", (1, 4, 4)), pop("b", (1, 2, 2))],
                    [conv("c", "a", "b", np.ones((1, 1, 3, 3)), padding=(0, 0))])
    assert synapse_connectivity(g3, g3.synapses[0]).count == 36
    g4 = make_graph([pop("a", (2, 4, 4)), pop("b", (2, 4, 4))], [conv("c", "a", "b", np.ones((2, 1, 3, 3)), groups=2)])
    assert synapse_connectivity(g4, g4.synapses[0]).count == 200


@pytest.mark.parametrize("seed", range(6))
def test_conv_output_routes_equal_the_full_transposed_convolution(seed):
    """Output routes of every source tile of a conv (destination tiles whose receptive-field box
    overlaps it, counted per axis) == the destination tiles that the transposed convolution of each
    destination tile's mask really reaches: strides, padding, groups and uneven tiles."""
    from hw_targets.packing import LayerSpec, conv_routes, grid_tiling

    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 2]))
    c_in, c_out = 2 * int(rng.integers(1, 4)), 2 * int(rng.integers(1, 4))
    k, stride, padding = int(rng.choice([1, 3])), int(rng.choice([1, 2])), int(rng.integers(0, 2))
    h, w = int(rng.integers(4, 9)), int(rng.integers(4, 9))
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    weight = np.ones((c_out, c_in // groups, k, k), np.int64) * 2
    syn = conv("c", "a", "b", weight, stride=(stride,) * 2, padding=(padding,) * 2, groups=groups)
    src = grid_tiling(LayerSpec("a", "neuron", (c_in, h, w)), *(int(rng.integers(1, n + 1)) for n in (w, h, c_in)))
    dst = grid_tiling(LayerSpec("b", "neuron", (c_out, ho, wo)), *(int(rng.integers(1, n + 1)) for n in (wo, ho, c_out)))
    owner = np.zeros((c_in, h, w), np.int64)  # source tile of every source neuron
    for i, t in enumerate(src.tiles):
        (c0, c1), (y0, y1), (x0, x1) = t.box
        owner[c0:c1, y0:y1, x0:x1] = i
    ind = torch.ones_like(torch.as_tensor(weight, dtype=torch.float64))
    out_pad = (h - ((ho - 1) * stride - 2 * padding + k), w - ((wo - 1) * stride - 2 * padding + k))
    truth = np.zeros(len(src.tiles))
    for t in dst.tiles:
        (c0, c1), (y0, y1), (x0, x1) = t.box
        mask = torch.zeros((1, c_out, ho, wo), dtype=torch.float64)
        mask[0, c0:c1, y0:y1, x0:x1] = 1
        hit = torch.nn.functional.conv_transpose2d(mask, ind, stride=stride, padding=padding, groups=groups,
                                                   output_padding=out_pad)[0].numpy() > 0
        truth[np.unique(owner[hit])] += 1
    assert np.array_equal(conv_routes(syn, src, dst), truth)


# ---------------------------------------------------------------------- design rules

def _raises_drc(graph, *words, **kw):
    r = check_design_rules(graph, **kw)
    assert not r.passed
    with pytest.raises(DesignRuleError) as e:
        require_design_rules(r)
    msg = str(e.value)
    assert e.value.exit_code == 4 and "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    return r


def test_drc_delay_70():
    _raises_drc(two_layer_graph(delay=70), "layer b", "delay_max", "70", "62")


def test_drc_weight_bits_and_odd_mixed_weight():
    g = two_layer_graph(value=300)  # excitatory 300 needs 9 bits
    r = _raises_drc(g, "layer b", "weight bits", "9", "weight_bits")
    assert r.layer("b").weight_bits == 9
    w = np.ones(16, np.int64) * 4
    w[0], w[1] = -6, 3  # mixed sign with an odd value
    g = two_layer_graph()
    g.synapses[1].weight = w
    _raises_drc(g, "layer b", "odd")


def test_drc_fan_in_over_a_core_is_split_not_refused_and_near_limit_warning():
    # 5000 inputs (the old Loihi 1 limit was 4096) fit one core of Loihi 2
    g = make_graph([pop("a", (5000,)), pop("b", (1,))], [dense("a->b", "a", "b", np.ones((1, 5000)))])
    r = require_design_rules(check_design_rules(g))
    assert r.layer("b").fan_in_max == 5000 and r.layer("b").cores == 1 and not r.packing.splits
    # 20000 inputs: one neuron needs 20000 AxonIn units (> 16000) and, one synapse per row, 20000 SynMem
    # units (> 12000): two partial sums of 10000 inputs on a core each, summed on a third; not a violation
    n = 20000
    g = make_graph([pop("a", (n,)), pop("b", (1,))], [dense("a->b", "a", "b", np.ones((1, n)))])
    for target in ("loihi2", "lava-sim"):
        r = require_design_rules(check_design_rules(g, target))
        split = r.packing.splits[0]
        assert split.layer == "b" and split.reason == "axon_in_units_per_core" and split.need == n
        assert [p.inputs for p in split.parts] == [(InputRange("a->b", 0, 10000),), (InputRange("a->b", 10000, n),)]
        assert split.partial_cores == 2 and split.sum_cores == 1 and split.extra_latency == 1
        assert split.payload_bits == 15 and not split.built  # a part's 10000 ones: 14 bits and a sign (<= 24)
        assert r.layer("b").cores == 3 and r.layer("b").fan_in_split
        assert r.packing.num_cores == -(-n // 3584) + 3
        assert any(w.layer == "b" and "fan-in split into 2 partial sums" in w.message for w in r.warnings)
    r = require_design_rules(check_design_rules(two_layer_graph(delay=55)))
    assert any(w.limit == "delay_max" and "b" in w.layer and "89%" in w.message for w in r.warnings)


def test_drc_conv_delay_and_reset_interval():
    g = make_graph([pop("a", (1, 4, 4)), pop("b", (1, 4, 4))], [conv("c", "a", "b", np.ones((1, 1, 3, 3)) * 2)])
    g.synapses[0].delay = 3
    _raises_drc(g, "layer b", "conv")
    g = two_layer_graph()
    g.reset_interval = 6
    _raises_drc(g, "reset interval 6", "power of two")
    g.reset_interval = 0
    r = check_design_rules(g)
    assert r.passed and any("not scheduled" in w.message for w in r.warnings)


def test_drc_population_too_large_for_system():
    n = 129 * 4096  # 148 tiles of 3,584 neurons: more than one chip of 120 cores
    g = make_graph([pop("big", (n,))], [])
    r = _raises_drc(g, "layer big", "148 cores", "Oheo Gulch", "cores_of_oheo-gulch", "NUM_VIRTUAL_CORES_L3",
                    system="oheo-gulch")
    assert r.violations[0].source and r.violations[0].evidence == "CODE"
    r = require_design_rules(check_design_rules(g, system="kapoho-point"))
    assert r.layer("big").cores == 148 and r.packing.chips == 2
    # the CPU simulator is not bound by cores: a warning only
    r = check_design_rules(g, "lava-sim", system="oheo-gulch")
    assert r.passed and any("would not fit Loihi 2" in w.message and "Oheo Gulch" in w.message for w in r.warnings)
    with pytest.raises(UnknownTargetError):
        check_design_rules(g, system="pohoiki")


# ---------------------------------------------------------------------- packing

def test_packing_splits_layers_and_gives_each_its_own_cores():
    # 11,988 neurons: four tiles of at most 3,584; the small populations do not share a core with it
    # (every core of the lava-loihi logs holds one layer's tile)
    g = make_graph([pop("big", (3 * 4096 - 300,)), pop("s1", (100,)), pop("s2", (100,))], [])
    r = check_design_rules(g)
    assert r.layer("big").cores == 4 and r.layer("big").fragments == 4
    assert [t.neurons for t in r.packing.tilings["big"][0].tiles] == [3584, 3584, 3584, 1236]
    assert r.packing.num_cores == 6 and r.packing.chips == 1
    assert all(len(row["layers"]) == 1 for row in r.packing.to_dict()["core_table"])


def test_packing_synaptic_memory_split():
    # 100 neurons x 4000 dense 8-bit synapses, 20 bits each (8 + 12 index bits): a source row of n
    # neurons on a core takes ceil(20 n / 64) units, so 9 neurons (3 units x 4000 rows) per core
    g = make_graph([pop("a", (4000,)), pop("b", (100,))], [dense("a->b", "a", "b", np.full((100, 4000), 255))])
    r = require_design_rules(check_design_rules(g))
    b = r.layer("b")
    assert b.synapses == 400_000 and b.cores == 12 and b.synmem_units_max == 12000
    assert b.synmem_bits == (11 * 12000 + 4000) * 64
    s = r.synapses[0]
    assert s.index_bits == 12 and s.weight_bits == 8 and s.bits_per_synapse == 20
    assert s.synmem_bits == 4000 * 32 * 64  # 100 neurons of a row: ceil(2000 / 64) = 32 units
    assert r.layer("a").cores == 2 and r.layer("a").axons_out_max == 3584  # one route unit per source neuron


def test_packing_200_cores_two_chips():
    g = make_graph([pop("big", (200 * 4096,))], [])
    r = check_design_rules(g)
    assert r.packing.num_cores == 229 and r.packing.chips == 2
    assert r.systems_fit() == ["Kapoho Point", "Hala Point"]
    fits = {s["key"]: s["fits"] for s in r.packing.systems}
    assert fits == {"oheo-gulch": False, "kapoho-point": True, "hala-point": True}
    assert r.passed  # no system asked: it fits the largest


# ---------------------------------------------------------------------- statistics and energy

def hand_network():
    """input (1,2,2) -> a (2,) -> b (1,) -> readout (2); T = 2, one sample with known spikes."""
    g = make_graph([pop("a", (2,)), pop("b", (1,))],
                   [dense("in->a", INPUT, "a", [[2, 0, 4, 6], [0, 0, 0, 8]], graded=True),
                    dense("a->b", "a", "b", [[2, 4]]),
                    dense("readout:b", "b", READOUT, [[2], [4]])],
                   input_shape=(1, 2, 2))
    spikes = {"a": torch.tensor([[[1, 0]], [[1, 1]]], dtype=torch.bool),  # [T, B, 2]: 3 spikes
              "b": torch.tensor([[[1]], [[0]]], dtype=torch.bool)}  # 1 spike
    result = ZeroDelayResult(spikes, torch.zeros((2, 1, 2), dtype=torch.int64))
    pixels = torch.tensor([[[[1, 0], [3, 0]]]])
    return g, result, pixels


def test_statistics_and_energy_by_hand():
    g, result, pixels = hand_network()
    acc = StatsAccumulator(g)
    acc.update(result, pixels, labels=torch.tensor([0]))
    s = acc.summary(float_accuracy=1.0)
    tot = s["totals"]
    # synops: a's neuron 0 fires twice, neuron 1 once, one synapse each into b -> 3; b fires once, 2 readout
    # synapses -> 2; graded input: pixels 0 and 2 are nonzero, fan-out 1 + 1, sent T = 2 times -> 4
    assert tot["synops_per_sample"]["mean"] == 5 and tot["graded_input_ops_per_sample"]["mean"] == 4
    assert tot["spikes_per_sample"]["mean"] == 4 and tot["input_spikes_per_sample"] == 4
    assert tot["neuron_updates_per_sample"] == 6 and tot["active_neuron_updates_per_sample"] == 4
    assert s["layers"][0]["firing_rate"] == 3 / 4 and s["accuracy"]["integer"] == 1.0
    assert s["synops_per_synapse"] == {"in->a": 4.0, "a->b": 3.0, "readout:b": 2.0}
    e = estimate_energy(s, g)
    # Loihi: 5 synops + 4 graded ops at 23.6 pJ, 4 active x 81 + 2 inactive x 52, 8 messages x 1.7 pJ
    expected = 5 * 23.6 + 4 * 23.6 + 4 * 81 + 2 * 52 + 8 * 1.7
    assert expected == pytest.approx(654.0)
    assert e["loihi"]["total_pj"] == pytest.approx(expected)
    assert e["loihi"]["breakdown_pj"]["neuron_updates_inactive"] == pytest.approx(104.0)
    # ANN: dense in->a 2x4 + a->b 2x1 + readout 2x1 = 12 MACs x 4.6 pJ
    assert ann_macs(g)["total"] == 12 and e["ann"]["total_pj"] == pytest.approx(12 * 4.6)
    # SNN-AC: 5 synops x 0.9 pJ + first layer 8 MACs x 4.6 pJ
    assert e["snn_ac"]["total_pj"] == pytest.approx(5 * 0.9 + 8 * 4.6)
    assert any("0 hops" in a for a in e["assumptions"])
    # a user table overrides single figures
    t = EnergyTable.from_dict({"synop": 10, "hops_per_spike": 1})
    e2 = estimate_energy(s, g, t)
    assert e2["loihi"]["breakdown_pj"]["synaptic_ops"] == pytest.approx(50.0)
    assert e2["loihi"]["breakdown_pj"]["spike_messages"] == pytest.approx(8 * (1.7 + 3.0))
    assert EnergyTable.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    with pytest.raises(ValueError):
        EnergyTable.from_dict({"synapse_op": 1})


def test_output_routes_split_a_layer_over_cores():
    """Output routes (AxonMap) share a core's memory with its synapses (``core_memory``: 0.2 x neurons / 4,096 +
    0.8 x (SynMem + routes) / 12,000 <= 1): 3,000 neurons that each feed one dense layer fit one core; the same
    neurons each feeding eight dense layers carry 8 route units apiece, at most 1,717 neurons fit a core, and the
    layer is split over 2 cores, its busiest core's routes and memory reported."""
    def graph(fan_out: int) -> IntegerGraph:
        pops = [pop("a", (3000,))] + [pop(f"d{i}", (1,)) for i in range(fan_out)]
        syns = [dense(f"a->d{i}", "a", f"d{i}", np.ones((1, 3000))) for i in range(fan_out)]
        return make_graph(pops, syns)

    one = require_design_rules(check_design_rules(graph(1))).layer("a")
    assert one.cores == 1 and one.axons_out_max == 3000
    eight = require_design_rules(check_design_rules(graph(8))).layer("a")
    per_core = int(1 / (0.2 / 4096 + 0.8 * 8 / 12000))  # 1,717
    assert eight.cores == 2 and eight.axons_out_max == 8 * per_core
    assert eight.core_memory_max == pytest.approx(0.2 * per_core / 4096 + 0.8 * 8 * per_core / 12000, abs=1e-4)
    assert eight.core_memory_max <= 1.0 < 0.2 * (per_core + 1) / 4096 + 0.8 * 8 * (per_core + 1) / 12000
