"""IntegerGraph -> Lava lowering, the safe Lava runner and the bit-exact parity gate.

Every Lava simulation runs in a child process with a timeout (Lava hangs instead of raising on
some errors). Lava starts one OS process per Lava process, so the networks are tiny, the streams
short, and the block variants share one Lava run (their graphs are joined into one).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from calibration import fixed_point as fx
from calibration.core_plan import depthwise_candidates
from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Population, Synapse
from calibration.quantize import calibrate_nir
from conftest import REPO, firing_model, random_core_plan, random_pixels, run_in_own_session, small_config
from deploy import lava_run
from deploy.lava_graph import (GraphSlice, describe_lava_network, from_lava, lava_flat_order, lava_plan, lava_shape,
                               plan_slices,
                               to_lava)
from deploy.lava_run import run_lava, session_members
from xoresnet.nir.export import export_nir
from deploy.parity import check_parity, require_parity
from calibration.reference import ReferenceSimulator
from calibration.schedule import schedule
from xoresnet.config import BlockSpec
from xoresnet.errors import LavaRunError, ParityError
from xoresnet.neuron import NeuronSpec

pytestmark = pytest.mark.lava

TIMEOUT = 240  # generous: a loaded 2-core machine; a healthy run takes seconds


# ---------------------------------------------------------------------- helpers

def integer_graph(cfg, seed: int) -> IntegerGraph:
    """Calibrated, unscheduled integer graph of a small firing network."""
    model = firing_model(cfg, seed)
    return calibrate_nir(export_nir(model), random_pixels(8, cfg, seed + 1), candidates=1).graph


def joined(graphs: dict[str, IntegerGraph]) -> IntegerGraph:
    """One graph holding ``graphs`` side by side (names prefixed ``<key>.``), sharing the input and
    the readout (logits add up), then scheduled: one Lava run checks all of them."""
    first = next(iter(graphs.values()))
    pops, syns = {}, []
    ren = lambda key, n: n if n in (INPUT, READOUT) else f"{key}.{n}"  # noqa: E731
    for key, g in graphs.items():
        assert (g.input_shape, g.timesteps, g.num_classes) == (first.input_shape, first.timesteps, first.num_classes)
        for p in g.populations.values():
            q = copy.deepcopy(p)
            q.name = ren(key, p.name)
            pops[q.name] = q
        for s in g.synapses:
            t = copy.deepcopy(s)
            t.name, t.src, t.dst = ren(key, s.name), ren(key, s.src), ren(key, s.dst)
            syns.append(t)
    bias = sum(np.asarray(g.readout_bias) for g in graphs.values())
    union = IntegerGraph(first.input_shape, first.input_levels, first.timesteps, pops, syns, bias,
                         first.readout_scale, meta={"joined": list(graphs)})
    return schedule(union)


def dense_graph(seed: int = 0) -> IntegerGraph:
    """A hand-built graph with what the exported networks lack: dense synapses into populations
    (from a conv-shaped and from a 1-D source, one of them delayed -> ``DelayDense``), positive and
    negative ``weight_exp`` on dense and identity synapses, odd excitatory weights, 1-D
    populations, CUBA current decay, and two readouts at different latencies (unscheduled)."""
    rng = np.random.default_rng(seed)

    def pop(name, shape, vth, bias=0, du=4095, dv=2048):
        b = rng.integers(0, bias + 1, shape) if bias else np.zeros(shape, np.int64)
        return Population(name, shape, du, dv, vth, b, np.full(shape, 6 if bias else 0, np.int64))

    def even(lo, hi, shape):
        return 2 * rng.integers(lo // 2, hi // 2 + 1, shape)

    pops = [pop("a", (2, 4, 4), 40, bias=8), pop("a2", (2, 4, 4), 0, du=4095, dv=4095),
            pop("b", (12,), 30, bias=6, du=2047), pop("c", (5,), 20, bias=4), pop("d", (5,), 6)]
    syns = [Synapse("a.conv", INPUT, "a", "conv", even(-20, 40, (2, 1, 3, 3)), stride=(2, 2), padding=(1, 1),
                    graded=True),
            Synapse("a.copy", "a", "a2", "identity", np.ones((2, 4, 4), np.int64)),
            Synapse("b.direct", "a", "b", "dense", even(-8, 30, (12, 32)), weight_exp=1),  # delayed by 1
            Synapse("b.late", "a2", "b", "dense", even(-10, 20, (12, 32))),
            Synapse("c.in", "b", "c", "dense", even(-20, 60, (5, 12)), weight_exp=-1),
            Synapse("d.in", "c", "d", "identity", np.array([3, 5, 7, 9, 11]), weight_exp=1),
            Synapse("out.d", "d", READOUT, "dense", even(-50, 50, (3, 5))),
            Synapse("out.b", "b", READOUT, "dense", even(-50, 50, (3, 12)))]
    return IntegerGraph((1, 8, 8), 16, 3, {p.name: p for p in pops}, syns, np.array([1, -2, 3]), 1.0)


def reference_stream(graph: IntegerGraph, pixels):
    return ReferenceSimulator(graph).run_stream(torch.as_tensor(np.asarray(pixels)).unsqueeze(0))


def run_child(code: str, timeout: float = 120) -> str:
    """Run ``code`` in a fresh Python (own session); on timeout kill the whole session."""
    return run_in_own_session([sys.executable, "-c", textwrap.dedent(code)], timeout).strip().splitlines()[-1]


def orphaned_new_segments(before: set[str]) -> set[str]:
    """New /dev/shm entries that no live process holds (what a killed run would leak). Entries held
    by live processes belong to runs in progress (other users, other tests) and are not ours."""
    new = set(os.listdir("/dev/shm")) - before
    if not new:
        return set()
    held = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            held |= lava_run._held_segments([int(entry)])
    return {n for n in new if n not in held and os.path.exists(f"/dev/shm/{n}")}


# ---------------------------------------------------------------------- pure layout (no Lava)

def test_layout_helpers_round_trip():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 9, (3, 4, 5))  # (C, H, W)
    assert lava_shape(x.shape) == (5, 4, 3) and lava_shape((7,)) == (7,)
    assert np.array_equal(from_lava(to_lava(x)), x)
    assert np.array_equal(from_lava(np.stack([to_lava(x)] * 2), lead=1), np.stack([x] * 2))
    order = lava_flat_order(x.shape)
    assert np.array_equal(x.ravel()[order], to_lava(x).ravel())  # Lava's C-order flatten of (W, H, C)
    w = rng.integers(-5, 5, (2, x.size))  # dense over the PyTorch flatten order
    assert np.array_equal(w[:, order] @ to_lava(x).ravel(), w @ x.ravel())


def test_dense_permutation_into_conv_shaped_population():
    """Dense weights permuted on both sides: Lava's flat (W, H, C) in and out == PyTorch's."""
    from deploy.lava_graph import block_weights, population_parts, synapse_blocks

    rng = np.random.default_rng(2)
    src = Population("s", (3, 2, 4), 0, 0, 0, np.zeros((3, 2, 4)), np.zeros((3, 2, 4)))
    dst = Population("d", (2, 3, 2), 0, 0, 0, np.zeros((2, 3, 2)), np.zeros((2, 3, 2)))
    syn = Synapse("w", "s", "d", "dense", rng.integers(-9, 9, (12, 24)))
    g = IntegerGraph((1, 2, 2), 1, 1, {"s": src, "d": dst}, [syn], np.zeros(2, np.int64), 1.0)
    x = rng.integers(0, 2, src.shape)
    want = (syn.weight @ x.ravel()).reshape(dst.shape)
    (block,) = synapse_blocks(g, syn, population_parts(g))
    assert np.array_equal(block_weights(g, syn, block, syn.weight) @ to_lava(x).ravel(), to_lava(want).ravel())


def test_describe_is_pure_json(monkeypatch):
    import builtins

    graph = joined({"a": integer_graph(small_config(blocks_per_stage=(1, 1)), 3)})
    real_import = builtins.__import__

    def no_lava(name, *args, **kwargs):
        if name == "lava" or name.startswith("lava."):
            raise AssertionError(f"describe_lava_network imported {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lava)
    d = describe_lava_network(graph)
    monkeypatch.undo()
    json.dumps(d)
    procs = {p["name"]: p for p in d["processes"]}
    assert d["counts"]["by_class"]["LIFReset"] == len(graph.populations)
    assert d["counts"]["by_class"]["Extractor"] == len(graph.populations) + 1
    for p in graph.populations.values():
        params = procs[f"pop:{p.name}"]["params"]
        assert params["reset_interval"] == graph.reset_interval
        assert params["reset_offset"] == (1 + p.latency) % graph.reset_interval
        assert isinstance(params["du"], int) and isinstance(params["vth"], int)
    for s in graph.synapses:
        cls = procs[f"syn:{s.name}"]["class"]
        expected = {"conv": "Conv", "identity": "DelaySparse" if s.delay else "Sparse",
                    "dense": "DelayDense" if s.delay else "Dense"}[s.kind]
        assert cls == expected, s.name
    assert d["delays"] == graph.delays()
    assert len(lava_plan(graph)[1]) == len(d["connections"])


# ---------------------------------------------------------------------- 1. conv lowering

def test_conv_lowering_equals_fixed_point_conv_current():
    """Lava Conv (through our weight/shape/stride/padding conversion) == fx.conv_current, with odd
    and even mixed weights, graded 8-bit input, stride 2 / padding 1 / groups 2, plus an asymmetric
    conv (kernel 3x2, stride (2, 1), padding (1, 0)) that catches any X/Y swap. Also checks that
    our pinned models are what ``select_tag="fixed_pt"`` selects."""
    rng = np.random.default_rng(1)
    C, H, W, T = 4, 7, 9, 3
    x = rng.integers(0, 256, (T, C, H, W))
    convs = {
        "a": dict(w=rng.integers(-255, 256, (6, 2, 3, 3)), stride=(2, 2), padding=(1, 1), groups=2),
        "b": dict(w=rng.integers(-255, 256, (5, 4, 3, 2)), stride=(2, 1), padding=(1, 0), groups=1),
    }
    spec = {k: dict(w=v["w"].tolist(), stride=v["stride"], padding=v["padding"], groups=v["groups"])
            for k, v in convs.items()}
    out = run_child(f"""
        import json, numpy as np
        from deploy.lava_compat import lava_ready
        lava_ready()
        from deploy.lava_graph import conv_weight_to_lava, fixed_pt_models, lava_shape, to_lava, from_lava, xy
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.magma.compiler.compiler_graphs import ProcGroupDiGraphs
        from lava.proc.conv.process import Conv
        from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
        from lava.proc.io.source import RingBuffer

        x = np.array({x.tolist()})
        spec = json.loads({json.dumps(json.dumps(spec))})
        T = x.shape[0]
        src = RingBuffer(data=np.stack([to_lava(x[t]) for t in range(T)], -1).astype(np.int32))
        probes = {{}}
        for k, s in spec.items():
            w = np.array(s["w"])
            conv = Conv(weight=conv_weight_to_lava(w).astype(np.int32), input_shape=lava_shape(x.shape[1:]),
                        padding=xy(s["padding"]), stride=xy(s["stride"]), groups=s["groups"], num_message_bits=8)
            src.s_out.connect(conv.s_in)
            probes[k] = Extractor(shape=conv.a_out.shape, buffer_size=T + 1)
            conv.a_out.connect(probes[k].in_port)
        cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={{Extractor: PyLoihiExtractorModel}})
        pinned = fixed_pt_models()
        import scipy.sparse as sp
        from lava.proc.dense.process import DelayDense, Dense
        from lava.proc.graded.process import GradedVec
        from lava.proc.lif.process import LIFReset
        from lava.proc.sparse.process import DelaySparse, Sparse
        eye = sp.csr_matrix(np.eye(2, dtype=np.int32))
        others = [LIFReset(shape=(2,), reset_interval=2), Sparse(weights=eye),
                  DelaySparse(weights=eye, delays=sp.csr_matrix(np.eye(2, dtype=np.int64))),
                  Dense(weights=np.eye(2)), DelayDense(weights=np.eye(2), delays=np.eye(2, dtype=np.int64)),
                  GradedVec(shape=(2,))]
        for proc in [src, conv, probes[k], *others]:  # our pinned models == what select_tag picks
            chosen = cfg.select(proc, ProcGroupDiGraphs._find_proc_models(proc))
            assert chosen is pinned[type(proc)], (type(proc), chosen)
        assert len({{type(p) for p in [src, conv, probes[k], *others]}}) == len(pinned)
        try:
            src.run(condition=RunSteps(num_steps=T + 1), run_cfg=cfg)
            got = {{k: from_lava(np.stack([p.receive() for _ in range(T + 1)]), lead=1).astype(np.int64).tolist()
                   for k, p in probes.items()}}
        finally:
            src.stop()
        print(json.dumps(got))
    """)
    got = json.loads(out)
    for k, c in convs.items():
        want = fx.conv_current(torch.as_tensor(x), torch.as_tensor(c["w"]), stride=c["stride"], padding=c["padding"],
                               groups=c["groups"]).numpy()
        lava = np.array(got[k])
        assert np.all(lava[0] == 0)  # the one-step synapse pipeline: step 1 sends the initial buffer
        assert lava[1:].shape == want.shape, k
        assert np.array_equal(lava[1:], want), k
        assert np.any(c["w"] % 2) and np.any(want != 0)


# ---------------------------------------------------------------------- 2. the digits model

@pytest.fixture(scope="module")
def digits_graph(digits_model_path):
    from xoresnet.checkpoint import load_model
    from xoresnet.data import load_dataset

    model, _ = load_model(str(digits_model_path))
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    graph = schedule(calibrate_nir(export_nir(model), train.pixels[:16], candidates=1).graph)
    return graph, test.pixels[:2].numpy()


def test_digits_model_parity(digits_graph):
    graph, pixels = digits_graph
    reference = reference_stream(graph, pixels)
    lava = run_lava(graph, pixels, timeout=TIMEOUT)
    report = check_parity(graph, reference, lava)
    assert report.passed, report.summary()
    require_parity(report)
    assert report.samples == 2 and report.steps == graph.stream_steps(2) == lava.steps
    assert report.neuron_steps_compared == lava.steps * sum(p.size for p in graph.populations.values())
    assert sum(int(s.sum()) for s in lava.spikes.values()) > 1000  # the comparison is not of silence
    assert report.predictions["lava"] == report.predictions["reference"] == lava.predictions().tolist()
    assert np.array_equal(lava.predictions(), reference.predictions()[0].numpy())
    json.dumps(report.to_dict())
    json.dumps(describe_lava_network(graph))
    print(f"digits: {lava.steps} steps, {lava.seconds:.1f} s, phases {lava.phases}")


# ---------------------------------------------------------------------- 3. block variants

VARIANTS = {  # together: every selection, merge and non-identity shortcut of the BasicBlock, CUBA neurons
    "xor_or": small_config(timesteps=3, blocks_per_stage=(2,)),  # prev_input selection (2nd block), OR merge
    "mid_xor": small_config(timesteps=3, blocks_per_stage=(1, 1), block=BlockSpec("mid", "xor", "add_current")),
    "sew_add": small_config(timesteps=3, blocks_per_stage=(1,), block=BlockSpec("none", "add", "spike")),
    "sew_iand": small_config(timesteps=3, blocks_per_stage=(1, 1), block=BlockSpec("none", "iand", "spike")),
    "spiking_resnet_cuba": small_config(timesteps=3, blocks_per_stage=(1,),
                                        block=BlockSpec("none", "add_current", "add_current"),
                                        neuron=NeuronSpec(du=0.5, dv=0.25)),
}


def test_block_variants_parity():
    graphs = {k: integer_graph(cfg, seed) for seed, (k, cfg) in enumerate(VARIANTS.items())}
    graphs["hand"] = dense_graph()
    graph = joined(graphs)
    ops = {p.op for p in graph.populations.values()}
    assert {"or", "xor", "iand", "relay"} <= ops, ops
    assert any(p.du_code != 4095 and p.has_bias for p in graph.populations.values())  # CUBA current decay + bias
    assert any(s.stride != (1, 1) for s in graph.synapses if s.kind == "conv")  # downsampling shortcuts
    assert any(s.kind == "dense" and s.delay and s.dst != READOUT for s in graph.synapses)  # DelayDense
    assert any(s.kind == "identity" and s.delay for s in graph.synapses)  # DelaySparse
    pixels = random_pixels(2, VARIANTS["xor_or"], 99).numpy()
    reference = reference_stream(graph, pixels)
    lava = run_lava(graph, pixels, timeout=TIMEOUT)
    report = check_parity(graph, reference, lava)
    assert report.passed, report.summary()
    for key in graphs:  # every variant actually fires (a comparison of silence proves nothing)
        fired = sum(int(s.sum()) for n, s in lava.spikes.items() if n.startswith(key + "."))
        assert fired > 20, key
    print(f"variants: {len(graph.populations)} populations, {describe_lava_network(graph)['counts']['processes']} "
          f"Lava processes, {lava.steps} steps, {lava.seconds:.1f} s, phases {lava.phases}")


# ---------------------------------------------------------------------- 4. a perturbed weight is caught

def test_perturbed_weight_fails_parity_and_is_localized():
    graph = joined({"n": integer_graph(small_config(timesteps=3, blocks_per_stage=(1, 1)), 7)})
    pixels = random_pixels(2, small_config(), 5).numpy()
    reference = reference_stream(graph, pixels)
    # find a conv weight where +2 changes the spikes of the synapse's destination (reference only)
    rng = np.random.default_rng(0)
    perturb = expected = None
    for syn in [s for s in graph.synapses if s.kind == "conv" and s.src != INPUT]:
        for flat in rng.permutation(syn.weight.size)[:40]:
            idx = tuple(int(i) for i in np.unravel_index(flat, syn.weight.shape))
            g2 = copy.deepcopy(graph)
            w = next(s for s in g2.synapses if s.name == syn.name).weight
            w[idx] += 2
            diff = (reference_stream(g2, pixels).spikes[syn.dst] != reference.spikes[syn.dst])
            if diff.any():
                steps = torch.nonzero(diff.flatten(1).any(1)).flatten()
                perturb = {"synapse": syn.name, "index": list(idx), "delta": 2}
                expected = (syn.dst, int(steps[0]) + 1)
                break
        if perturb:
            break
    assert perturb, "no +2 perturbation changes any spike"
    lava = run_lava(graph, pixels, timeout=TIMEOUT, perturb=perturb)
    report = check_parity(graph, reference, lava)
    assert not report.passed and report.mismatching_neuron_steps > 0
    fd = report.first_divergence
    assert (fd["population"], fd["step"]) == expected, (fd, perturb)
    pop = graph.populations[fd["population"]]
    n, k = divmod(fd["step"] - 1 - pop.latency, graph.reset_interval)
    assert (fd["sample"], fd["timestep"]) == (n, k)
    assert fd["lava"] != fd["reference"]
    assert [i["synapse"] for i in fd["recent_inputs"]] == [s.name for s in graph.incoming(pop.name)]
    perturbed_in = next(i for i in fd["recent_inputs"] if i["synapse"] == perturb["synapse"])
    assert all(step["equal"] for step in perturbed_in["steps"])  # the inputs agreed: the synapse is at fault
    assert fd["population"] in report.summary()
    assert report.summary().startswith("parity FAILED: first divergence at sample")
    # run in slices (each replaying the reference at its inputs), the divergence is found at the same
    # place and stays in the slice of the perturbed synapse's destination
    sliced = run_lava(graph, pixels, timeout=TIMEOUT, perturb=perturb, reference=reference, max_processes=8)
    assert len(sliced.slices) >= 3
    cut = check_parity(graph, reference, sliced)
    assert not cut.passed and (cut.first_divergence["population"], cut.first_divergence["step"]) == expected
    home = next(piece for piece in plan_slices(graph, 8) if expected[0] in piece.populations)
    assert {p for p, n in cut.mismatches_by_population.items() if n} <= home.populations
    json.dumps(report.to_dict())
    with pytest.raises(ParityError) as e:
        require_parity(report)
    assert e.value.exit_code == 5 and fd["population"] in str(e.value)


def as_lava_result(graph: IntegerGraph, reference, pixels) -> "lava_run.LavaRunResult":
    """A LavaRunResult holding exactly the reference's stream (to test the gate without Lava)."""
    return lava_run.LavaRunResult(
        spikes={k: v[:, 0].numpy().copy() for k, v in reference.spikes.items()},
        readout=reference.readout[:, 0].numpy().copy(), steps=int(reference.readout.shape[0]), seconds=0.0,
        samples=int(reference.samples), reset_interval=graph.reset_interval, timesteps=graph.timesteps,
        readout_latency=graph.readout_latency(), readout_bias=np.asarray(graph.readout_bias), pixels=pixels)


