"""Design-rule check (DRC) and core packing of an integer graph for a target.

**Connectivity** (:func:`connectivity`), exact: the synapses of a synapse process are the
(source neuron, destination neuron) pairs joined by a *nonzero* weight. For a conv synapse they
are counted by convolving an all-ones source with the indicator kernel ``weight != 0`` (fan-in of
every destination neuron, padding, stride and groups included) and by the transposed convolution
of an all-ones destination (fan-out of every source neuron); dense: nonzero entries per row and
column; identity: nonzero diagonal entries.

**Synaptic memory model** (an *estimate* of this tool; Intel's compiler decides the real
encoding): every synapse is stored, as Loihi 1 does for sparse connectivity (a conv is *not*
assumed to share its kernel, which Loihi 2 may be able to do)::

    bits per synapse = weight bits + delay bits + index bits
    weight bits  = the synapse process's stored precision: smallest num_weight_bits holding its
                   weights (single sign: magnitude bits; mixed sign: two's complement of w / 2)
    delay bits   = 6 if the process has a synaptic delay (DelaySparse/DelayDense), else 0
    index bits   = 0 for a fully connected (dense) matrix, else 12 (= log2 of 4096 neurons per
                   core: the destination index of a sparse synapse)

A neuron's synaptic memory is the sum over its incoming synapses; it lives on the neuron's core.

**Packing** (:func:`pack`): every population (and the readout, as a ``K``-neuron accumulator
population: the host reads the readout synapses' output, and on Loihi 2 those dendritic sums need
neurons on a core - an estimate) is cut into contiguous fragments in PyTorch ``(C, H, W)`` flatten
order, greedily, each as large as the per-core budgets allow: ``neurons_per_core`` neurons, the
synaptic memory budget, the core memory (synapses + 64 bits of state per neuron), and
``axons_in_per_core`` input axons (distinct (source neuron, synapse process) routes into the
fragment; a fragment over it is halved until it fits). Fragments are then placed on cores
first-fit-decreasing (largest first): a fragment joins an existing core only if every budget of
that core still holds, with at most ``neuron_groups_per_core`` fragments per core, so populations
share a core only when both fit. Cores go to chips in order, ``cores_per_chip`` per chip. Output
axons of a core are the (source neuron, destination core, synapse process) routes of its neurons.

**Rules**: violations of enforced limits are errors (:class:`~xoresnet.errors.DesignRuleError`
from :func:`require_design_rules`), each naming the layer, the limit and the value; a value over
80 % of a capacity limit is a warning; a violated limit the target does not enforce (the capacity
limits of ``lava-sim``) is a warning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Synapse
from xoresnet.errors import DesignRuleError, UnsupportedModelError

from .base import HwTarget, Limit, System
from .loihi2 import NEURON_STATE_BITS

#: Layer name of the readout accumulators in tables and packing.
READOUT_LAYER = READOUT
INDEX_BITS = 12
DELAY_FIELD_BITS = 6
NEAR_LIMIT = 0.8

SYNMEM_MODEL = ("estimate: bits per synapse = weight bits (stored precision of the synapse process) + 6 delay bits "
                "(delayed processes only) + 12 index bits (sparse processes; 0 for a fully connected matrix); every "
                "nonzero (source, destination) pair is stored, convolutions are not assumed to share kernels")
PACKING_METHOD = ("contiguous fragments in (C, H, W) order, each filled up to the per-core budgets (neurons, synaptic "
                  "memory, core memory, input axons), then first-fit-decreasing onto cores (<= neuron_groups_per_core "
                  "fragments per core, every budget checked); cores fill chips in order")


# ---------------------------------------------------------------------- connectivity

@dataclass
class SynapseConn:
    """Exact connectivity of one synapse process (flat PyTorch order on both sides)."""

    syn: Synapse
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]
    fan_in: np.ndarray  # int64 [dst_size]: nonzero synapses into each destination neuron
    fan_out: np.ndarray  # int64 [src_size]: nonzero synapses out of each source neuron

    @property
    def src_size(self) -> int:
        return int(np.prod(self.src_shape))

    @property
    def dst_size(self) -> int:
        return int(np.prod(self.dst_shape))

    @property
    def count(self) -> int:
        return int(self.fan_in.sum())

    @property
    def fully_connected(self) -> bool:
        return self.count == self.src_size * self.dst_size

    def sources_of(self, dst_mask: np.ndarray) -> np.ndarray:
        """bool ``[src_size]``: the source neurons with a synapse into a destination in ``dst_mask``."""
        s = self.syn
        nz = s.weight != 0
        if s.kind == "identity":
            return dst_mask & nz.reshape(-1)
        if s.kind == "dense":
            return nz[dst_mask].any(0) if dst_mask.any() else np.zeros(self.src_size, bool)
        m = torch.as_tensor(dst_mask.reshape((1,) + self.dst_shape), dtype=torch.float64)
        return _conv_t(m, s, self.src_shape).reshape(-1).numpy() > 0


def _conv_t(dst: torch.Tensor, s: Synapse, src_shape: tuple[int, ...]) -> torch.Tensor:
    """Transposed convolution of ``dst [1, C_out, Ho, Wo]`` with the indicator kernel of ``s``."""
    ind = torch.as_tensor(s.weight != 0, dtype=torch.float64)
    k = ind.shape[2:]
    out_pad = tuple(int(src_shape[1 + i] - ((dst.shape[2 + i] - 1) * s.stride[i] - 2 * s.padding[i] + k[i]))
                    for i in range(2))
    return F.conv_transpose2d(dst, ind, stride=tuple(s.stride), padding=tuple(s.padding), output_padding=out_pad,
                              groups=int(s.groups))


def synapse_connectivity(graph: IntegerGraph, s: Synapse) -> SynapseConn:
    src_shape = tuple(graph.source_shape(s.src))
    dst_shape = (graph.num_classes,) if s.dst == READOUT else tuple(graph.populations[s.dst].shape)
    nz = np.asarray(s.weight) != 0
    if s.kind == "identity":
        fan = nz.reshape(-1).astype(np.int64)
        return SynapseConn(s, src_shape, dst_shape, fan, fan.copy())
    if s.kind == "dense":
        nz = nz.reshape(nz.shape[0], -1)
        return SynapseConn(s, src_shape, dst_shape, nz.sum(1).astype(np.int64), nz.sum(0).astype(np.int64))
    if s.kind != "conv":
        raise UnsupportedModelError(f"synapse {s.name}: unknown kind {s.kind!r}")
    ind = torch.as_tensor(nz, dtype=torch.float64)
    with torch.no_grad():
        fan_in = F.conv2d(torch.ones((1,) + src_shape, dtype=torch.float64), ind, stride=tuple(s.stride),
                          padding=tuple(s.padding), groups=int(s.groups))
        if tuple(fan_in.shape[1:]) != dst_shape:
            raise UnsupportedModelError(f"synapse {s.name}: conv output {tuple(fan_in.shape[1:])} does not match "
                                        f"population {s.dst} {dst_shape}")
        fan_out = _conv_t(torch.ones((1,) + dst_shape, dtype=torch.float64), s, src_shape)
    return SynapseConn(s, src_shape, dst_shape, fan_in.reshape(-1).round().long().numpy(),
                       fan_out.reshape(-1).round().long().numpy())


def connectivity(graph: IntegerGraph) -> dict[str, SynapseConn]:
    """:class:`SynapseConn` of every synapse, by synapse name."""
    return {s.name: synapse_connectivity(graph, s) for s in graph.synapses}


# ---------------------------------------------------------------------- weights

def stored_weight_bits(weight: np.ndarray, sign_mode: str) -> int:
    """The smallest ``num_weight_bits`` that stores ``weight`` (see the module docstring)."""
    w = np.asarray(weight).astype(np.int64)
    if w.size == 0 or not np.any(w):
        return 1
    if sign_mode == "mixed":
        m = w >> 1
        lo, hi = int(m.min()), int(m.max())
        return max(int(hi).bit_length(), int(-lo - 1).bit_length()) + 1
    return max(1, int(np.abs(w).max()).bit_length())


# ---------------------------------------------------------------------- results

@dataclass
class Finding:
    """A violation or warning: ``layer``, the ``limit`` (name), the ``value`` and the limit's value."""

    layer: str
    limit: str
    value: float
    limit_value: Any
    message: str
    estimate: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SynapseResources:
    name: str
    src: str
    dst: str
    kind: str
    synapses: int
    fan_in_max: int
    fan_out_max: int
    weight_bits: int
    sign_mode: str
    max_abs_weight: int
    delay: int
    graded: bool
    index_bits: int
    delay_bits: int
    bits_per_synapse: int
    synmem_bits: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LayerResources:
    """One population (or the readout accumulators) and what it needs."""

    name: str
    kind: str
    op: Optional[str]
    block: Optional[str]
    neurons: int
    latency: Optional[int]
    synapses: int = 0  # incoming
    synmem_bits: int = 0
    fan_in_max: int = 0  # incoming synapses of the most connected neuron
    fan_out_max: int = 0  # outgoing synapses of the most connected neuron
    weight_bits: int = 0  # max over incoming synapse processes
    sign_modes: list[str] = field(default_factory=list)
    delay_max: int = 0
    cores: int = 0
    fragments: int = 0
    axons_in_max: int = 0  # over this layer's cores
    axons_out_max: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Fragment:
    layer: str
    start: int
    stop: int
    synmem_bits: int
    axons_in: int
    sources: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # synapse -> bool [src]

    @property
    def neurons(self) -> int:
        return self.stop - self.start


