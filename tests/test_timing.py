"""Zero-delay vs Loihi timing: after delay balancing, every population's spikes in its window of the
stream equal the zero-delay spikes, sample after sample; plus the schedule's invariants."""

import functools

import numpy as np
import pytest
import torch

from calibration.fixed_point import DELAY_MAX
from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Population, Synapse
from calibration.quantize import calibrate_nir
from conftest import firing_model, random_pixels, small_config
from xoresnet.nir.export import export_nir
from calibration.reference import ReferenceSimulator
from calibration.schedule import schedule
from xoresnet.config import BlockSpec
from xoresnet.errors import UnsupportedModelError
from xoresnet.neuron import NeuronSpec

SAMPLES = 3  # per stream
STREAMS = 2  # independent streams (batch)

NETWORKS = {
    "xor-or-T3": small_config(timesteps=3),
    "xor-xor-T1": small_config(timesteps=1, block=BlockSpec("prev_input", "xor", "add_current")),
    "mid-xor-spike-T4": small_config(timesteps=4, block=BlockSpec("mid", "xor", "spike")),
    "cuba-bias-iand-T3": small_config(timesteps=3, block=BlockSpec("none", "iand", "spike"),
                                      neuron=NeuronSpec(du=0.5, dv=0.25)),
    "cuba-bias-xor-T4": small_config(timesteps=4, neuron=NeuronSpec(du=0.5, dv=0.25, vth=0.75)),
    "if-or-only-T3": small_config(timesteps=3, block=BlockSpec("none", "or", "add_current"),
                                  neuron=NeuronSpec(du=1.0, dv=0.0)),
    "sew-add-bottleneck-T4": small_config(timesteps=4, block_type="bottleneck", blocks_per_stage=(2, 1),
                                          base_width=2, block=BlockSpec("none", "add", "spike")),
    "spiking-resnet-84-T3": small_config(timesteps=3, input_size=84, in_channels=3, input_levels=255,
                                         blocks_per_stage=(1, 1), base_width=2,
                                         block=BlockSpec("none", "add_current", "add_current")),
}


def root_source(graph: IntegerGraph, name: str) -> str:
    """Follow relays back to the population they copy."""
    while graph.populations[name].kind == "relay":
        [s] = graph.incoming(name)
        name = s.src
    return name