def test_parity_gate_logic_without_lava():
    """Synthetic mismatches: the earliest step wins over topological order, a divergence before the
    sample window is labelled as such, a readout-only difference is localized to the readout."""
    graph = joined({"n": integer_graph(small_config(timesteps=3, blocks_per_stage=(1, 1)), 7)})
    pixels = random_pixels(2, small_config(), 5).numpy()
    reference = reference_stream(graph, pixels)
    same = as_lava_result(graph, reference, pixels)
    assert check_parity(graph, reference, same).passed
    order = list(graph.populations)
    late, early = order[0], order[-1]
    lava = as_lava_result(graph, reference, pixels)
    lava.spikes[late][9, 0, 1, 2] ^= True  # first population, later step
    lava.spikes[early][4].flat[5] ^= True  # last population, earlier step
    report = check_parity(graph, reference, lava)
    fd = report.first_divergence
    assert not report.passed and report.mismatching_neuron_steps == 2
    assert (fd["population"], fd["step"]) == (early, 5)
    assert fd["in_window"] == (4 - graph.populations[early].latency >= 0)
    lava = as_lava_result(graph, reference, pixels)
    lava.spikes[late][0, 0, 0, 0] ^= True  # step 1: before the first sample reaches this population
    fd = check_parity(graph, reference, lava).first_divergence
    assert fd["step"] == 1 and not fd["in_window"] and "before sample 0" in fd["window_note"]
    assert fd["recent_inputs"][0]["source"] == INPUT and fd["recent_inputs"][0]["steps"] == []  # nothing sent yet
    lava = as_lava_result(graph, reference, pixels)
    lava.spikes[late][3, 0, 0, 0] ^= True
    fd = check_parity(graph, reference, lava).first_divergence
    assert fd["in_window"] and (fd["sample"], fd["timestep"]) == (0, 3 - graph.populations[late].latency)
    seen = fd["recent_inputs"][0]["steps"]
    assert [s["step"] for s in seen] == [1, 2, 3]
    assert np.array_equal(seen[0]["pixels"], pixels[0][:, :2, :2])  # the 3x3 field at (0, 0), padding cut
    lava = as_lava_result(graph, reference, pixels)
    lava.readout[-1, 2] += 1
    report = check_parity(graph, reference, lava)
    assert not report.passed and not report.readout_equal and report.mismatching_neuron_steps == 0
    assert report.first_divergence["population"] == READOUT and report.first_divergence["neuron"] == [2]
    assert "readout differs at 1 steps" in report.summary()
    json.dumps(report.to_dict())


