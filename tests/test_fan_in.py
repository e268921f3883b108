"""Fan-in splits built into the integer graph (calibration.fan_in) and the core plan that cuts
populations into Lava processes and lowers identity synapses as depthwise convolutions
(calibration.core_plan), in the integer reference (no Lava: the Lava parity of all three is
tests/test_lava_lowering.py::test_fan_in_split_and_core_plan_parity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration import fixed_point as fx
from calibration.core_plan import (CorePlan, PopulationPlan, as_depthwise, check_plan, depthwise_candidates,
                                   depthwise_eligible, lowered_synapses)
from calibration.fan_in import FanInCut, InputRange, apply_fan_in_cuts, split_layers
from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Population, Synapse, load_integer_graph, \
    save_integer_graph
from deploy.pipeline import map_to_cores
from calibration.reference import ReferenceSimulator
from calibration.schedule import schedule
from xoresnet.errors import UnsupportedModelError


def readout_scale_graph(seed: int = 0) -> IntegerGraph:
    """XOResNet-50/101's last layer and readout at 28/32 px: a (2048, 4, 4) population (fed by a 1x1
    conv from 3 graded input channels) read by a dense readout of 10 classes over its 32,768 neurons,
    8-bit weights of both signs (unscheduled)."""
    rng = np.random.default_rng(seed)
    z = np.zeros((2048, 4, 4), np.int64)
    last = Population("last", (2048, 4, 4), 4095, 4095, 3000, z, z.copy())
    syns = [Synapse("conv", INPUT, "last", "conv", rng.integers(-40, 60, (2048, 3, 1, 1)), graded=True),
            Synapse("out", "last", READOUT, "dense", rng.integers(-255, 256, (10, 2048 * 16)))]
    return IntegerGraph((3, 4, 4), 256, 2, {"last": last}, syns, rng.integers(-50, 50, 10), 1.0)


def test_readout_split_at_xoresnet50_scale_is_exact():
    """The packer splits the 32,768-input readout (over the 16,000 AxonIn units of a core) into 3
    partial sums, built as GradedVec populations one step later; the reference's logits are those of
    the unsplit graph, integer for integer, in both timings."""
    graph = readout_scale_graph()
    mapping = map_to_cores(graph, "loihi2")
    split = mapping.graph
    (s,) = mapping.drc.packing.splits
    assert s.layer == READOUT and s.built and s.reason == "axon_in_units_per_core" and s.need > 16000
    assert len(s.parts) == 3 and s.payload_bits <= 24
    assert split_layers(split) == {READOUT: ["readout.part0", "readout.part1", "readout.part2"]}
    ranges = [(r.start, r.stop) for p in s.parts for r in p.inputs]
    assert ranges[0][0] == 0 and ranges[-1][1] == 2048 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    # the last layer is cut where the parts' channel ranges end (one Lava process per part)
    bounds = np.cumsum(split.core_plan.populations["last"].parts).tolist()
    assert {b for _, b in ranges} <= set(bounds)

    whole = schedule(graph)
    pixels = torch.as_tensor(np.random.default_rng(1).integers(0, 256, (3, 3, 4, 4)))
    a, b = ReferenceSimulator(whole).run_zero_delay(pixels), ReferenceSimulator(split).run_zero_delay(pixels)
    fired = a.spikes["last"].float().mean().item()
    assert 0.05 < fired < 0.95, fired  # the readout sums real spikes
    assert torch.equal(a.logits, b.logits)
    for k in range(3):  # every partial sum within the graded payload, wider than 8 bits, of both signs
        payload = b.spikes[f"readout.part{k}"]
        assert 2 ** 8 < payload.abs().max() < 2 ** 23 and payload.min() < 0 < payload.max()
    parts_sum = sum(b.spikes[f"readout.part{k}"] for k in range(3))  # [T, B, 10]
    assert torch.equal(parts_sum + torch.as_tensor(graph.readout_bias), b.logits)
    sa = ReferenceSimulator(whole).run_stream(pixels.unsqueeze(0))
    sb = ReferenceSimulator(split).run_stream(pixels.unsqueeze(0))
    assert sb.readout_latency == sa.readout_latency + 1
    for n in range(3):
        assert torch.equal(sa.logits(n), sb.logits(n))
    assert torch.equal(sa.predictions(), sb.predictions())


def test_core_plan_is_saved_with_the_graph_and_checked(tmp_path):
    graph = readout_scale_graph()
    mapped = map_to_cores(graph, "loihi2").graph
    save_integer_graph(mapped, tmp_path / "g.h5")
    back = load_integer_graph(tmp_path / "g.h5")
    assert back.core_plan.to_dict() == mapped.core_plan.to_dict()
    assert [s.src_channels for s in back.synapses] == [s.src_channels for s in mapped.synapses]
    assert CorePlan.from_dict(mapped.core_plan.to_dict()).to_dict() == mapped.core_plan.to_dict()
    with pytest.raises(UnsupportedModelError, match="not an xoresnet core plan"):
        CorePlan.from_dict({"populations": {}})
    parts = mapped.core_plan.populations["last"].parts
    bad = CorePlan({"last": PopulationPlan("last", (2048,), (None,), (1,))})
    with pytest.raises(UnsupportedModelError, match="must be cut at"):  # the readout parts read channel ranges
        check_plan(mapped, bad)
    bad = CorePlan({"last": PopulationPlan("last", parts + (1,), (None,) * (len(parts) + 1), (1,) * (len(parts) + 1))})
    with pytest.raises(UnsupportedModelError, match="do not sum"):
        check_plan(mapped, bad)


def test_fan_in_cut_must_cover_the_inputs_exactly_once():
    graph = readout_scale_graph()
    with pytest.raises(UnsupportedModelError, match="do not cover"):
        apply_fan_in_cuts(graph, [FanInCut(READOUT, ((InputRange("out", 0, 1000),), (InputRange("out", 1001, 2048),)))])
    with pytest.raises(UnsupportedModelError, match="not a splittable synapse"):  # from the graded input
        apply_fan_in_cuts(graph, [FanInCut("last", ((InputRange("conv", 0, 1),), (InputRange("conv", 1, 3),)))])
    with pytest.raises(ValueError, match="before scheduling"):
        apply_fan_in_cuts(schedule(graph), [])


# ---------------------------------------------------------------------- identity as depthwise conv

def merge_graph(seed: int = 0) -> IntegerGraph:
    """Two (8, 6, 6) populations fed by a 3x3 conv from the graded input, merged one-to-one into a
    third (weights 1-3 and 2 per channel, threshold 3); a readout over the merge."""
    rng = np.random.default_rng(seed)
    z = np.zeros((8, 6, 6), np.int64)
    pops = {n: Population(n, (8, 6, 6), 4095, 4095, v, z, z.copy()) for n, v in (("a", 3000), ("b", 3000), ("m", 3))}
    w_id = np.broadcast_to(rng.integers(1, 4, (8, 1, 1)), (8, 6, 6)).copy()
    syns = [Synapse("in_a", INPUT, "a", "conv", rng.integers(-20, 40, (8, 3, 3, 3)), padding=(1, 1), graded=True),
            Synapse("in_b", INPUT, "b", "conv", rng.integers(-20, 40, (8, 3, 3, 3)), padding=(1, 1), graded=True),
            Synapse("a->m", "a", "m", "identity", w_id),
            Synapse("b->m", "b", "m", "identity", np.full((8, 6, 6), 2, np.int64)),
            Synapse("out", "m", READOUT, "dense", rng.integers(-100, 100, (4, 8 * 36)))]
    return IntegerGraph((3, 6, 6), 256, 3, pops, syns, np.zeros(4, np.int64), 1.0)


def test_identity_lowered_as_depthwise_conv_gives_the_same_integers():
    """A one-to-one synapse with one weight per channel is the depthwise 1x1 conv it lowers to: the
    same currents from random spikes, and the same spikes and logits through the whole reference."""
    graph = merge_graph()
    assert depthwise_candidates(graph) == {"a->m", "b->m"}
    spikes = torch.as_tensor(np.random.default_rng(2).random((5, 8, 6, 6)) < 0.4)
    for s in graph.synapses:
        if s.kind == "identity":
            d = as_depthwise(s)
            assert d.kind == "conv" and d.groups == 8 and d.weight.shape == (8, 1, 1, 1)
            wd = torch.as_tensor(d.weight, dtype=torch.float64)
            ws = torch.as_tensor(s.weight, dtype=torch.int64)
            assert torch.equal(fx.synapse_current(d, spikes, wd, (8, 6, 6)).to(torch.int64),
                               fx.synapse_current(s, spikes, ws, (8, 6, 6)).to(torch.int64)), s.name
    lowered = IntegerGraph(graph.input_shape, graph.input_levels, graph.timesteps, graph.populations,
                           lowered_synapses(graph, depthwise_candidates(graph)), graph.readout_bias, 1.0)
    pixels = torch.as_tensor(np.random.default_rng(3).integers(0, 256, (4, 3, 6, 6)))
    a, b = ReferenceSimulator(graph).run_zero_delay(pixels), ReferenceSimulator(lowered).run_zero_delay(pixels)
    assert 0.05 < a.spikes["m"].float().mean().item() < 0.95  # the merge really fires, not always
    assert all(torch.equal(a.spikes[n], b.spikes[n]) for n in graph.populations) and torch.equal(a.logits, b.logits)


def test_depthwise_eligibility_and_the_plan_that_names_it():
    """Only an undelayed one-to-one synapse between spiking populations of one shape, with one weight
    per channel and no weight exponent, may be lowered as a depthwise conv; the plan keeps its names
    through a save, refuses one that is not eligible, and reads a version-1 plan (none)."""
    graph = merge_graph()
    s = next(x for x in graph.synapses if x.name == "a->m")
    assert depthwise_eligible(graph, s)
    varying = s.weight.copy()
    varying[0, 0, 0] += 1
    for changed in (dict(delay=1), dict(weight_exp=1), dict(weight=varying), dict(src_channels=(0, 8))):
        assert not depthwise_eligible(graph, Synapse(**{**s.__dict__, **changed})), changed
    scheduled = schedule(graph)
    plan = CorePlan({}, "test", frozenset({"a->m"}))
    check_plan(scheduled, plan)
    assert CorePlan.from_dict(plan.to_dict()).depthwise == {"a->m"}
    old = plan.to_dict()
    del old["depthwise"]
    old["version"] = 1
    assert CorePlan.from_dict(old).depthwise == frozenset()
    with pytest.raises(UnsupportedModelError, match="cannot be lowered as a depthwise conv"):
        check_plan(scheduled, CorePlan({}, "test", frozenset({"out"})))
    with pytest.raises(UnsupportedModelError, match="no synapse 'nope'"):
        check_plan(scheduled, CorePlan({}, "test", frozenset({"nope"})))
    with pytest.raises(UnsupportedModelError, match="list of synapse names"):
        CorePlan.from_dict({**plan.to_dict(), "depthwise": "a->m"})
    # a depthwise conv is a grouped conv: its destination must be cut as its source
    with pytest.raises(UnsupportedModelError, match="must stay whole|must be cut as"):
        check_plan(scheduled, CorePlan({"m": PopulationPlan("m", (4, 4), (None, None), (1, 1))}, "test",
                                       frozenset({"a->m"})))


def test_packer_keeps_the_lowering_with_fewer_cores():
    """The packer packs the identity synapses both ways and keeps the cheaper: here the merge's two
    one-to-one inputs as convolutions (one weight per channel on a core instead of a 64-bit unit
    per neuron); the bound is the cheaper lowering's either way."""
    from hw_targets.packing import pack

    graph = schedule(merge_graph())
    both = {d: pack(graph, [], depthwise=d) for d in (frozenset(), depthwise_candidates(graph))}
    chosen = pack(graph, [])
    best = min(both.values(), key=lambda p: p.num_cores)
    assert chosen.num_cores == best.num_cores and chosen.plan.depthwise == best.plan.depthwise
    assert both[frozenset()].lower_bound == both[depthwise_candidates(graph)].lower_bound
    sparse, conv = (both[d].tilings["m"][0].tiles[0] for d in both)
    assert conv.synmem_units < sparse.synmem_units and conv.axons_in < sparse.axons_in
