"""Fan-in splits, built: a layer whose neurons each read more than one Loihi 2 core can take, summed
exactly in parts.

:mod:`hw_targets.packing` finds the layers that need it and chooses the cut (:class:`FanInCut`);
:func:`apply_fan_in_cuts` builds it into the integer graph, before scheduling:

* per part ``i``, a population ``<layer>.part<i>`` of kind ``partial_sum`` (Lava's ``GradedVec``
  with ``vth = 0``: it sends its summed integer input, unchanged, as a 24-bit graded spike in the
  step the input arrives), fed by the layer's synapses restricted to the part's input ranges
  (``src_channels``: a range of each source's channels; the weights cut to match);
* from each part into the layer, an identity synapse of weight 1 carrying the graded payload
  (``num_message_bits = 24``): the layer's InPort sums the parts in one step.

The partial sums add up to exactly the layer's input: every synapse's output is a sum over its
source channels (convolution, matrix product), cut into contiguous ranges. What would break that
is never cut: a dense/identity synapse with a negative ``weight_exp`` (its shift floors, once per
part instead of once), a grouped convolution (its groups' channels interleave), an identity
synapse (one input per neuron: nothing to gain), and a synapse from the graded input (one
RingBuffer, not cut into channel ranges); they stay on the layer itself. A part's sum must fit the
graded payload: :func:`partial_sum_bound` bounds it from the weights (the packer adds parts until
it fits 24 bits with the sign; the design rules check it), and a conv part stays below Lava's
24-bit wrap with it.

The relay stage adds one step: the scheduler (``calibration.schedule``) sees the partial sums as
populations one step after their sources and delays every other branch to match.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import numpy as np

from xoresnet.errors import UnsupportedModelError

from . import loihi2_limits as lim
from .integer_graph import INPUT, READOUT, IntegerGraph, Population, Synapse

#: ``Population.op`` of a partial sum.
PARTIAL_SUM = "partial_sum"


@dataclass(frozen=True)
class InputRange:
    """Channels ``[start, stop)`` of the first axis of the source synapse ``synapse`` reads (a 1-D
    source: neurons), relative to what it reads already (its own ``src_channels``)."""

    synapse: str
    start: int
    stop: int


@dataclass(frozen=True)
class FanInCut:
    """How to build the fan-in split of ``layer`` (a population, or ``"readout"``): the input
    ranges of each part, in order; every splittable synapse of the layer (:func:`splittable`)
    covered exactly once, the others not named (they stay on the layer). ``reason`` and ``need``:
    the per-core budget one neuron exceeds and by how much (recorded in the graph's meta)."""

    layer: str
    parts: tuple[tuple[InputRange, ...], ...]
    reason: str = ""
    need: float = 0.0


def splittable(s: Synapse) -> bool:
    """Whether synapse ``s`` may be cut into source-channel ranges exactly (module docstring)."""
    if s.src == INPUT:
        return False
    if s.kind == "conv":
        return int(s.groups) == 1
    return s.kind == "dense" and s.weight_exp >= 0


def part_name(layer: str, i: int) -> str:
    return f"{layer}.part{i}"


def restrict(graph: IntegerGraph, s: Synapse, start: int, stop: int, name: str, dst: str) -> Synapse:
    """Synapse ``s`` reading only channels ``[start, stop)`` of what it reads, into ``dst``."""
    w = np.asarray(s.weight)
    read = graph.read_shape(s)
    if s.kind == "conv":
        w = w[:, start:stop]
    else:
        per = int(np.prod(read[1:])) if len(read) > 1 else 1
        w = w.reshape(w.shape[0], -1)[:, start * per: stop * per]
    base = s.src_channels[0] if s.src_channels is not None else 0
    return replace(s, name=name, dst=dst, weight=np.ascontiguousarray(w), src_channels=(base + start, base + stop))


def _neuron_bounds(graph: IntegerGraph, s: Synapse, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per destination neuron (``shape``), the largest positive and negative sums ``s`` can give."""
    x_max = graph.input_levels if s.src == INPUT else 1
    w = np.asarray(s.weight, np.int64)
    if s.kind == "identity":
        rows = w.reshape(-1, 1)
    else:
        rows = w.reshape(w.shape[0], -1)
    pos, neg = rows.clip(min=0).sum(1) * x_max, (-rows).clip(min=0).sum(1) * x_max
    if s.weight_exp > 0:
        pos, neg = pos << s.weight_exp, neg << s.weight_exp
    n = int(np.prod(shape))
    if len(pos) != n:  # a conv: one bound per output channel, the same at every position
        pos, neg = np.repeat(pos, n // len(pos)), np.repeat(neg, n // len(neg))
    return pos, neg


def partial_sum_bound(graph: IntegerGraph, syns: list[Synapse], shape: tuple[int, ...]) -> int:
    """The largest magnitude the summed output of ``syns`` (into one population of ``shape``) can
    reach: per neuron the larger of its positive and its negative contributions over all of them
    (binary spikes count 1, input pixels ``input_levels``)."""
    pos, neg = np.zeros(int(np.prod(shape)), np.int64), np.zeros(int(np.prod(shape)), np.int64)
    for s in syns:
        p, n = _neuron_bounds(graph, s, shape)
        pos, neg = pos + p, neg + n
    return int(np.maximum(pos, neg).max(initial=0))


def payload_bits(bound: int) -> int:
    """Bits (sign included) of a graded payload of magnitude up to ``bound``."""
    return int(bound).bit_length() + 1


def apply_fan_in_cuts(graph: IntegerGraph, cuts: list[FanInCut]) -> IntegerGraph:
    """A new, unscheduled graph with every cut of ``cuts`` built (module docstring); ``graph`` (an
    unscheduled graph: synapses from their original sources) is not changed. Raises
    :class:`~xoresnet.errors.UnsupportedModelError` for a cut that does not cover the layer's
    splittable synapses exactly once or names one that is not, or whose partial sums overflow the
    graded payload."""
    if graph.scheduled:
        raise ValueError("build fan-in splits before scheduling (relays read the original sources)")
    pops = dict(graph.populations)
    synapses = list(graph.synapses)
    for cut in cuts:
        layer = cut.layer
        if layer != READOUT and layer not in pops:
            raise UnsupportedModelError(f"fan-in split: no layer {layer!r}")
        shape = (graph.num_classes,) if layer == READOUT else tuple(pops[layer].shape)
        incoming = {s.name: s for s in synapses if s.dst == layer}
        covered: dict[str, list[tuple[int, int]]] = {}
        for part in cut.parts:
            for r in part:
                s = incoming.get(r.synapse)
                if s is None or not splittable(s):
                    raise UnsupportedModelError(f"fan-in split of {layer}: {r.synapse!r} is not a splittable synapse "
                                                "into it")
                covered.setdefault(r.synapse, []).append((int(r.start), int(r.stop)))
        for name, s in incoming.items():
            if not splittable(s):
                continue
            ranges = sorted(covered.get(name, []))
            n = graph.read_shape(s)[0]
            if not ranges or ranges[0][0] != 0 or ranges[-1][1] != n or any(
                    a[1] != b[0] for a, b in zip(ranges, ranges[1:])) or any(a >= b for a, b in ranges):
                raise UnsupportedModelError(f"fan-in split of {layer}: the ranges of {name} {ranges} do not cover its "
                                            f"{n} source channels exactly once")
        block = None if layer == READOUT else pops[layer].block
        new_pops, part_syns, sum_syns = {}, [], []
        for i, part in enumerate(cut.parts):
            pname = part_name(layer, i)
            if pname in pops:
                raise UnsupportedModelError(f"fan-in split of {layer}: a population {pname} exists already")
            zero = np.zeros(shape, np.int64)
            new_pops[pname] = Population(pname, shape, du_code=lim.DU_RANGE[1], dv_code=lim.DV_RANGE[1], vth_mant=0, bias_mant=zero,
                                         bias_exp=zero.copy(), kind="partial_sum", op=PARTIAL_SUM, block=block,
                                         role="partial_sum")
            mine = [restrict(graph, incoming[r.synapse], r.start, r.stop, f"{r.synapse}[{r.start}:{r.stop}]", pname)
                    for r in part]
            bits = payload_bits(partial_sum_bound(graph, mine, shape))
            if bits > lim.GRADED_PAYLOAD.value:
                raise UnsupportedModelError(f"fan-in split of {layer}: part {i}'s partial sums need {bits} bits, more "
                                            f"than the {lim.GRADED_PAYLOAD.value}-bit graded payload")
            part_syns += mine
            sum_syns.append(Synapse(f"{pname}->{layer}", pname, layer, "identity", np.ones(shape, np.int64),
                                    graded=True))
        # partial sums just before the layer (topological order), their synapses in place of the cut ones
        order = list(pops)
        at = order.index(layer) if layer != READOUT else len(order)
        pops = {name: pops[name] for name in order[:at]} | new_pops | {name: pops[name] for name in order[at:]}
        kept = [s for s in synapses if not (s.dst == layer and s.name in covered)]
        first = next(i for i, s in enumerate(synapses) if s.dst == layer and s.name in covered)
        synapses = kept[:first] + part_syns + sum_syns + kept[first:]
    out = IntegerGraph(graph.input_shape, graph.input_levels, graph.timesteps, pops, synapses, graph.readout_bias,
                       graph.readout_scale, graph.reset_interval, dict(graph.meta))
    out.meta["fan_in_splits"] = [{"layer": c.layer, "reason": c.reason, "need": c.need,
                                  "parts": [[vars(r) for r in p] for p in c.parts]} for c in cuts]
    return out


def split_layers(graph: IntegerGraph) -> dict[str, list[str]]:
    """The built fan-in splits of ``graph``: layer -> its ``partial_sum`` populations, in order."""
    out: dict[str, list[str]] = {}
    for s in graph.synapses:
        if s.src in graph.populations and graph.populations[s.src].kind == "partial_sum":
            out.setdefault(s.dst, []).append(s.src)
    return out