@dataclass
class Core:
    index: int
    fragments: list[Fragment] = field(default_factory=list)
    axons_out: int = 0

    @property
    def neurons(self) -> int:
        return sum(f.neurons for f in self.fragments)

    @property
    def synmem_bits(self) -> int:
        return sum(f.synmem_bits for f in self.fragments)

    @property
    def axons_in(self) -> int:
        return sum(f.axons_in for f in self.fragments)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(f.layer for f in self.fragments))


@dataclass
class Packing:
    cores: list[Core]
    cores_per_chip: int
    cores_per_layer: dict[str, int]
    systems: list[dict[str, Any]]
    method: str = PACKING_METHOD

    @property
    def num_cores(self) -> int:
        return len(self.cores)

    @property
    def chips(self) -> int:
        return max(1, math.ceil(len(self.cores) / self.cores_per_chip)) if self.cores else 0

    def to_dict(self, max_cores: int = 4096) -> dict[str, Any]:
        table = [{"core": c.index, "chip": c.index // self.cores_per_chip, "layers": c.layers,
                  "fragments": [[f.layer, f.start, f.stop] for f in c.fragments], "neurons": c.neurons,
                  "synmem_bits": c.synmem_bits, "axons_in": c.axons_in, "axons_out": c.axons_out}
                 for c in self.cores[:max_cores]]
        return {"method": self.method, "cores": self.num_cores, "chips": self.chips,
                "cores_per_chip": self.cores_per_chip, "cores_per_layer": dict(self.cores_per_layer),
                "systems": self.systems, "core_table": table, "core_table_truncated": len(self.cores) > max_cores}


