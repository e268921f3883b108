"""Spike-logic gates (OR, AND, IAND, XOR, OR-pool), exhaustively over input sequences across time.

Integer reference: hand-built :class:`IntegerGraph` s. The input of the reference is constant
over a sample's timesteps, so per-timestep input patterns are generated inside the graph:

* ``R_t`` (t = 0..T-1): a neuron with ``du = 0`` (u accumulates 64 per step, slightly decayed:
  u = 64, 127, 190, 253, ...) and ``dv = 4095`` (v = u) and ``vth = t``: it fires at every
  timestep ``k >= t`` (u_k > 64 t exactly from k = t on);
* a source ``X`` (the gate inputs ``a`` and ``b``) is a memoryless population with identity
  synapses from every ``R_t`` of weight ``d(t) - d(t-1)`` per neuron, ``d`` the wanted 0/1
  sequence: at timestep ``k`` its input is ``sum_{t <= k} (d(t) - d(t-1)) = d(k)``, so neuron
  ``i`` fires exactly the pattern ``d_i``.

With ``N = 2^(2T)`` neurons, neuron ``i`` carries one of all the pairs of T-step sequences for
``a`` (low bits of ``i``) and ``b`` (high bits). The gates are then built as in
``xoresnet-block.md`` and must equal the truth table at every timestep, in zero-delay timing and,
after :func:`calibration.schedule.schedule`, in Loihi timing (windows). The NIR side builds the same
gates with the exporter's own builder and runs them in :class:`NIRInterpreter`.
"""

import nir
import numpy as np
import pytest
import torch

from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Population, Synapse
from calibration.quantize import calibrate_nir
from conftest import firing_model, random_pixels, small_config
from xoresnet.nir.export import _GraphBuilder, export_nir, read_meta
from xoresnet.nir.interpreter import NIRInterpreter
from calibration.reference import ReferenceSimulator
from calibration.schedule import schedule
from xoresnet.config import BlockSpec

TRUTH = {
    "or": lambda a, b: a | b,
    "and": lambda a, b: a & b,
    "iand": lambda a, b: (1 - a) & b,
    "xor": lambda a, b: a ^ b,
}


# ---------------------------------------------------------------------- hand-built integer graphs

def population(name, shape, *, vth, du=4095, dv=4095, kind="gate", op=None):
    z = np.zeros(shape, np.int64)
    return Population(name, tuple(shape), du_code=du, dv_code=dv, vth_mant=vth, bias_mant=z, bias_exp=z.copy(), kind=kind, op=op)


def identity(name, src, dst, weight):
    return Synapse(name, src, dst, "identity", np.asarray(weight, np.int64))


def all_pairs(T):
    """Bits ``[N, T]`` of a and b for every pair of T-step binary sequences (N = 4^T)."""
    idx = np.arange(1 << (2 * T))
    a = (idx[:, None] >> np.arange(T)) & 1
    b = (idx[:, None] >> (T + np.arange(T))) & 1
    return a, b


def pattern_sources(T, shape, patterns: dict[str, np.ndarray]):
    """Populations and synapses making population ``name`` fire ``patterns[name]`` ([*shape, T] bits)."""
    pops, syns = {}, []
    for t in range(T):
        r = f"R{t}"
        pops[r] = population(r, shape, vth=t, du=0, dv=4095, kind="neuron")
        syns.append(Synapse(f"input->{r}", INPUT, r, "conv", np.ones((shape[0], 1, 1, 1), np.int64), graded=True))
    for name, bits in patterns.items():
        pops[name] = population(name, shape, vth=0, op="source")
        prev = np.zeros(shape, np.int64)
        for t in range(T):
            w = bits[..., t].astype(np.int64) - prev
            prev = bits[..., t].astype(np.int64)
            # one excitatory and one inhibitory synapse per clock (no mixed odd weights)
            if (w > 0).any():
                syns.append(identity(f"R{t}->{name}+", f"R{t}", name, np.clip(w, 0, None)))
            if (w < 0).any():
                syns.append(identity(f"R{t}->{name}-", f"R{t}", name, np.clip(w, None, 0)))
    return pops, syns