def test_parity_coverage_and_the_silent_population_warning():
    """The verdict says what it covered; a population silent in every parity image is named."""
    graph = joined({"n": integer_graph(small_config(timesteps=3, blocks_per_stage=(1, 1)), 7)})
    pixels = random_pixels(2, small_config(), 5).numpy()
    reference = reference_stream(graph, pixels)
    report = check_parity(graph, reference, as_lava_result(graph, reference, pixels))
    c = report.coverage
    P, T = graph.reset_interval, graph.timesteps
    for name, pop in graph.populations.items():  # counted in each sample's T-step window
        want = sum(int(reference.spikes[name][n * P + pop.latency: n * P + pop.latency + T].sum()) for n in range(2))
        assert c["spikes_by_population"][name] == want, name
    assert c["spikes_compared"] == sum(c["spikes_by_population"].values()) > 0
    assert c["populations"] == len(graph.populations) and c["neurons"] == sum(p.size for p in graph.populations.values())
    assert 0 < c["neurons_spiked_fraction"] <= 1 and c["neurons_spiked"] == round(c["neurons_spiked_fraction"] * c["neurons"])
    assert f"coverage: {c['populations_spiked']} of {c['populations']} populations spiked" in report.summary()
    # silence one population in the reference and in "Lava" alike: parity passes, with a warning naming it
    quiet = next(name for name in graph.populations if c["spikes_by_population"][name])
    reference.spikes[quiet][:] = False
    report = check_parity(graph, reference, as_lava_result(graph, reference, pixels))
    assert report.passed and report.coverage["silent_populations"] == [quiet]
    assert report.summary().endswith(f"WARNING: 1 of {c['populations']} population silent in every parity image "
                                     f"({quiet}): parity says nothing about it")
    json.dumps(report.to_dict())


