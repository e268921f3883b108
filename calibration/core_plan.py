"""The core plan: how each population of an integer graph is cut into Lava processes for Loihi 2.

One artifact drives both the packer and the Lava lowering (as rockpool's Xylo mapper: mapper ->
config -> simulator/hardware): :mod:`hw_targets.packing` chooses it (the cut of every population
that needs the fewest cores under lava-loihi's logged tile rule and the per-core budgets),
:mod:`deploy.lava_graph` builds exactly it, and the integer graph carries it
(:attr:`~calibration.integer_graph.IntegerGraph.core_plan`, saved in ``integer_graph.h5``).

A **channel partition** cuts a population along its first axis (channels of a ``(C, H, W)``
population, neurons of a 1-D one) into contiguous parts, each its own Lava process (one
``LIFReset``, ``GradedVec`` for a partial sum), which lava-loihi tiles on its own (cores are not
shared between processes). Why: lava-loihi tiles a layer with power-of-two tile widths and halved
heights and channel groups (``docs/resources.md``), so a 64-channel 32x32 layer takes 32 tiles of
2,048 neurons; cut into 56 + 7 + 1 channels it takes 16 + 2 + 1 tiles of up to 3,584.

The cut changes no integer: a synapse between partitioned populations becomes one process per
(source part, destination part) block of its weights, and the destination's InPort sums them in
the same step. That is exact (:func:`cut_rules` lists when it would not be, and the packer never
cuts there):

* **conv** (groups 1): each block is the convolution over the source part's input channels; the
  sum of the blocks equals the whole convolution unless some block's sum wraps at 24 bits (Lava's
  Conv output), so a population read by a conv whose worst-case sum reaches 2^23 stays whole;
* **grouped conv** (pooling): a block must hold whole groups on both sides, so the destination is
  cut exactly as its source (scaled by the channels per group) and the source at group boundaries;
* **dense**: a block is a sub-matrix; blocks from different source parts are shifted by the weight
  exponent separately, which is exact for ``weight_exp >= 0`` (a left shift distributes over the
  sum) but floors each block for a negative one, so the source of such a synapse stays whole;
* **identity**: element-wise: blocks on the overlapping channels, always exact;
* a synapse that reads a channel range of its source (:attr:`Synapse.src_channels`, a fan-in
  split part) needs the source cut at the range's ends.

A plan also says which identity synapses are lowered as **depthwise 1x1 convolutions**
(:attr:`CorePlan.depthwise`, :func:`depthwise_eligible`): a one-to-one synapse whose weight is the
same at every position of a channel, without delay, is exactly a ``Conv`` with ``groups = C`` and
one weight per channel (:func:`as_depthwise`). As a ``Sparse`` process lava-loihi stores it once
per synapse and routes every source neuron (a 64-bit unit and an input axon per neuron); as a
convolution it stores one weight per channel on each core and takes one or two input axons
(``loihi2-resources.md`` section 2), so the populations it feeds fit full tiles. A depthwise
convolution is a grouped conv: its destination is cut exactly as its source. The packer chooses
the lowering that needs fewer cores; :func:`lowered_synapses` is the graph's synapses as the
packer costs them and :mod:`deploy.lava_graph` builds them.

The reference (:mod:`calibration.reference`) never reads the plan: it is the same integers cut
differently, and parity reassembles the parts before comparing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from xoresnet.errors import UnsupportedModelError

PLAN_FORMAT = "xoresnet-core-plan"
#: 2 added ``depthwise`` (a version-1 plan lowers every identity synapse as ``Sparse``).
PLAN_VERSION = 2
#: A conv's partial sums must stay below this in magnitude to add up exactly after Lava's 24-bit wrap.
CONV_WRAP_LIMIT = 1 << 23


@dataclass(frozen=True)
class PopulationPlan:
    """How one population is cut: ``parts`` (sizes along its first axis, in order, summing to it),
    and per part what the packer expects lava-loihi to make of it: ``tiles`` (``[tx, ty, tc]`` of
    a spatial part, None for a 1-D one) and ``cores``."""

    population: str
    parts: tuple[int, ...]
    tiles: tuple[Optional[tuple[int, int, int]], ...]
    cores: tuple[int, ...]

    def ranges(self) -> list[tuple[int, int]]:
        """``[(start, stop)]`` of the parts along the first axis."""
        edges = np.concatenate([[0], np.cumsum(self.parts)]).tolist()
        return [(int(a), int(b)) for a, b in zip(edges, edges[1:])]

    def to_dict(self) -> dict[str, Any]:
        return {"parts": list(self.parts), "tiles": [list(t) if t else None for t in self.tiles],
                "cores": list(self.cores)}


@dataclass
class CorePlan:
    """Every population's :class:`PopulationPlan` (a population not listed is one part), how the
    plan was made (``method``), and the identity synapses lowered as depthwise convolutions
    (``depthwise``, names; module docstring)."""

    populations: dict[str, PopulationPlan] = field(default_factory=dict)
    method: str = ""
    depthwise: frozenset[str] = frozenset()

    def ranges(self, name: str, size: int) -> list[tuple[int, int]]:
        """The parts of population ``name`` (first axis of ``size``) as ``[(start, stop)]``."""
        p = self.populations.get(name)
        return p.ranges() if p is not None else [(0, int(size))]

    @property
    def cut_populations(self) -> int:
        return sum(len(p.parts) > 1 for p in self.populations.values())

    @property
    def parts(self) -> int:
        return sum(len(p.parts) for p in self.populations.values())

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "method": self.method,
                "populations": {name: p.to_dict() for name, p in self.populations.items()},
                "depthwise": sorted(self.depthwise)}

    @classmethod
    def from_dict(cls, d: Any) -> "CorePlan":
        """Read :meth:`to_dict`'s form back; anything malformed is an
        :class:`~xoresnet.errors.UnsupportedModelError` naming it."""
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise UnsupportedModelError("the core plan is not an xoresnet core plan")
        if not isinstance(d.get("version"), int) or d["version"] > PLAN_VERSION:
            raise UnsupportedModelError(f"core plan version {d.get('version')!r} is newer than {PLAN_VERSION}")
        pops = d.get("populations")
        if not isinstance(pops, dict):
            raise UnsupportedModelError("the core plan has no 'populations' mapping")
        out = {}
        for name, p in pops.items():
            try:
                parts = tuple(int(x) for x in p["parts"])
                tiles = tuple(tuple(int(v) for v in t) if t is not None else None for t in p["tiles"])
                cores = tuple(int(x) for x in p["cores"])
            except (KeyError, TypeError, ValueError):
                raise UnsupportedModelError(f"core plan: population {name!r} is malformed") from None
            if not parts or min(parts) < 1 or len(tiles) != len(parts) or len(cores) != len(parts):
                raise UnsupportedModelError(f"core plan: population {name!r} has malformed parts {list(parts)}")
            out[str(name)] = PopulationPlan(str(name), parts, tiles, cores)
        depthwise = d.get("depthwise", [])
        if not isinstance(depthwise, list) or not all(isinstance(x, str) for x in depthwise):
            raise UnsupportedModelError("core plan: 'depthwise' is not a list of synapse names")
        return cls(out, str(d.get("method", "")), frozenset(depthwise))


# ---------------------------------------------------------------------- identity as depthwise conv

def depthwise_eligible(graph, syn) -> bool:
    """Whether identity synapse ``syn`` of ``graph`` lowers exactly to a depthwise 1x1 ``Conv``:
    from a spiking population (not the graded input or a partial sum) over all of its channels,
    into a population of the same ``(C, H, W)`` shape, no delay (Lava's Conv has none), no weight
    exponent (Lava's Conv ignores it), and one weight per channel (a conv shares its kernel over
    positions)."""
    if syn.kind != "identity" or syn.delay or syn.weight_exp or syn.src_channels is not None:
        return False
    src, dst = graph.populations.get(syn.src), graph.populations.get(syn.dst)
    if src is None or dst is None or src.kind == "partial_sum" or len(dst.shape) != 3:
        return False
    w = np.asarray(syn.weight)
    if w.shape != tuple(dst.shape) or tuple(src.shape) != tuple(dst.shape):
        return False
    per_channel = w.reshape(w.shape[0], -1)
    return bool((per_channel == per_channel[:, :1]).all())


def as_depthwise(syn):
    """Identity synapse ``syn`` (:func:`depthwise_eligible`) as the convolution it lowers to: kind
    ``conv``, weight ``[C, 1, 1, 1]`` (each channel's weight), ``groups = C``, stride 1, no padding."""
    w = np.asarray(syn.weight)
    return replace(syn, kind="conv", weight=w.reshape(w.shape[0], -1)[:, :1].reshape(-1, 1, 1, 1).copy(),
                   groups=int(w.shape[0]), stride=(1, 1), padding=(0, 0))


def depthwise_candidates(graph) -> frozenset[str]:
    """The names of every identity synapse of ``graph`` that may be lowered as a depthwise conv."""
    return frozenset(s.name for s in graph.synapses if depthwise_eligible(graph, s))


def lowered_synapses(graph, depthwise: frozenset[str] = frozenset()) -> list:
    """``graph.synapses`` as the Lava lowering builds them: those named in ``depthwise`` as
    :func:`as_depthwise` convolutions, the others unchanged. Raises
    :class:`~xoresnet.errors.UnsupportedModelError` for a name that is no eligible synapse."""
    out = []
    for s in graph.synapses:
        if s.name in depthwise:
            if not depthwise_eligible(graph, s):
                raise UnsupportedModelError(f"core plan: synapse {s.name} cannot be lowered as a depthwise conv")
            s = as_depthwise(s)
        out.append(s)
    unknown = set(depthwise) - {s.name for s in graph.synapses}
    if unknown:
        raise UnsupportedModelError(f"core plan: no synapse {sorted(unknown)[0]!r} in the graph")
    return out


# ---------------------------------------------------------------------- where a cut stays exact

@dataclass
class CutRules:
    """What keeps a channel partition exact (module docstring), per population:

    * ``cuts``: positions along the first axis where the population must be cut (a synapse reads
      the channel range between them);
    * ``multiple``: every part boundary is a multiple of it (a grouped conv reads the population);
    * ``whole``: population -> why it must stay one part;
    * ``follows``: population -> ``(source, ipg, opg)``: cut exactly as ``source`` is, each source
      boundary ``b`` becoming ``b * opg / ipg`` (a grouped conv from ``source``).
    """

    cuts: dict[str, set[int]] = field(default_factory=dict)
    multiple: dict[str, int] = field(default_factory=dict)
    whole: dict[str, str] = field(default_factory=dict)
    follows: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def conv_worst_sum(weight: np.ndarray, x_max: int) -> int:
    """The largest magnitude any partial sum of a conv/dense weight's rows can reach for inputs in
    ``[0, x_max]``: per output, the larger of its positive and its negative weights' sums, times
    ``x_max``."""
    w = np.asarray(weight, np.int64).reshape(np.shape(weight)[0], -1)
    if w.size == 0:
        return 0
    return int(np.maximum(w.clip(min=0).sum(1), (-w).clip(min=0).sum(1)).max()) * int(x_max)


def cut_rules(graph, depthwise: frozenset[str] = frozenset()) -> CutRules:
    """The :class:`CutRules` of ``graph`` (an :class:`~calibration.integer_graph.IntegerGraph`)
    with the identity synapses named in ``depthwise`` lowered as depthwise convolutions."""
    from .integer_graph import INPUT, READOUT

    rules = CutRules()
    pops = graph.populations
    grouped_in: dict[str, list] = {}
    for s in lowered_synapses(graph, depthwise):
        if s.src_channels is not None and s.src != INPUT:
            rules.cuts.setdefault(s.src, set()).update(int(c) for c in s.src_channels)
        if s.src == INPUT:
            continue
        if s.kind == "dense" and s.weight_exp < 0:
            rules.whole[s.src] = (f"synapse {s.name} (dense, weight_exp {s.weight_exp}) would floor each source part's "
                                  "sum")
        if s.kind == "conv" and int(s.groups) == 1 and conv_worst_sum(s.weight, 1) >= CONV_WRAP_LIMIT:
            rules.whole[s.src] = f"synapse {s.name} (conv) could wrap a source part's sum at 24 bits"
        if s.kind == "conv" and int(s.groups) > 1:
            if s.dst == READOUT:
                continue
            grouped_in.setdefault(s.dst, []).append(s)
    for dst, syns in grouped_in.items():
        if len(syns) > 1:
            for s in syns:
                rules.whole[s.src] = rules.whole[s.dst] = f"population {dst} has several grouped conv inputs"
            continue
        s = syns[0]
        ipg, opg = int(np.shape(s.weight)[1]), int(np.shape(s.weight)[0]) // int(s.groups)
        rules.multiple[s.src] = math.lcm(rules.multiple.get(s.src, 1), ipg)
        rules.follows[dst] = (s.src, ipg, opg)
    # a follower's required cuts are its source's (scaled), latest first: chains of grouped convs
    for dst in reversed([n for n in pops if n in rules.follows]):
        src, ipg, opg = rules.follows[dst]
        for c in rules.cuts.get(dst, ()):
            if (c * ipg) % opg:
                rules.whole[dst] = rules.whole[src] = f"cut {c} of {dst} is not at a group boundary of {src}"
            else:
                rules.cuts.setdefault(src, set()).add(c * ipg // opg)
    for name, cuts in rules.cuts.items():  # the ends of the first axis are no cuts
        size = pops[name].shape[0]
        rules.cuts[name] = {c for c in cuts if 0 < c < size}
    return rules


def followed_parts(plan_parts: tuple[int, ...], ipg: int, opg: int) -> tuple[int, ...]:
    """The parts of a grouped conv's destination that follows a source cut into ``plan_parts``."""
    return tuple(p * opg // ipg for p in plan_parts)


def check_plan(graph, plan: Optional[CorePlan]) -> None:
    """Raise :class:`~xoresnet.errors.UnsupportedModelError` naming the first population whose parts
    in ``plan`` do not sum to its first axis or break a :func:`cut_rules` rule, or the first
    synapse of ``plan.depthwise`` that is not :func:`depthwise_eligible` (the lowering would not be
    exact)."""
    if plan is None:
        return
    rules = cut_rules(graph, plan.depthwise)
    for name, p in plan.populations.items():
        if name not in graph.populations:
            raise UnsupportedModelError(f"core plan: no population {name!r} in the graph")
        size = graph.populations[name].shape[0]
        if sum(p.parts) != size:
            raise UnsupportedModelError(f"core plan: the parts {list(p.parts)} of {name} do not sum to its {size}")
    for name, pop in graph.populations.items():
        parts = plan.populations[name].parts if name in plan.populations else (pop.shape[0],)
        bounds = set(np.cumsum(parts)[:-1].tolist())
        if len(parts) > 1 and name in rules.whole:
            raise UnsupportedModelError(f"core plan: population {name} is cut, but it must stay whole: "
                                        f"{rules.whole[name]}")
        missing = rules.cuts.get(name, set()) - bounds
        if missing:
            raise UnsupportedModelError(f"core plan: population {name} must be cut at {sorted(missing)} (a synapse "
                                        "reads that channel range)")
        m = rules.multiple.get(name, 1)
        if any(b % m for b in bounds):
            raise UnsupportedModelError(f"core plan: a part boundary of {name} is not a multiple of {m} (grouped conv)")
        if name in rules.follows:
            src, ipg, opg = rules.follows[name]
            src_parts = plan.populations[src].parts if src in plan.populations else (graph.populations[src].shape[0],)
            if tuple(parts) != followed_parts(tuple(src_parts), ipg, opg):
                raise UnsupportedModelError(f"core plan: population {name} must be cut as {src} is (grouped conv)")