@dataclass
class DRCResult:
    target: str
    system: Optional[str]
    violations: list[Finding]
    warnings: list[Finding]
    layers: list[LayerResources]
    synapses: list[SynapseResources]
    packing: Packing
    synmem_model: str = SYNMEM_MODEL

    @property
    def passed(self) -> bool:
        return not self.violations

    def layer(self, name: str) -> LayerResources:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def systems_fit(self) -> list[str]:
        return [s["name"] for s in self.packing.systems if s["fits"]]

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "system": self.system, "passed": self.passed,
                "violations": [f.to_dict() for f in self.violations],
                "warnings": [f.to_dict() for f in self.warnings],
                "layers": [l.to_dict() for l in self.layers],
                "synapses": [s.to_dict() for s in self.synapses],
                "packing": self.packing.to_dict(), "synmem_model": self.synmem_model,
                "systems_fit": self.systems_fit()}


# ---------------------------------------------------------------------- checks

class _Collector:
    def __init__(self, target: HwTarget):
        self.target = target
        self.violations: list[Finding] = []
        self.warnings: list[Finding] = []

    def over(self, layer: str, limit: Limit, value: float, message: str) -> None:
        """``value`` exceeds ``limit``: a violation if the target enforces it, else a warning."""
        f = Finding(layer, limit.name, value, limit.value, message, limit.estimate)
        if limit.enforced:
            self.violations.append(f)
        else:
            f.message = f"would not fit {self._hw()}: {message}"
            self.warnings.append(f)

    def check(self, layer: str, limit: Limit, value: float, what: str, *, near: bool = True,
              subject: Optional[str] = None) -> None:
        """Compare ``value`` with a capacity ``limit`` (violation above it, warning above 80 %)."""
        est = " (estimated limit)" if limit.estimate else ""
        subject = subject or f"layer {layer}"
        if value > limit.value:
            self.over(layer, limit, value, f"{subject}: {what} {value:g} exceeds {limit.name} = "
                                           f"{limit.value:g} {limit.unit}{est}")
        elif near and value > NEAR_LIMIT * limit.value:
            self.warnings.append(Finding(
                layer, limit.name, value, limit.value,
                f"{subject}: {what} {value:g} is {100 * value / limit.value:.0f}% of {limit.name} = "
                f"{limit.value:g} {limit.unit}{est}", limit.estimate))

    def _hw(self) -> str:
        return "Loihi 2"