# ---------------------------------------------------------------------- 5. timeouts, hangs and failures

def tiny_graph(delay: int) -> IntegerGraph:
    """input -conv-> a -identity(delay)-> b -dense-> readout (a delay of 64 makes Lava hang)."""
    sh = (2, 4, 4)
    z = lambda: np.zeros(sh, np.int64)  # noqa: E731
    pops = {"a": Population("a", sh, 4095, 4095, 0, z(), z(), kind="gate", op="or", latency=1),
            "b": Population("b", sh, 4095, 4095, 0, z(), z(), kind="relay", op="relay", latency=2 + delay)}
    w = np.zeros((2, 1, 3, 3), np.int64)
    w[:, 0, 1, 1] = 1
    syns = [Synapse("c", INPUT, "a", "conv", w, padding=(1, 1), graded=True),
            Synapse("i", "a", "b", "identity", np.ones(sh, np.int64), delay=delay),
            Synapse("r", "b", READOUT, "dense", np.ones((3, 32), np.int64))]
    return IntegerGraph((1, 4, 4), 16, 2, pops, syns, np.zeros(3, np.int64), 1.0, reset_interval=2)


def assert_nothing_left(cleanup: dict, before: set[str]) -> None:
    """No process of the run's session, none of its shared-memory segments, no work directory."""
    assert session_members(cleanup["session"]) == []
    present = set(os.listdir("/dev/shm"))
    assert not set(cleanup["segments_logged"]) & present
    assert orphaned_new_segments(before) == set()
    assert not os.path.exists(cleanup["workdir"])