def check_schedule(original: IntegerGraph, sg: IntegerGraph) -> None:
    T = original.timesteps
    P = sg.reset_interval
    assert P >= T and P & (P - 1) == 0 and (P == 1 or P // 2 < T)  # the smallest power of two >= T
    lat = {INPUT: 0, **{n: p.latency for n, p in sg.populations.items()}}
    # every population's incoming synapses all arrive at its own latency, and at least one without waiting
    for name, p in sg.populations.items():
        arrivals = [lat[s.src] + 1 + s.delay for s in sg.incoming(name)]
        assert arrivals and set(arrivals) == {p.latency}, (name, arrivals)
        assert min(s.delay for s in sg.incoming(name)) == 0 or p.kind == "relay"
    arrivals = {lat[s.src] + 1 + s.delay for s in sg.readout}
    assert len(arrivals) == 1 and sg.readout_latency() == arrivals.pop()
    for s in sg.synapses:
        assert 0 <= s.delay <= DELAY_MAX == 62
        if s.kind == "conv":
            assert s.delay == 0, f"conv synapse {s.name} carries a delay"
    # relays: memoryless copies (identity weight 1 into vth 0, du = dv = 4095, no bias)
    for name, p in sg.populations.items():
        if p.kind != "relay":
            continue
        [s] = sg.incoming(name)
        assert s.kind == "identity" and s.src != INPUT and np.all(s.weight == 1) and s.weight_exp == 0
        assert (p.du_code, p.dv_code, p.vth_mant) == (4095, 4095, 0) and not p.has_bias
        assert p.shape == sg.source_shape(s.src)
    # nothing else changed: same populations (plus relays) with the same parameters, same synapses
    assert [n for n in sg.populations if sg.populations[n].kind != "relay"] == list(original.populations)
    for name, p in original.populations.items():
        q = sg.populations[name]
        assert (p.du_code, p.dv_code, p.vth_mant, p.kind, p.op) == (q.du_code, q.dv_code, q.vth_mant, q.kind, q.op)
        assert np.array_equal(p.bias_mant, q.bias_mant) and np.array_equal(p.bias_exp, q.bias_exp)
    by_name = {s.name: s for s in sg.synapses}
    for s in original.synapses:
        t = by_name[s.name]
        assert (t.src == s.src) or (sg.populations[t.src].kind == "relay" and root_source(sg, t.src) == s.src)
        assert t.dst == s.dst and t.kind == s.kind and np.array_equal(t.weight, s.weight)
    # the original graph is untouched (schedule works on a copy)
    assert not original.scheduled and all(s.delay == 0 for s in original.synapses)
    assert all(p.latency == 0 for p in original.populations.values())


def check_stream(graph: IntegerGraph, sg: IntegerGraph, pixels: torch.Tensor) -> dict:
    """``pixels`` [STREAMS, SAMPLES, C, H, W]. Windows == zero-delay, sample by sample."""
    B, N = pixels.shape[:2]
    zd = ReferenceSimulator(graph).run_zero_delay(pixels.flatten(0, 1))
    zd_sched = ReferenceSimulator(sg).run_zero_delay(pixels.flatten(0, 1))
    stream = ReferenceSimulator(sg).run_stream(pixels)
    assert stream.spikes[next(iter(sg.populations))].shape[0] == sg.stream_steps(N)
    T = graph.timesteps
    fired = 0
    for name, p in sg.populations.items():
        ref = zd.spikes[root_source(sg, name)].view(T, B, N, *p.shape)
        assert torch.equal(zd_sched.spikes[name].view(T, B, N, *p.shape), ref), name
        for n in range(N):
            w = stream.window(name, p.latency, n)
            assert torch.equal(w, ref[:, :, n]), f"{name}, sample {n}: {int((w != ref[:, :, n]).sum())} differ"
        fired += int(ref.sum())
    logits = zd.logits.view(T, B, N, -1)
    for n in range(N):
        assert torch.equal(stream.logits(n), logits[:, :, n])
    assert torch.equal(stream.predictions(), zd.predictions.view(B, N))
    assert fired > 0
    return {"stream": stream, "zd": zd}


@functools.lru_cache(maxsize=None)
def built(name):
    cfg = NETWORKS[name]
    model = firing_model(cfg, seed=7)
    calib = random_pixels(4, cfg, seed=8)
    graph = calibrate_nir(export_nir(model), calib).graph
    return name, cfg, graph


@pytest.fixture(params=sorted(NETWORKS))
def network(request):
    return built(request.param)


def test_schedule_invariants(network):
    _, cfg, graph = network
    sg = schedule(graph)
    assert sg.reset_interval == {1: 1, 2: 2, 3: 4, 4: 4}[cfg.timesteps]
    check_schedule(graph, sg)
    if cfg.block.selection == "prev_input":  # XOR selection and the stride-2 shortcut conv need waiting
        assert any(s.delay for s in sg.synapses)
        assert any(p.kind == "relay" for p in sg.populations.values())


def test_windows_equal_zero_delay(network):
    name, cfg, graph = network
    sg = schedule(graph)
    pixels = random_pixels(STREAMS * SAMPLES, cfg, seed=9).view(STREAMS, SAMPLES, *random_pixels(1, cfg, 0).shape[1:])
    check_stream(graph, sg, pixels)
    if "cuba-bias" in name:
        assert any(p.has_bias for p in graph.populations.values())
        assert any(p.du_code < 4095 for p in graph.populations.values())


@pytest.mark.parametrize("name", sorted(n for n, c in NETWORKS.items() if c.input_size == 8))
def test_larger_reset_interval_also_works(name):
    """P = 8 > T (more empty steps between samples): the windows are unchanged."""
    _, cfg, graph = built(name)
    sg = schedule(graph, reset_interval=8)
    assert sg.reset_interval == 8
    pixels = random_pixels(STREAMS * SAMPLES, cfg, seed=10).view(STREAMS, SAMPLES, 1, 8, 8)
    check_stream(graph, sg, pixels)


def test_reset_interval_shorter_than_timesteps_is_refused():
    graph = gate_chain_graph(T=4, chain=1)
    with pytest.raises(UnsupportedModelError, match="reset interval 2"):
        schedule(graph, reset_interval=2)


# ---------------------------------------------------------------------- the trained digits model

def test_digits_model_windows_equal_zero_delay(digits_model_path):
    from xoresnet.checkpoint import load_model
    from xoresnet.data import load_dataset

    model, ckpt = load_model(digits_model_path)
    ds = load_dataset("digits", "test", limit=24)
    pixels = ds.pixels.to(torch.int64)
    graph = calibrate_nir(export_nir(model), pixels[:16]).graph
    sg = schedule(graph)
    check_schedule(graph, sg)
    out = check_stream(graph, sg, pixels[16:22].view(2, 3, 1, 8, 8))
    # the deployed network still classifies: most of the 6 streamed samples are right
    correct = (out["stream"].predictions().flatten() == ds.labels[16:22]).sum()
    assert int(correct) >= 4


# ---------------------------------------------------------------------- hand-made timing cases

def _pop(name, shape, *, vth, du=4095, dv=4095, bias_mant=0, bias_exp=0, kind="neuron"):
    return Population(name, shape, du_code=du, dv_code=dv, vth_mant=vth, bias_mant=np.full(shape, bias_mant, np.int64),
                      bias_exp=np.full(shape, bias_exp, np.int64), kind=kind)


def bias_leak_graph(T=3):
    """input -> A (large positive bias: fires at every step, also before and after its window, even
    with no input) -> B (an integrator with current memory, du = 0, dv = 0) -> readout.
    A's spikes outside its window must not reach B's window of the next sample."""
    shape = (4, 1, 1)
    pops = {
        # bias 100 << 6 = 6400 v-units per step; vth 50 (3200): v = 6400 > 3200 -> spikes every step
        "A": _pop("A", shape, vth=50, dv=0, bias_mant=100, bias_exp=6),
        "B": _pop("B", shape, vth=10, du=0, dv=0),
    }
    syns = [Synapse("in->A", INPUT, "A", "conv", np.arange(1, 5, dtype=np.int64).reshape(4, 1, 1, 1), graded=True),
            Synapse("A->B", "A", "B", "identity", np.full(shape, 7, np.int64)),
            Synapse("readout:B", "B", READOUT, "dense", np.eye(4, dtype=np.int64)[:2] + 1)]
    return IntegerGraph((1, 1, 1), 3, T, pops, syns, np.zeros(2, np.int64), 1.0)


def test_bias_before_input_does_not_leak_into_the_next_sample():
    graph = bias_leak_graph(T=3)
    graph.validate()
    sg = schedule(graph)
    assert sg.reset_interval == 4 and sg.populations["A"].latency == 1 and sg.populations["B"].latency == 2
    pixels = torch.tensor([0, 3, 1], dtype=torch.int64).view(1, 3, 1, 1, 1).expand(2, 3, 1, 1, 1).contiguous()
    # zero delay, by hand: A fires at every step; B's u accumulates 7 << 6 = 448 per step with decay
    # 1/4096 (du = 0): 448 ; 448*4095/4096 = 447.89 -> 447, + 448 = 895 ; 895*4095/4096 = 894.78 -> 894,
    # + 448 = 1342. v (dv = 0): 448 (not > 640) ; 448 + 895 = 1343 > 640 spike -> 0 ; 0 + 1342 spike -> 0.
    zd = ReferenceSimulator(graph).run_zero_delay(pixels[0], record_state=True)
    assert bool(zd.spikes["A"].all())
    assert zd.u["B"][:, 0, 0, 0, 0].tolist() == [448, 895, 1342]
    assert zd.v["B"][:, 0, 0, 0, 0].tolist() == [448, 0, 0]
    assert zd.spikes["B"][:, :, 0, 0, 0].tolist() == [[False] * 3, [True] * 3, [True] * 3]
    stream = ReferenceSimulator(sg).run_stream(pixels, record_state=True)
    # in the stream A fires at every step, also outside its windows (before its first window at step 2
    # and in the empty step k = 3 of every sample) ...
    assert bool(stream.spikes["A"].all())
    # ... so B keeps receiving spikes outside its windows (its u before a window is not zero), and only
    # the reset at its window start keeps them out
    u_B = stream.u["B"][:, 0, 0, 0, 0]
    for n in range(1, 3):
        start = stream.step_index(n, 0, sg.populations["B"].latency)
        assert int(u_B[start - 1]) > 448
        assert int(u_B[start]) == 448
    check_stream(graph, sg, pixels)


def test_bias_leak_would_be_visible_without_the_per_latency_reset():
    """Control (the check above can fail): B's reset phase misplaced (latency 0, windows still read at
    latency 2). B then resets at steps 1, 5, 9 and sees A's spikes from step 2 on: its first window
    (steps 3, 4, 5) holds u = 895, 1342 and a reset: spikes [1, 1, 0] instead of [0, 1, 1]."""
    graph = bias_leak_graph(T=3)
    sg = schedule(graph)
    sg.populations["B"].latency = 0
    pixels = torch.tensor([1, 1, 1], dtype=torch.int64).view(1, 3, 1, 1, 1)
    stream = ReferenceSimulator(sg).run_stream(pixels)
    assert stream.window("B", 2, 0)[:, 0, 0, 0, 0].tolist() == [True, True, False]


def gate_chain_graph(T=2, chain=70):
    """input -> A -> c1 -> ... -> c_chain (memoryless copies) ; OR(A, c_chain): A must wait `chain` steps,
    more than one synaptic delay (62) can give: the scheduler chains relays."""
    shape = (3, 1, 1)
    pops = {"A": _pop("A", shape, vth=0)}
    syns = [Synapse("in->A", INPUT, "A", "conv", np.ones((3, 1, 1, 1), np.int64), graded=True)]
    prev = "A"
    for i in range(1, chain + 1):
        pops[f"c{i}"] = _pop(f"c{i}", shape, vth=0, kind="gate")
        syns.append(Synapse(f"{prev}->c{i}", prev, f"c{i}", "identity", np.ones(shape, np.int64)))
        prev = f"c{i}"
    pops["or"] = _pop("or", shape, vth=0, kind="gate")
    syns += [Synapse("A->or", "A", "or", "identity", np.ones(shape, np.int64)),
             Synapse(f"{prev}->or", prev, "or", "identity", np.ones(shape, np.int64)),
             # a conv from A too: conv synapses cannot carry delays, they need a relay
             Synapse("A->or.conv", "A", "or", "conv", np.ones((3, 3, 1, 1), np.int64)),
             Synapse("readout:or", "or", READOUT, "dense", np.ones((2, 3), np.int64))]
    return IntegerGraph((1, 1, 1), 1, T, pops, syns, np.zeros(2, np.int64), 1.0)


def test_long_delays_chain_relays_and_conv_sources_get_relays():
    graph = gate_chain_graph(T=2, chain=70)
    graph.validate()
    sg = schedule(graph)
    check_schedule(graph, sg)
    assert sg.populations["A"].latency == 1 and sg.populations["or"].latency == 72
    relays = {n: p.latency for n, p in sg.populations.items() if p.kind == "relay"}
    # the identity synapse A->or needs 70 extra steps: over 62, so A is relayed: 7 + 63 steps
    # (one relay hop covers up to 63 = 1 + 62); the conv A->or.conv needs the same and shares it.
    assert relays == {"A.relay7": 8, "A.relay70": 71}
    by_name = {s.name: s for s in sg.synapses}
    assert by_name["A->or"].src == "A.relay70" and by_name["A->or"].delay == 0
    assert by_name["A->or.conv"].src == "A.relay70" and by_name["A->or.conv"].delay == 0
    assert by_name["A->A.relay7"].delay == 6 and by_name["A.relay7->A.relay70"].delay == 62
    pixels = torch.tensor([1, 0, 1], dtype=torch.int64).view(1, 3, 1, 1, 1)
    check_stream(graph, sg, pixels)


def test_short_conv_delay_uses_one_relay():
    graph = gate_chain_graph(T=3, chain=2)
    sg = schedule(graph)
    check_schedule(graph, sg)
    by_name = {s.name: s for s in sg.synapses}
    assert by_name["A->or"].src == "A" and by_name["A->or"].delay == 2  # an identity synapse waits itself
    assert by_name["A->or.conv"].src == "A.relay2" and by_name["A->or.conv"].delay == 0
    assert by_name["A->A.relay2"].delay == 1 and sg.populations["A.relay2"].latency == 3
    check_stream(graph, sg, torch.tensor([1, 1, 0], dtype=torch.int64).view(1, 3, 1, 1, 1))