def gate_graph(op, T, *, skew=0):
    """The gate ``op`` on all pairs of T-step sequences; ``skew`` extra copies delay ``b``'s branch."""
    a_bits, b_bits = all_pairs(T)
    N = a_bits.shape[0]
    shape = (N, 1, 1)
    pops, syns = pattern_sources(T, shape, {"a": a_bits.reshape(N, 1, 1, T), "b": b_bits.reshape(N, 1, 1, T)})
    one = np.ones(shape, np.int64)
    b = "b"
    for j in range(skew):  # memoryless copies: zero-delay identical, one Loihi hop each
        pops[f"b{j + 1}"] = population(f"b{j + 1}", shape, vth=0, op="copy")
        syns.append(identity(f"{b}->b{j + 1}", b, f"b{j + 1}", one))
        b = f"b{j + 1}"
    if op == "or":
        pops["g"] = population("g", shape, vth=0, op="or")
        syns += [identity("a->g", "a", "g", one), identity(f"{b}->g", b, "g", one)]
    elif op == "and":
        pops["g"] = population("g", shape, vth=1, op="and")
        syns += [identity("a->g", "a", "g", one), identity(f"{b}->g", b, "g", one)]
    elif op == "iand":
        pops["g"] = population("g", shape, vth=0, op="iand")
        syns += [identity("a->g", "a", "g", -one), identity(f"{b}->g", b, "g", one)]
    elif op == "xor":
        pops["h"] = population("h", shape, vth=1, op="xor.and")
        syns += [identity("a->h", "a", "h", one), identity(f"{b}->h", b, "h", one)]
        pops["g"] = population("g", shape, vth=0, op="xor")
        syns += [identity("a->g", "a", "g", one), identity(f"{b}->g", b, "g", one),
                 identity("h->g", "h", "g", -2 * one)]
    else:
        raise AssertionError(op)
    syns.append(Synapse("readout:g", "g", READOUT, "dense", np.ones((2, N), np.int64)))
    graph = IntegerGraph(input_shape=(1, 1, 1), input_levels=1, timesteps=T, populations=pops, synapses=syns,
                         readout_bias=np.zeros(2, np.int64), readout_scale=1.0)
    graph.validate()
    return graph, a_bits, b_bits


ONE = torch.ones((1, 1, 1, 1), dtype=torch.int64)
ZERO = torch.zeros((1, 1, 1, 1), dtype=torch.int64)


def seq(spikes):
    """Zero-delay spikes ``[T, 1, N, 1, 1]`` -> int array ``[N, T]``."""
    return spikes[:, 0].reshape(spikes.shape[0], -1).T.numpy().astype(np.int64)


@pytest.mark.parametrize("T", [1, 2, 4])
def test_pattern_generator_fires_the_wanted_sequences(T):
    graph, a_bits, b_bits = gate_graph("or", T)
    z = ReferenceSimulator(graph).run_zero_delay(ONE)
    for t in range(T):  # the clocks: R_t fires at every timestep k >= t
        assert seq(z.spikes[f"R{t}"]).tolist() == [[int(k >= t) for k in range(T)]] * a_bits.shape[0]
    np.testing.assert_array_equal(seq(z.spikes["a"]), a_bits)
    np.testing.assert_array_equal(seq(z.spikes["b"]), b_bits)
    # and a silent input (pixel 0) gives silent sources
    z0 = ReferenceSimulator(graph).run_zero_delay(ZERO)
    assert not any(bool(s.any()) for s in z0.spikes.values())


