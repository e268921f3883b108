"""Fan-in splits built into the integer graph (calibration.fan_in) and the core plan that cuts
populations into Lava processes (calibration.core_plan), in the integer reference (no Lava: the
Lava parity of both is tests/test_lava_lowering.py::test_fan_in_split_and_core_plan_parity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibration.core_plan import CorePlan, PopulationPlan, check_plan
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
