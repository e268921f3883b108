"""Delay balancing: make every merge receive its branches at the same timestep on Loihi.

On Loihi (and in Lava) every synapse hop takes one step, a ``DelaySparse``/``DelayDense`` synapse
``1 + delay`` steps, and a population fires in the step its input arrives. A population's
**latency** ``L`` is the number of steps between a sample's input and its own output for the
same timestep (the input has latency 0). For each population, in topological order::

    L(p) = max over incoming synapses s of  L(src(s)) + 1 + model_delay(s)
    delay(s) = L(p) - L(src(s)) - 1                     (the shorter branches wait)

(``model_delay``: steps the model itself delays a synapse, a NIR ``Delay``; it is kept.)

A delay rides on the synapse itself when it is a dense or identity (Sparse) synapse and at most
62 (netx's limit; Lava's is 63). A conv synapse has no delay on Loihi, so its source is first
copied through **relay** populations (identity synapse into a LIF with ``vth = 0``,
``du = dv = 4095``: it fires exactly when its input did), the relay synapse carrying the delay;
delays over 62 chain several relays. Relays are shared between synapses that need the same source
delayed by the same amount. The readout is balanced the same way. A fan-in split
(:mod:`calibration.fan_in`) needs nothing special: its partial sums are populations one step
after their sources, so the layer they feed comes one step later and its other inputs and
consumers are delayed to match (a partial sum's graded payload rides on an identity synapse and
its delay; it cannot pass a relay).

The reset interval ``P`` (stream steps per sample) is the smallest power of two >= ``T``: Loihi 2
hardware resets ``LIFReset`` only at power-of-two intervals, and the simulator runs the same graph.
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np

from calibration import fixed_point as fx
from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Population, Synapse
from xoresnet.errors import UnsupportedModelError


def reset_interval_for(timesteps: int) -> int:
    return 1 << max(0, (timesteps - 1).bit_length())


def schedule(graph: IntegerGraph, reset_interval: Optional[int] = None) -> IntegerGraph:
    """A copy of ``graph`` with latencies, balanced delays, relays and the reset interval set."""
    P = reset_interval or reset_interval_for(graph.timesteps)
    if P < graph.timesteps:
        raise UnsupportedModelError(f"reset interval {P} is shorter than the {graph.timesteps} timesteps of a sample")
    g = copy.deepcopy(graph)
    for s in g.synapses:
        s.delay = 0
    latency = {INPUT: 0}
    populations: dict[str, Population] = {}
    synapses: list[Synapse] = []
    relays: dict[tuple[str, int], str] = {}  # (source, delay) -> relay population

    def delayed_source(src: str, d: int, block: Optional[str]) -> str:
        """A population that fires ``d`` steps after ``src`` (a relay chain), created once."""
        if d == 0:
            return src
        if (src, d) in relays:
            return relays[(src, d)]
        if src == INPUT or g.populations[src].kind == "partial_sum":
            raise UnsupportedModelError(f"{'the graded input' if src == INPUT else 'partial sum ' + src} would need a "
                                        f"delay of {d} steps, which relays (binary spikes) cannot give")
        hop = min(d, fx.DELAY_MAX + 1)  # one relay hop covers 1..63 steps
        prev = delayed_source(src, d - hop, block)
        shape = g.source_shape(src)
        name = f"{src}.relay{d}"
        populations[name] = Population(
            name, shape, du_code=fx.DU_RANGE[1], dv_code=fx.DV_RANGE[1], vth_mant=0, bias_mant=np.zeros(shape, np.int64),
            bias_exp=np.zeros(shape, np.int64), kind="relay", op="relay", block=block, role="relay", scale=1.0,
            latency=latency[prev] + hop)
        synapses.append(Synapse(f"{prev}->{name}", prev, name, "identity", np.ones(shape, np.int64), delay=hop - 1))
        latency[name] = latency[prev] + hop
        relays[(src, d)] = name
        return name

    def balance(dst: str, incoming: list[Synapse], block: Optional[str]) -> int:
        target = max(latency[s.src] + 1 + s.model_delay for s in incoming)
        for s in incoming:
            d = target - latency[s.src] - 1
            if d and s.kind != "conv" and d <= fx.DELAY_MAX:
                s.delay = d
            elif d:
                s.src = delayed_source(s.src, d, block)
            synapses.append(s)
        return target

    for name, pop in g.populations.items():
        incoming = g.incoming(name)
        if not incoming:
            raise UnsupportedModelError(f"population {name} has no input")
        pop.latency = latency[name] = balance(name, incoming, pop.block)
        populations[name] = pop
    balance(READOUT, g.readout, None)
    g.populations = populations  # relays were inserted just before their first consumer: still topological
    g.synapses = synapses
    g.reset_interval = P
    return g