def test_timeout_kills_everything_and_leaks_nothing(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # the Lava child imports tests/lava_fault_models.py
    pixels = np.ones((2, 1, 4, 4), np.int64)
    # (a) a run that cannot finish in 0.5 s (Python and Lava are still starting)
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(LavaRunError, match="did not finish within 0.5 s") as e:
        run_lava(tiny_graph(1), pixels, timeout=0.5)
    assert e.value.exit_code == 6
    assert session_members(e.value.cleanup["session"], include_zombies=False) == []
    # (b) a real hang without an exception: a LIF model that blocks forever at step 3. SIGKILL
    # without grace, so the resource trackers cannot clean up: we must.
    monkeypatch.setattr(lava_run, "KILL_GRACE", 0.0)
    with pytest.raises(LavaRunError, match=r"did not finish within 8 s \(2 of 8 steps done") as e:
        run_lava(tiny_graph(1), pixels, timeout=8, chunk=1,
                 model_overrides={"LIFReset": "lava_fault_models.PyLifResetModelHanging"})
    assert "no Lava process reported an error" in str(e.value)
    cleanup = e.value.cleanup
    assert cleanup["processes_killed"] >= 1
    if cleanup["segments_logged"]:  # the runtime was up (it normally is after 8 s: it needs about 3)
        assert cleanup["segments_removed"]
    assert_nothing_left(cleanup, before)


def test_exception_in_a_lava_process_fails_fast_and_names_it(monkeypatch):
    """An exception raised inside a Lava process (here an injected LIF model that raises at step 3
    before it sends, so the processes downstream wait forever for its spikes) ends the run within
    seconds, not at the timeout, with one line naming the process, its model and the exception,
    and leaves no process and no shared memory behind."""
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # the Lava child imports tests/lava_fault_models.py
    pixels = np.ones((2, 1, 4, 4), np.int64)
    before = set(os.listdir("/dev/shm"))
    t0 = time.monotonic()
    with pytest.raises(LavaRunError) as e:
        run_lava(tiny_graph(1), pixels, timeout=600, chunk=1,
                 model_overrides={"LIFReset": "lava_fault_models.PyLifResetModelRaising"})
    took = time.monotonic() - t0
    message = str(e.value)
    assert e.value.exit_code == 6 and "\n" not in message
    assert re.fullmatch(r"the Lava simulation failed \(exit code 1\): Lava process 'pop:[ab]' \(LIFReset, model "
                        r"lava_fault_models\.PyLifResetModelRaising\) raised RuntimeError: injected fault at "
                        r"step 3( \(and 1 more Lava process failed\))?", message), message
    assert "timeout" not in message
    assert took < 60, took  # startup (~3 s on an idle machine) plus about a second; the timeout was 600 s
    assert_nothing_left(e.value.cleanup, before)


def test_intels_model_raising_is_reported_not_hung():
    """Intel's own DelaySparse model raises inside ``run_spk`` on a delay above 63 (Lava's runtime
    used to deadlock on it): the run fails fast with the process and the exception named."""
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(LavaRunError, match=r"Lava process 'syn:i' \(DelaySparse, model lava\.proc\.sparse\.models"
                                           r"\.PyDelaySparseModelBitAcc\) raised ValueError: DelaySparse Process "
                                           r"'delays' expects values between 0 and 63") as e:
        run_lava(tiny_graph(64), np.ones((2, 1, 4, 4), np.int64), timeout=600, validate=False, models="lava")
    assert_nothing_left(e.value.cleanup, before)


def test_child_failure_reports_the_error():
    graph = tiny_graph(1)
    graph.synapses[1].weight = np.ones((2, 4, 5), np.int64)  # wrong shape: the child fails while lowering
    with pytest.raises(LavaRunError, match=r"failed \(exit code 1\): ValueError: synapse i: identity weights") as e:
        run_lava(graph, np.ones((1, 1, 4, 4), np.int64), timeout=TIMEOUT, validate=False)
    assert session_members(e.value.cleanup["session"]) == []


def test_lava_worker_imports_no_torch():
    """The Lava child never loads torch (it would double the cost of each of Lava's fork()s)."""
    r = subprocess.run([sys.executable, "-c", "import sys, deploy.lava_worker, deploy.lava_graph, "
                        "calibration.integer_graph; print('torch' in sys.modules)"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_reference_stream_dense_into_a_3d_population():
    """A dense synapse into a (C, H, W) population delivers its output reshaped (both timings agree)."""
    z = lambda shape: np.zeros(shape, np.int64)  # noqa: E731
    pops = {"a": Population("a", (1, 2, 2), 4095, 4095, 0, z((1, 2, 2)), z((1, 2, 2))),
            "b": Population("b", (2, 1, 1), 4095, 4095, 0, z((2, 1, 1)), z((2, 1, 1)))}
    syns = [Synapse("in", "input", "a", "conv", np.ones((1, 1, 1, 1), np.int64), graded=True),
            Synapse("ab", "a", "b", "dense", np.array([[1, 0, 0, 0], [0, 0, 0, 1]], np.int64)),
            Synapse("out", "b", READOUT, "dense", np.eye(2, dtype=np.int64))]
    g = schedule(IntegerGraph((1, 2, 2), 16, 1, pops, syns, np.zeros(2, np.int64), 1.0))
    pixels = torch.tensor([[[[1, 0], [0, 0]]]])
    stream = ReferenceSimulator(g).run_stream(pixels.unsqueeze(0))
    zero = ReferenceSimulator(g).run_zero_delay(pixels)
    assert torch.equal(stream.window("b", g.populations["b"].latency, 0)[:, 0], zero.spikes["b"][:, 0])
    assert zero.spikes["b"][0, 0].flatten().tolist() == [True, False]


# ---------------------------------------------------------------------- 6. fan-in splits and the core plan

def split_network(monkeypatch):
    """A small firing network (unscheduled) mapped onto cores with two fan-in splits built: the
    conv layer ``layer2.0.neurons.1`` cut by hand into two partial sums (its conv over 8 channels
    in halves, the 1x1 shortcut with the second), and the readout (128 inputs per class neuron),
    which the packer splits itself once the AxonIn budget is lowered to 100 units per core.
    ``graph.core_plan`` is the packer's: sources cut where the parts read channel ranges."""
    import dataclasses

    from calibration import loihi2_limits as L
    from calibration.fan_in import FanInCut, InputRange, apply_fan_in_cuts
    from deploy.pipeline import map_to_cores

    cfg = small_config(timesteps=3, blocks_per_stage=(1, 1))
    graph = integer_graph(cfg, 11)
    conv_cut = FanInCut("layer2.0.neurons.1", ((InputRange("layer2.0.convs.1", 0, 4),),
                                               (InputRange("layer2.0.convs.1", 4, 8),
                                                InputRange("layer2.0.shortcut", 0, 4))))
    graph = apply_fan_in_cuts(graph, [conv_cut])
    monkeypatch.setattr(L, "AXON_IN_UNITS_PER_CORE", dataclasses.replace(L.AXON_IN_UNITS_PER_CORE, value=100))
    mapping = map_to_cores(graph, "loihi2")
    return cfg, mapping


def test_fan_in_split_and_core_plan_parity(monkeypatch, tmp_path):
    """Fan-in splits built (partial sums as GradedVec 24-bit graded spikes, one step later, every
    other branch delayed) and populations cut into Lava processes as the core plan says: Lava equals
    the integer reference bit for bit, partial sums included; the connections Lava builds are
    exactly those the plan lists."""
    from calibration.integer_graph import save_integer_graph
    from hw_targets.packing import pack

    cfg, mapping = split_network(monkeypatch)
    graph = mapping.graph
    splits = {s.layer: s for s in mapping.drc.packing.splits}
    assert set(splits) == {"layer2.0.neurons.1", READOUT} and all(s.built for s in splits.values())
    assert len(splits[READOUT].parts) == 2 and splits[READOUT].reason == "axon_in_units_per_core"
    partial = [p for p in graph.populations.values() if p.kind == "partial_sum"]
    assert len(partial) == 4
    plan = graph.core_plan
    assert plan.populations["layer2.0.neurons.0"].parts == (4, 4)  # the conv part reads channels [0, 4), [4, 8)
    assert plan.cut_populations >= 1
    # the layer fed by partial sums is one step later than its sources' sources, and every
    # population reading it is balanced (the scheduler's invariant: each synapse's delay makes up
    # the difference)
    for s in graph.synapses:
        if s.src != INPUT and s.dst != READOUT:
            src = graph.populations[s.src]
            assert graph.populations[s.dst].latency == src.latency + 1 + s.delay, s.name
    assert graph.populations["layer2.0.neurons.1"].latency == graph.populations["layer2.0.neurons.0"].latency + 2

    pixels = random_pixels(2, cfg, 21).numpy()
    reference = reference_stream(graph, pixels)
    lava = run_lava(graph, pixels, timeout=TIMEOUT)
    report = check_parity(graph, reference, lava)
    assert report.passed, report.summary()
    for p in partial:  # the partial sums carried real payloads, over 8 bits, of both signs
        got = np.asarray(lava.spikes[p.name])
        assert got.dtype == np.int64 and np.abs(got).max() > 255 and got.min() < 0 < got.max(), p.name
    assert sum(int(s.sum()) for n, s in lava.spikes.items() if graph.populations[n].kind != "partial_sum") > 100

    # any plan that keeps the cut rules is exact, not only the packer's: random cuts everywhere allowed
    packer_plan = graph.core_plan
    assert pack(graph, []).plan.to_dict() == packer_plan.to_dict()  # the packer counts the plan it made
    graph.core_plan = random_core_plan(graph, np.random.default_rng(5))
    assert graph.core_plan.cut_populations > len(packer_plan.populations) // 2
    cut = {n: p.parts for n, p in pack(graph, []).plan.populations.items() if len(p.parts) > 1}
    assert cut == {n: p.parts for n, p in graph.core_plan.populations.items()}  # and any plan it is given
    report = check_parity(graph, reference, run_lava(graph, pixels, timeout=TIMEOUT))
    assert report.passed, report.summary()
    # every identity synapse that may be lowered as a depthwise conv lowered so (Conv, groups = C),
    # under random cuts too: still exact
    depthwise = depthwise_candidates(graph)
    assert len(depthwise) >= 2
    graph.core_plan = random_core_plan(graph, np.random.default_rng(6), depthwise)
    assert pack(graph, []).plan.depthwise == depthwise
    lowered = [p for p in lava_plan(graph)[0] if p.params.get("lowered_as")]
    assert {p.source for p in lowered} == depthwise and {p.cls for p in lowered} == {"Conv"}
    lava = run_lava(graph, pixels, timeout=TIMEOUT)
    report = check_parity(graph, reference, lava)
    assert report.passed, report.summary()
    assert all(lava.spikes[graph_syn.dst].any() for graph_syn in graph.synapses if graph_syn.name in depthwise)
    # in slices of at most 8 processes: some slices fall apart (parts of a population fed one-to-one by
    # replayed parts) and are joined by synapse-less links; still exact
    graph.core_plan = random_core_plan(graph, np.random.default_rng(4), depthwise)
    assert any(p.role == "link" for piece in plan_slices(graph, 8) for p in lava_plan(graph, piece)[0])
    assert check_parity(graph, reference, run_lava(graph, pixels, timeout=TIMEOUT, reference=reference,
                                                   max_processes=8)).passed
    graph.core_plan = packer_plan

    # in slices of at most 12 Lava processes (the partial sums' payloads, spikes and the readout's
    # sources replayed from the reference): every population, step and logit as in one runtime
    lava = run_lava(graph, pixels, timeout=TIMEOUT)
    sliced = run_lava(graph, pixels, timeout=TIMEOUT, reference=reference, max_processes=12)
    replayed = {name for piece in plan_slices(graph, 12) for name in piece.replayed(graph)}
    assert len(sliced.slices) >= 3 and any(graph.populations[p].kind == "partial_sum" for p in replayed)
    assert sliced.spikes.keys() == lava.spikes.keys()
    assert all(np.array_equal(sliced.spikes[p], lava.spikes[p]) for p in lava.spikes)
    assert np.array_equal(sliced.readout, lava.readout)
    assert check_parity(graph, reference, sliced).passed
    with pytest.raises(ValueError, match="needs the reference stream"):
        run_lava(graph, pixels, timeout=TIMEOUT, max_processes=12)

    # the Lava network built from the graph has exactly the planned connections
    path = tmp_path / "graph.h5"
    save_integer_graph(graph, path)
    out = run_child(f"""
        import json, numpy as np
        from calibration.integer_graph import load_integer_graph
        from deploy.lava_graph import build_lava_network
        from lava.magma.core.process.ports.ports import AbstractVirtualPort

        graph = load_integer_graph({str(path)!r})
        net = build_lava_network(graph, np.zeros((1,) + tuple(graph.input_shape), np.int64))
        edges = []
        def walk(proc, port, node, shapes):
            for q in node.out_connections:
                if isinstance(q, AbstractVirtualPort):
                    walk(proc, port, q, shapes + [list(q.shape)])
                else:
                    edges.append([proc.name, port, q.process.name, q.name, shapes])
        for proc in net.processes():
            for port in proc.out_ports:
                walk(proc, port.name, port, [])
        print(json.dumps(edges))
    """)
    built = sorted((a, b, c, d, json.dumps(t)) for a, b, c, d, t in json.loads(out))
    procs, conns = lava_plan(graph)
    shapes = {p.name: p.shape for p in procs}

    def transform(c):
        if c.transform is None:
            return []
        if c.transform == "flatten":
            return [[int(np.prod(shapes[c.src]))]]
        return [list(json.loads("[" + c.transform[len("reshape("):-1] + "]"))]

    planned = sorted((c.src, c.src_port, c.dst, c.dst_port, json.dumps(transform(c))) for c in conns)
    assert built == planned
    assert len({p.name for p in procs}) == len(procs)
    blocks = [p for p in procs if p.role == "synapse" and "#" in p.name]
    assert blocks, "the plan cuts some synapse into blocks"


def test_slices_cover_the_graph_once_within_the_budget():
    """plan_slices: every population in exactly one slice, the readout in the last; each slice's
    Lava processes within the budget unless it is a single population; a slice replays only
    populations of earlier slices (topological order); the whole graph in one slice when it fits."""
    graph = map_to_cores_graph()
    whole = len(lava_plan(graph)[0])
    assert plan_slices(graph, whole) == [GraphSlice.whole(graph)]
    for budget in (6, 10, 25):
        slices = plan_slices(graph, budget)
        assert len(slices) > 1
        order = [name for piece in slices for name in piece.populations]
        assert sorted(order) == sorted(graph.populations)  # each exactly once
        assert [piece.readout for piece in slices] == [False] * (len(slices) - 1) + [True]
        seen: set[str] = set()
        for piece in slices:
            assert set(piece.replayed(graph)) <= seen
            n = len(lava_plan(graph, piece)[0])
            assert n <= budget or len(piece.populations) == 1, (budget, n)
            seen |= piece.populations


def map_to_cores_graph() -> IntegerGraph:
    from deploy.pipeline import map_to_cores

    return map_to_cores(integer_graph(small_config(timesteps=3, blocks_per_stage=(1, 1)), 11), "loihi2").graph