@pytest.mark.parametrize("skew", [0, 1])
@pytest.mark.parametrize("op", ["or", "and", "iand", "xor"])
def test_gate_truth_table_over_all_sequences_zero_delay(op, skew):
    T = 4
    graph, a_bits, b_bits = gate_graph(op, T, skew=skew)
    z = ReferenceSimulator(graph).run_zero_delay(ONE, record_state=True)
    np.testing.assert_array_equal(seq(z.spikes["g"]), TRUTH[op](a_bits, b_bits))
    if op == "xor":
        np.testing.assert_array_equal(seq(z.spikes["h"]), a_bits & b_bits)
    # memoryless: after every step the gate keeps no state a later step could see (|v| < 4096 -> 0)
    v = z.v["g"][:, 0].reshape(T, -1)
    assert int(v.abs().max()) < 4096
    # the logits are the readout's spike counts per step (weights 1, two classes)
    expected = TRUTH[op](a_bits, b_bits).sum(0)
    assert z.logits[:, 0, 0].tolist() == expected.tolist()


@pytest.mark.parametrize("skew", [0, 1])
@pytest.mark.parametrize("op", ["or", "and", "iand", "xor"])
def test_gate_loihi_timing_windows_equal_zero_delay(op, skew):
    T = 4
    graph, a_bits, b_bits = gate_graph(op, T, skew=skew)
    sg = schedule(graph)
    assert sg.reset_interval == 4
    sim = ReferenceSimulator(sg)
    # three samples: pattern, silence, pattern (no state may leak across the sample boundaries)
    stream = sim.run_stream(torch.stack([ONE[0], ZERO[0], ONE[0]]).unsqueeze(0))
    z1 = ReferenceSimulator(graph).run_zero_delay(ONE)
    z0 = ReferenceSimulator(graph).run_zero_delay(ZERO)
    truth = TRUTH[op](a_bits, b_bits)
    for n, zd in enumerate([z1, z0, z1]):
        for name, p in sg.populations.items():
            w = stream.window(name, p.latency, n)
            assert torch.equal(w, zd.spikes[name]), (name, n)
        got = seq(stream.window("g", sg.populations["g"].latency, n))
        np.testing.assert_array_equal(got, truth if n != 1 else np.zeros_like(truth))
        assert torch.equal(stream.logits(n), zd.logits)


@pytest.mark.parametrize("skew", [0, 1])
def test_xor_and_part_is_one_step_later_and_a_b_are_delayed(skew):
    """Latencies: R 1, a 2, b 2 + skew; AND(a, b) 3 + skew; XOR 4 + skew. The scheduler delays the
    shorter branches: into AND a by skew; into XOR a by 1 + skew, b by 1, the AND by 0."""
    graph, _, _ = gate_graph("xor", 3, skew=skew)
    sg = schedule(graph)
    lat = {n: p.latency for n, p in sg.populations.items()}
    assert lat["R0"] == 1 and lat["a"] == 2 and lat["b"] == 2
    assert lat["h"] == 3 + skew and lat["g"] == 4 + skew
    delays = {s.name: s.delay for s in sg.synapses}
    assert delays["a->h"] == skew
    assert delays["b->h" if skew == 0 else "b1->h"] == 0
    assert delays["a->g"] == 1 + skew
    assert delays["b->g" if skew == 0 else "b1->g"] == 1
    assert delays["h->g"] == 0
    assert not any(p.kind == "relay" for p in sg.populations.values())  # identity synapses carry delays
    # and the unscheduled graph has no delays (schedule returned a copy)
    assert all(s.delay == 0 for s in graph.synapses)