def _layers(graph: IntegerGraph, conns: dict[str, SynapseConn], target: HwTarget, col: _Collector
            ) -> tuple[list[LayerResources], list[SynapseResources], dict[str, np.ndarray]]:
    """Per-layer and per-synapse resources; ``bits[layer]``: synaptic memory per neuron."""
    lim = target.limits
    layers: dict[str, LayerResources] = {}
    for p in graph.populations.values():
        layers[p.name] = LayerResources(p.name, p.kind, p.op, p.block, p.size,
                                        p.latency if graph.scheduled else None)
    if graph.readout:
        lat = None
        if graph.scheduled:
            from deploy.reference import readout_latency_of

            try:
                lat = readout_latency_of(graph)
            except ValueError:
                lat = None
        layers[READOUT_LAYER] = LayerResources(READOUT_LAYER, "readout", None, None, graph.num_classes, lat)
    bits = {name: np.zeros(l.neurons, np.int64) for name, l in layers.items()}
    fan_in = {name: np.zeros(l.neurons, np.int64) for name, l in layers.items()}
    fan_out = {name: np.zeros(l.neurons, np.int64) for name, l in layers.items()}
    syn_res = []
    for s in graph.synapses:
        c = conns[s.name]
        mode = s.sign_mode
        wbits = stored_weight_bits(s.weight, mode)
        dbits = DELAY_FIELD_BITS if s.delay else 0
        ibits = 0 if c.fully_connected else INDEX_BITS
        per = wbits + dbits + ibits
        res = SynapseResources(s.name, s.src, s.dst, s.kind, c.count, int(c.fan_in.max(initial=0)),
                               int(c.fan_out.max(initial=0)), wbits, mode,
                               int(np.abs(s.weight).max(initial=0)), int(s.delay), bool(s.graded), ibits, dbits, per,
                               c.count * per)
        syn_res.append(res)
        dst = layers[s.dst]
        dst.synapses += c.count
        dst.synmem_bits += c.count * per
        dst.weight_bits = max(dst.weight_bits, wbits)
        if mode not in dst.sign_modes:
            dst.sign_modes.append(mode)
        dst.delay_max = max(dst.delay_max, int(s.delay))
        bits[s.dst] += c.fan_in * per
        fan_in[s.dst] += c.fan_in
        if s.src != INPUT:
            fan_out[s.src] += c.fan_out
        # ---- per-synapse rules
        where = f"{s.dst} (synapse {s.name})"
        col.check(where, lim["weight_bits"], wbits, "weight bits", near=False)
        if mode == "mixed" and np.any(np.asarray(s.weight) % 2):
            odd = int(np.asarray(s.weight)[np.asarray(s.weight) % 2 != 0].flat[0])
            col.over(where, lim["weight_bits"], wbits,
                     f"layer {where}: mixed-sign weight {odd} is odd; Loihi stores 7 magnitude bits + sign "
                     "(even values only)")
        if s.kind == "conv" and s.delay:
            col.over(where, lim["delay_max"], int(s.delay),
                     f"layer {where}: a conv synapse cannot carry a delay ({s.delay}); Lava's Conv has none")
        col.check(where, lim["delay_max"], int(s.delay), "synaptic delay")
        if s.graded:
            col.check(where, lim["graded_payload_bits"], max(1, int(graph.input_levels).bit_length()),
                      "graded payload bits", near=False)
    for name, l in layers.items():
        l.fan_in_max = int(fan_in[name].max(initial=0))
        l.fan_out_max = int(fan_out[name].max(initial=0))
        # a neuron's inputs must all enter its core: fan-in bounded by the input axons of one core
        col.check(name, lim["axons_in_per_core"], l.fan_in_max, "fan-in per neuron (synapses)")
    return list(layers.values()), syn_res, bits