def test_or_pool_all_windows_across_time():
    """OR-pool: a depthwise 2x2 stride-2 conv of ones into a gate with vth 0, on every sequence of
    2x2 windows over T = 3 (16^3 = 4096 channels, one window each)."""
    T = 3
    C = 16 ** T
    idx = np.arange(C)
    window = np.stack([(idx >> (4 * t)) & 15 for t in range(T)], -1)  # [C, T] window code per step
    bits = np.stack([(window >> j) & 1 for j in range(4)], 1).reshape(C, 2, 2, T)  # [C, 2, 2, T]
    shape = (C, 2, 2)
    pops, syns = pattern_sources(T, shape, {"x": bits})
    pops["pool"] = population("pool", (C, 1, 1), vth=0, op="or_pool")
    syns.append(Synapse("x->pool", "x", "pool", "conv", np.ones((C, 1, 2, 2), np.int64), stride=(2, 2), groups=C))
    syns.append(Synapse("readout:pool", "pool", READOUT, "dense", np.ones((2, C), np.int64)))
    graph = IntegerGraph((1, 1, 1), 1, T, pops, syns, np.zeros(2, np.int64), 1.0)
    graph.validate()
    expected = (window > 0).astype(np.int64)  # OR of the four bits
    z = ReferenceSimulator(graph).run_zero_delay(ONE)
    assert torch.equal(z.spikes["x"][:, 0].permute(1, 2, 3, 0), torch.as_tensor(bits, dtype=torch.bool))
    np.testing.assert_array_equal(seq(z.spikes["pool"]), expected)
    # Loihi timing: T = 3 -> P = 4 (a gap step per sample), three samples
    sg = schedule(graph)
    assert sg.reset_interval == 4
    stream = ReferenceSimulator(sg).run_stream(torch.stack([ONE[0], ZERO[0], ONE[0]]).unsqueeze(0))
    lat = sg.populations["pool"].latency
    assert lat == 3
    for n in range(3):
        np.testing.assert_array_equal(seq(stream.window("pool", lat, n)), expected if n != 1 else 0 * expected)


# ---------------------------------------------------------------------- gates in calibrated graphs

def _gate_inputs(graph, name):
    """(weights by source, vth) of a gate population: each identity synapse's weights are uniform."""
    out = {}
    for s in graph.incoming(name):
        assert s.kind in ("identity", "conv")
        vals = np.unique(s.weight)
        assert len(vals) == 1, (s.name, vals)
        out[s.src] = int(vals[0])
    return out


@pytest.mark.parametrize("spec", [BlockSpec("prev_input", "or"), BlockSpec("prev_input", "xor"),
                                  BlockSpec("none", "iand", "spike"), BlockSpec("mid", "xor", "spike")],
                         ids=lambda s: f"{s.selection}-{s.merge}-{s.shortcut}")
def test_calibrated_gates_have_the_integer_construction_and_truth_table(spec):
    cfg = small_config(block=spec, timesteps=3)
    model = firing_model(cfg, 3)
    pixels = random_pixels(6, cfg, 4)
    graph = calibrate_nir(export_nir(model), pixels).graph
    z = ReferenceSimulator(graph).run_zero_delay(pixels)
    gates = [p for p in graph.populations.values() if p.kind == "gate"]
    assert gates
    seen_ops = set()
    for p in gates:
        assert (p.du_code, p.dv_code) == (4095, 4095) and not p.has_bias and p.scale == 1.0
        w = _gate_inputs(graph, p.name)
        seen_ops.add(p.op)
        srcs = list(w)
        s = {k: z.spikes[k].long() for k in srcs}
        if p.op == "or":
            assert p.vth_mant == 0 and sorted(w.values()) == [1, 1]
            expected = s[srcs[0]] | s[srcs[1]]
        elif p.op == "xor.and":
            assert p.vth_mant == 1 and sorted(w.values()) == [1, 1]
            expected = s[srcs[0]] & s[srcs[1]]
        elif p.op == "xor":
            assert p.vth_mant == 0 and sorted(w.values()) == [-2, 1, 1]
            a, b = [k for k in srcs if w[k] == 1]
            h = next(k for k in srcs if w[k] == -2)
            assert graph.populations[h].op == "xor.and"
            expected = s[a] ^ s[b]
        elif p.op == "iand":
            assert p.vth_mant == 0 and sorted(w.values()) == [-1, 1]
            neg = next(k for k in srcs if w[k] == -1)
            pos = next(k for k in srcs if w[k] == 1)
            expected = (1 - s[neg]) & s[pos]
            if p.name.endswith(".sel"):
                # the XOR selection of an OR-merging network, lowered to IAND: S contains P, so they agree
                assert bool(((s[pos] | s[neg]) == s[pos]).all()), "S must contain P"
                assert torch.equal(expected, s[pos] ^ s[neg])
            else:
                assert neg.endswith(f"neurons.{len(model.layer1[0].convs) - 1}")  # NOT applies to the backbone A
        else:
            raise AssertionError(p.op)
        assert torch.equal(z.spikes[p.name].long(), expected), p.name
        assert 0 < float(z.spikes[p.name].float().mean()) < 1, f"{p.name} never toggles: a weak test"
    selection_ops = {"iand"} if spec.merge == "or" else {"xor", "xor.and"}  # IAND when S contains P
    expected_ops = set()
    if spec.selection == "prev_input":
        expected_ops |= selection_ops
    if spec.selection == "mid" or spec.merge == "xor":
        expected_ops |= {"xor", "xor.and"}
    expected_ops |= {spec.merge} if spec.merge in ("or", "iand") else set()
    assert seen_ops == expected_ops


def test_calibrated_or_pool_stem():
    cfg = small_config(input_size=84, blocks_per_stage=(1,), base_width=2, timesteps=2)
    assert cfg.stem == "conv_s2_orpool"
    model = firing_model(cfg, 5)
    pixels = random_pixels(2, cfg, 6)
    graph = calibrate_nir(export_nir(model), pixels).graph
    pool = graph.populations["stem.or_pool"]
    assert pool.kind == "gate" and pool.op == "or_pool" and pool.vth_mant == 0 and pool.shape == (2, 21, 21)
    [syn] = graph.incoming("stem.or_pool")
    assert syn.kind == "conv" and syn.groups == 2 and syn.stride == (2, 2) and syn.weight.tolist() == \
        np.ones((2, 1, 2, 2), np.int64).tolist()
    z = ReferenceSimulator(graph).run_zero_delay(pixels)
    s = z.spikes["stem.sn"].float()
    expected = torch.nn.functional.max_pool2d(s.flatten(0, 1), 2).unflatten(0, s.shape[:2]) > 0
    assert torch.equal(z.spikes["stem.or_pool"], expected)
    assert 0 < float(expected.float().mean()) < 1


# ---------------------------------------------------------------------- the NIR side

def _nir_gate_graph(op, N):
    """input (2, 1, N): channel 0 is a, channel 1 is b -> exporter's gate builder -> output."""
    model = firing_model(small_config(), 0)
    b = _GraphBuilder(model)
    b.add("input", nir.Input(input_type={"input": np.array([2, 1, N])}), (2, 1, N), [])
    for ch, name in enumerate("ab"):
        w = np.zeros((1, 2, 1, 1), np.float32)
        w[0, ch] = 1.0
        b.add(name, nir.Conv2d(input_shape=(1, N), weight=w, stride=1, padding=0, dilation=1, groups=1,
                               bias=np.zeros(1, np.float32)), (1, 1, N), ["input"])
    out = b.gate("g", op, ["a"], ["b"], "blk")
    b.add("output", nir.Output(output_type={"output": np.array([1, 1, N])}), (1, 1, N), out)
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata={"dt": 1.0}), out