def _routes(graph: IntegerGraph, conns: dict[str, SynapseConn], cores: list[Core],
            sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Output axon routes per source neuron: (destination core, synapse process) pairs it reaches."""
    routes = {name: np.zeros(n, np.int64) for name, n in sizes.items()}
    for s in graph.synapses:
        if s.src == INPUT:
            continue
        per_core: dict[int, np.ndarray] = {}
        for c in cores:
            for f in c.fragments:
                if f.layer == s.dst:
                    src = f.sources[s.name]
                    per_core[c.index] = per_core[c.index] | src if c.index in per_core else src
        for v in per_core.values():
            routes[s.src] += v
    return routes


def pack(graph: IntegerGraph, target: HwTarget, conns: dict[str, SynapseConn], layers: list[LayerResources],
         bits: dict[str, np.ndarray], col: Optional[_Collector] = None) -> Packing:
    """Fragments and cores (see the module docstring)."""
    lim = target.limits
    npc = int(lim["neurons_per_core"].value)
    syn_budget = int(lim["synmem_bits_per_core"].value)
    mem_budget = int(lim["core_memory_bits"].value)
    ax_budget = int(lim["axons_in_per_core"].value)
    out_budget = int(lim["axons_out_per_core"].value)
    groups = int(lim["neuron_groups_per_core"].value)
    cpc = int(lim["cores_per_chip"].value)
    incoming = {l.name: [s for s in graph.synapses if s.dst == l.name] for l in layers}
    sizes = {l.name: l.neurons for l in layers}

    def fragment(layer: str, start: int, stop: int) -> list[Fragment]:
        mask = np.zeros(sizes[layer], bool)
        mask[start:stop] = True
        sources = {s.name: conns[s.name].sources_of(mask) for s in incoming[layer]}
        axons = int(sum(int(v.sum()) for v in sources.values()))
        if axons > ax_budget and stop - start > 1:
            mid = (start + stop) // 2
            return fragment(layer, start, mid) + fragment(layer, mid, stop)
        return [Fragment(layer, start, stop, int(bits[layer][start:stop].sum()), axons, sources)]

    def fits(c: Core, f: Fragment, routes: Optional[dict[str, np.ndarray]] = None, used: int = 0) -> bool:
        ok = (len(c.fragments) < groups and c.neurons + f.neurons <= npc
              and c.synmem_bits + f.synmem_bits <= syn_budget
              and c.synmem_bits + f.synmem_bits + (c.neurons + f.neurons) * NEURON_STATE_BITS <= mem_budget
              and c.axons_in + f.axons_in <= ax_budget)
        if ok and routes is not None:
            ok = used + int(routes[f.layer][f.start:f.stop].sum()) <= out_budget
        return ok

    frags: list[Fragment] = []
    for l in layers:
        b = bits[l.name]
        cum = np.concatenate([[0], np.cumsum(b)])
        cum_mem = np.concatenate([[0], np.cumsum(b + NEURON_STATE_BITS)])
        start = 0
        while start < l.neurons:
            end = min(start + npc, l.neurons)
            end = min(end, int(np.searchsorted(cum, cum[start] + syn_budget, side="right")) - 1)
            end = min(end, int(np.searchsorted(cum_mem, cum_mem[start] + mem_budget, side="right")) - 1)
            if end <= start:  # one neuron's synapses do not fit a core
                if col is not None:
                    col.over(l.name, lim["synmem_bits_per_core"], int(b[start]),
                             f"layer {l.name}: neuron {start} needs {int(b[start])} bits of synaptic memory, more "
                             f"than synmem_bits_per_core = {syn_budget} (estimated limit)")
                end = start + 1
            frags += fragment(l.name, start, end)
            start = end
    # first-fit-decreasing onto cores
    cores: list[Core] = []
    for f in sorted(frags, key=lambda f: (-f.neurons, -f.synmem_bits)):
        for c in cores:
            if fits(c, f):
                c.fragments.append(f)
                break
        else:
            cores.append(Core(len(cores), [f]))
    # output axons: split cores whose sources reach too many (core, synapse) routes; splitting a
    # destination adds routes to its sources, so repeat until nothing changes
    for _ in range(64):
        routes = _routes(graph, conns, cores, sizes)
        over = [c for c in cores if sum(int(routes[f.layer][f.start:f.stop].sum()) for f in c.fragments) > out_budget]
        if not over:
            break
        changed = False
        for c in over:
            pieces: list[Fragment] = []
            for f in c.fragments:
                r = np.concatenate([[0], np.cumsum(routes[f.layer][f.start:f.stop])])
                a = 0
                while a < f.neurons:
                    b_ = max(a + 1, int(np.searchsorted(r, r[a] + out_budget, side="right")) - 1)
                    b_ = min(b_, f.neurons)
                    pieces += fragment(f.layer, f.start + a, f.start + b_)
                    a = b_
            if len(pieces) == len(c.fragments) and len(c.fragments) == 1:
                continue  # a single neuron over the budget: reported below
            bins: list[Core] = []
            for f in sorted(pieces, key=lambda f: -int(routes[f.layer][f.start:f.stop].sum())):
                for k in bins:
                    used = sum(int(routes[g.layer][g.start:g.stop].sum()) for g in k.fragments)
                    if fits(k, f, routes, used):
                        k.fragments.append(f)
                        break
                else:
                    bins.append(Core(-1, [f]))
            if len(bins) > 1:
                changed = True
            c.fragments = bins[0].fragments
            for k in bins[1:]:
                k.index = len(cores)
                cores.append(k)
        if not changed:
            break
    routes = _routes(graph, conns, cores, sizes)
    for c in cores:
        c.axons_out = sum(int(routes[f.layer][f.start:f.stop].sum()) for f in c.fragments)
    cores_per_layer = {l.name: len({c.index for c in cores for f in c.fragments if f.layer == l.name})
                       for l in layers}
    for l in layers:
        l.cores = cores_per_layer[l.name]
        mine = [c for c in cores if any(f.layer == l.name for f in c.fragments)]
        l.fragments = sum(1 for c in mine for f in c.fragments if f.layer == l.name)
        l.axons_in_max = max((c.axons_in for c in mine), default=0)
        l.axons_out_max = max((c.axons_out for c in mine), default=0)
    packing = Packing(cores, cpc, cores_per_layer, [])
    packing.systems = [{"name": s.name, "key": s.key, "chips": s.chips, "cores": s.chips * cpc,
                        "fits": packing.chips <= s.chips, "chips_needed": packing.chips,
                        "core_utilization": len(cores) / (s.chips * cpc), "estimate": s.estimate}
                       for s in target.systems]
    return packing


def check_design_rules(graph: IntegerGraph, target: HwTarget | str | None = None, *,
                       system: Optional[str] = None, conns: Optional[dict[str, SynapseConn]] = None) -> DRCResult:
    """Check ``graph`` against ``target``'s limits and pack it onto cores and chips.

    ``system``: a system key or name of the target (``oheo-gulch``, ``kapoho-point``,
    ``hala-point``) the network must fit; default: the largest known system. Never raises for a
    violation: see :func:`require_design_rules`.
    """
    if target is None or isinstance(target, str):
        from . import get_target

        target = get_target(target)
    lim = target.limits
    col = _Collector(target)
    conns = conns if conns is not None else connectivity(graph)
    layers, syn_res, bits = _layers(graph, conns, target, col)
    packing = pack(graph, target, conns, layers, bits, col)
    for c in packing.cores:
        # the packing fills cores up to the budget by design: only a single neuron over it is reported
        col.check(", ".join(c.layers), lim["axons_out_per_core"], c.axons_out, "output axon routes", near=False,
                  subject=f"core {c.index} (layers {', '.join(c.layers)})")
    # reset interval
    P = graph.reset_interval
    if P == 0:
        col.warnings.append(Finding("graph", "reset_interval", 0, "power of two",
                                    "graph: not scheduled (no reset interval, latencies or delays); run "
                                    "deploy.schedule.schedule before deploying"))
    elif P & (P - 1):
        col.over("graph", lim["reset_interval"], P,
                 f"graph: reset interval {P} is not a power of two (LIFReset on Loihi 2 resets only at "
                 "power-of-two intervals)")
    # system capacity
    sys_: System = target.system(system) if system else max(target.systems, key=lambda s: s.chips)
    cpc = packing.cores_per_chip
    cap = sys_.chips * cpc
    cap_limit = Limit(f"cores_of_{sys_.key}", cap, f"cores ({sys_.name}: {sys_.chips} chips x {cpc})",
                      sys_.source, sys_.estimate or lim["cores_per_chip"].estimate,
                      enforced=lim["cores_per_chip"].enforced)
    for l in layers:
        if l.cores > cap:
            col.over(l.name, cap_limit, l.cores,
                     f"layer {l.name}: {l.neurons} neurons need {l.cores} cores, more than {sys_.name}'s {cap} cores "
                     f"({sys_.chips} chips x {cpc})")
    if packing.num_cores > cap and not any(l.cores > cap for l in layers):
        col.over("network", cap_limit, packing.num_cores,
                 f"network: needs {packing.num_cores} cores on {packing.chips} chips, more than {sys_.name}'s "
                 f"{sys_.chips} chips ({cap} cores)")
    elif NEAR_LIMIT * cap < packing.num_cores <= cap:
        col.warnings.append(Finding("network", cap_limit.name, packing.num_cores, cap,
                                    f"network: {packing.num_cores} cores are {100 * packing.num_cores / cap:.0f}% of "
                                    f"{sys_.name}'s {cap} cores", cap_limit.estimate))
    return DRCResult(target.name, sys_.key if system else None, col.violations, col.warnings, layers, syn_res, packing)


def require_design_rules(result: DRCResult) -> DRCResult:
    """Raise :class:`~xoresnet.errors.DesignRuleError` (exit code 4) for the first violation, one line."""
    if result.violations:
        first = result.violations[0]
        more = len(result.violations) - 1
        raise DesignRuleError(f"design rule violated on {result.target}: {first.message}"
                              + (f" (and {more} more violation{'s' if more > 1 else ''})" if more else ""))
    return result