EXPECTED_NODES = {
    # op: {node: (type, value)} and edges, from the exporter's documented construction
    "or": ({"g": ("Threshold", 0.5)}, {("a", "g"), ("b", "g")}),
    "iand": ({"g.neg": ("Scale", -1.0), "g": ("Threshold", 0.5)}, {("a", "g.neg"), ("g.neg", "g"), ("b", "g")}),
    "xor": ({"g.and": ("Threshold", 1.5), "g.neg2": ("Scale", -2.0), "g": ("Threshold", 0.5)},
            {("a", "g.and"), ("b", "g.and"), ("g.and", "g.neg2"), ("a", "g"), ("b", "g"), ("g.neg2", "g")}),
}


@pytest.mark.parametrize("op", ["or", "iand", "xor", "add"])
def test_nir_gate_nodes_and_truth_table_over_all_sequences(op):
    T = 4
    a_bits, b_bits = all_pairs(T)
    N = a_bits.shape[0]
    graph, out = _nir_gate_graph(op, N)
    if op == "add":
        assert out == ["a", "b"]  # SEW-ADD: no gate, the consumer sums by fan-in
    else:
        nodes, edges = EXPECTED_NODES[op]
        assert out == ["g"]
        for name, (kind, value) in nodes.items():
            node = graph.nodes[name]
            assert type(node).__name__ == kind
            arr = np.asarray(node.threshold if kind == "Threshold" else node.scale)
            assert arr.shape == (1, 1, N) and np.all(arr == value)
            meta = read_meta(node)
            assert meta["op"] == op and meta["block"] == "blk"
        assert {e for e in graph.edges if e[1] in nodes} == edges
    x = torch.zeros((T, 1, 2, 1, N))
    x[:, 0, 0, 0] = torch.as_tensor(a_bits.T, dtype=torch.float32)
    x[:, 0, 1, 0] = torch.as_tensor(b_bits.T, dtype=torch.float32)
    y = NIRInterpreter(graph).run(x).outputs["output"][:, 0, 0, 0].T.numpy()
    expected = (a_bits + b_bits) if op == "add" else TRUTH[op](a_bits, b_bits)
    np.testing.assert_array_equal(y, expected)


def test_nir_or_pool_over_all_window_sequences():
    cfg = small_config(input_size=84, blocks_per_stage=(1,), base_width=2, timesteps=2)
    g = export_nir(firing_model(cfg, 1))
    pool, thr = g.nodes["stem.pool"], g.nodes["stem.or_pool"]
    assert isinstance(pool, nir.SumPool2d) and isinstance(thr, nir.Threshold)
    assert np.asarray(pool.kernel_size).tolist() == [2, 2] and np.asarray(pool.stride).tolist() == [2, 2]
    assert np.all(np.asarray(thr.threshold) == 0.5)
    assert ("stem.sn", "stem.pool") in g.edges and ("stem.pool", "stem.or_pool") in g.edges
    sub = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([2, 42, 42])}), "stem.pool": pool,
               "stem.or_pool": thr, "output": nir.Output(output_type={"output": np.array([2, 21, 21])})},
        edges=[("input", "stem.pool"), ("stem.pool", "stem.or_pool"), ("stem.or_pool", "output")],
        metadata={"dt": 1.0})
    # 21 x 21 = 441 windows per channel >= 256 = all pairs of 2x2 windows over T = 2
    T = 2
    codes = np.array([[i & 15, i >> 4] for i in range(256)] + [[15, 0]] * (441 - 256))  # [441, T]
    x = torch.zeros((T, 1, 2, 42, 42))
    for w, (c0, c1) in enumerate(codes):
        r, c = divmod(w, 21)
        for t, code in enumerate((c0, c1)):
            for j in range(4):
                x[t, 0, :, 2 * r + j // 2, 2 * c + j % 2] = (code >> j) & 1
    y = NIRInterpreter(sub).run(x).outputs["output"][:, 0]  # [T, 2, 21, 21]
    expected = torch.as_tensor((codes > 0).T.reshape(T, 21, 21), dtype=torch.float32)
    assert torch.equal(y, expected.unsqueeze(1).expand(T, 2, 21, 21))
