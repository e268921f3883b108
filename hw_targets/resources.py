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
neurons on a core - an estimate) is cut into fragments, contiguous in its packing order
(:func:`packing_order`: position by position, all channels of a position together, for spatial
populations), greedily, each as large as the per-core budgets allow: ``neurons_per_core`` neurons,
the synaptic memory budget, the core memory (synapses + 64 bits of state per neuron), and
``axons_in_per_core`` input axons (distinct (source neuron, synapse process) routes into the
fragment; over it, the longest prefix that fits is taken). Fragments are then placed on cores
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
from functools import cached_property
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
    _all_taps: Optional[tuple[np.ndarray, ...]] = field(default=None, repr=False, compare=False)

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

    def sources_of(self, dst: np.ndarray) -> np.ndarray:
        """int64, sorted: flat indices of the source neurons with a synapse into a destination in
        ``dst`` (int64 flat PyTorch indices). Costs the destinations' receptive fields, not the layer."""
        s = self.syn
        nz = self.nonzero
        if s.kind == "identity":
            return np.sort(dst[nz.reshape(-1)[dst]])
        if s.kind == "dense":
            return np.flatnonzero(nz.reshape(nz.shape[0], -1)[dst].any(0)).astype(np.int64)
        C_out, Ho, Wo = self.dst_shape
        channel, position = np.divmod(dst, Ho * Wo)
        positions, counts = np.unique(position, return_counts=True)
        full = counts == C_out  # positions with every output channel in dst share one set of taps
        parts = [self._conv_sources_at(self.conv_taps(channel[position == p]), p[None]) for p in positions[~full]]
        if full.any():
            parts.append(self._conv_sources_at(self.conv_taps(None), positions[full]))
        # one position reads distinct sources, already in order
        return parts[0] if len(positions) == 1 else np.unique(np.concatenate(parts))

    @cached_property
    def nonzero(self) -> np.ndarray:
        """bool, the weight's shape: which weights are synapses. A conv's is expanded over groups to
        ``[C_out, C_in, kH, kW]``."""
        nz = np.asarray(self.syn.weight) != 0
        if self.syn.kind != "conv" or self.syn.groups == 1:
            return nz
        C_out, ipg = nz.shape[:2]
        opg = C_out // int(self.syn.groups)
        full = np.zeros((C_out, ipg * int(self.syn.groups)) + nz.shape[2:], bool)
        for co in range(C_out):
            g = co // opg
            full[co, g * ipg:(g + 1) * ipg] = nz[co]
        return full

    def conv_taps(self, channels: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ci, kh, kw)`` int64 arrays: the kernel taps any of the output ``channels`` (None: all)
        reads, relative to the receptive field's corner."""
        if channels is None:
            if self._all_taps is None:
                self._all_taps = tuple(t.astype(np.int64) for t in np.nonzero(self.nonzero.any(0)))
            return self._all_taps
        return tuple(t.astype(np.int64) for t in np.nonzero(self.nonzero[channels].any(0)))

    def _conv_sources_at(self, taps: tuple[np.ndarray, ...], positions: np.ndarray) -> np.ndarray:
        """Flat source indices of ``taps`` at the output ``positions`` (flat ``ho * Wo + wo``), in bounds."""
        ci, kh, kw = taps
        C_in, H, W = self.src_shape
        (sh, sw), (ph, pw) = self.syn.stride, self.syn.padding
        ho, wo = np.divmod(positions.astype(np.int64), self.dst_shape[2])
        y = (ho * int(sh) - int(ph))[:, None] + kh[None]
        x = (wo * int(sw) - int(pw))[:, None] + kw[None]
        keep = (y >= 0) & (y < H) & (x >= 0) & (x < W)
        return ((np.broadcast_to(ci, y.shape)[keep] * H + y[keep]) * W + x[keep]).astype(np.int64)


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
    """The neurons at positions ``[start, stop)`` of ``layer``'s packing order (:func:`packing_order`),
    placed on one core."""

    layer: str
    start: int
    stop: int
    synmem_bits: int
    axons_in: int
    index: np.ndarray = field(repr=False)  # int64 flat PyTorch indices of the neurons
    sources: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # synapse -> sorted source indices

    @property
    def neurons(self) -> int:
        return self.stop - self.start


@dataclass
class Core:
    """One neuro-core: its fragments and their running totals (kept by :meth:`add`)."""

    index: int
    fragments: list[Fragment] = field(default_factory=list)
    neurons: int = 0
    synmem_bits: int = 0
    axons_in: int = 0
    axons_out: int = 0

    @classmethod
    def holding(cls, index: int, fragments: list[Fragment]) -> "Core":
        core = cls(index)
        for f in fragments:
            core.add(f)
        return core

    def add(self, f: Fragment) -> None:
        self.fragments.append(f)
        self.neurons += f.neurons
        self.synmem_bits += f.synmem_bits
        self.axons_in += f.axons_in

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


def packing_order(graph: IntegerGraph, layer: str, neurons: int) -> np.ndarray:
    """int64 ``[neurons]``: the order in which ``layer``'s neurons (flat PyTorch ``(C, H, W)`` indices)
    are cut into fragments. A spatial population goes position by position, every channel of a
    position together ``(H, W, C)``: the channels at one position read the same receptive field, so a
    fragment needs the fewest input axons. Anything else keeps the flat order."""
    shape = graph.populations[layer].shape if layer in graph.populations else (neurons,)
    if len(shape) != 3:
        return np.arange(neurons, dtype=np.int64)
    return np.arange(neurons, dtype=np.int64).reshape(shape).transpose(1, 2, 0).reshape(-1)


def _routes(graph: IntegerGraph, cores: list[Core], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Output axon routes per source neuron: the (destination core, synapse process) pairs it reaches."""
    on_core: dict[str, dict[int, list[Fragment]]] = {}
    for c in cores:
        for f in c.fragments:
            on_core.setdefault(f.layer, {}).setdefault(c.index, []).append(f)
    routes = {name: np.zeros(n, np.int64) for name, n in sizes.items()}
    for s in graph.synapses:
        if s.src == INPUT:
            continue
        reached = [fs[0].sources[s.name] if len(fs) == 1 else np.unique(np.concatenate([f.sources[s.name] for f in fs]))
                   for fs in on_core.get(s.dst, {}).values()]
        if reached:
            routes[s.src] += np.bincount(np.concatenate(reached), minlength=sizes[s.src])
    return routes


@dataclass(frozen=True)
class _Budgets:
    """The per-core budgets of a target (see the module docstring)."""

    neurons: int
    synmem_bits: int
    memory_bits: int
    axons_in: int
    axons_out: int
    groups: int

    def fits(self, c: Core, f: Fragment) -> bool:
        return (len(c.fragments) < self.groups and c.neurons + f.neurons <= self.neurons
                and c.synmem_bits + f.synmem_bits <= self.synmem_bits
                and c.synmem_bits + f.synmem_bits + (c.neurons + f.neurons) * NEURON_STATE_BITS <= self.memory_bits
                and c.axons_in + f.axons_in <= self.axons_in)


class _FreeCapacity:
    """Free capacity of ``n`` cores in every budget, as a max segment tree, for first-fit queries.

    Leaf ``j`` is core ``j``'s free capacity (budget minus use; negative once over it); an inner node
    holds the element-wise maximum of its children, so a subtree whose maximum is below the need in
    any budget holds no core with room and is skipped. Cores not yet opened are empty leaves, so
    the leftmost fitting leaf is an open core with room, or else the next new one.
    """

    def __init__(self, n: int, capacity: np.ndarray):
        self.size = 1 << max(0, (n - 1).bit_length())
        self.free = np.tile(capacity, (2 * self.size, 1))

    def leftmost_fit(self, need: np.ndarray) -> Optional[int]:
        free, stack = self.free, [1]
        while stack:
            i = stack.pop()
            if (free[i] < need).any():
                continue
            if i >= self.size:
                return i - self.size
            stack += (2 * i + 1, 2 * i)  # left child first
        return None

    def take(self, j: int, need: np.ndarray) -> None:
        i = self.size + j
        self.free[i] -= need
        while i > 1:
            i //= 2
            self.free[i] = np.maximum(self.free[2 * i], self.free[2 * i + 1])


def _first_fit(frags: list[Fragment], budget: _Budgets) -> list[Core]:
    """First fit of ``frags`` (in order) onto cores: each joins the lowest-numbered core where every
    budget of :meth:`_Budgets.fits` still holds, or opens a new one (also when it fits no empty core)."""
    capacity = np.array([budget.neurons, budget.synmem_bits, budget.memory_bits, budget.axons_in, budget.groups],
                        np.int64)
    tree = _FreeCapacity(len(frags), capacity)
    cores: list[Core] = []
    for f in frags:
        need = np.array([f.neurons, f.synmem_bits, f.synmem_bits + f.neurons * NEURON_STATE_BITS, f.axons_in, 1],
                        np.int64)
        j = tree.leftmost_fit(need)
        if j is None or j == len(cores):
            j = len(cores)
            cores.append(Core(j))
        cores[j].add(f)
        tree.take(j, need)
    return cores


def pack(graph: IntegerGraph, target: HwTarget, conns: dict[str, SynapseConn], layers: list[LayerResources],
         bits: dict[str, np.ndarray], col: Optional[_Collector] = None) -> Packing:
    """Fragments and cores (see the module docstring)."""
    lim = target.limits
    budget = _Budgets(*(int(lim[k].value) for k in ("neurons_per_core", "synmem_bits_per_core", "core_memory_bits",
                                                     "axons_in_per_core", "axons_out_per_core",
                                                     "neuron_groups_per_core")))
    cpc = int(lim["cores_per_chip"].value)
    incoming = {l.name: [s for s in graph.synapses if s.dst == l.name] for l in layers}
    sizes = {l.name: l.neurons for l in layers}

    order = {l.name: packing_order(graph, l.name, l.neurons) for l in layers}
    packed_bits = {name: bits[name][o] for name, o in order.items()}

    def make(layer: str, start: int, stop: int) -> Fragment:
        index = order[layer][start:stop]
        sources = {s.name: conns[s.name].sources_of(index) for s in incoming[layer]}
        return Fragment(layer, start, stop, int(packed_bits[layer][start:stop].sum()),
                        sum(v.size for v in sources.values()), index, sources)

    def fragment(layer: str, start: int, stop: int) -> list[Fragment]:
        """Positions ``[start, stop)`` of ``layer``'s packing order as fragments within the input-axon
        budget: repeatedly the longest prefix that fits (binary search; input axons grow with it)."""
        out: list[Fragment] = []
        while start < stop:
            best = make(layer, start, stop)
            if best.axons_in > budget.axons_in and stop - start > 1:
                lo, hi, best = start + 1, stop - 1, None
                while lo <= hi:
                    mid = (lo + hi) // 2
                    f = make(layer, start, mid)
                    if f.axons_in <= budget.axons_in:
                        best, lo = f, mid + 1
                    else:
                        hi = mid - 1
                best = best or make(layer, start, start + 1)  # one neuron over it: the fan-in check reports it
            out.append(best)
            start = best.stop
        return out

    def routes_of(f: Fragment, routes: dict[str, np.ndarray]) -> int:
        return int(routes[f.layer][f.index].sum())

    frags: list[Fragment] = []
    for l in layers:
        b = packed_bits[l.name]
        cum = np.concatenate([[0], np.cumsum(b)])
        cum_mem = np.concatenate([[0], np.cumsum(b + NEURON_STATE_BITS)])
        start = 0
        while start < l.neurons:
            end = min(start + budget.neurons, l.neurons)
            end = min(end, int(np.searchsorted(cum, cum[start] + budget.synmem_bits, side="right")) - 1)
            end = min(end, int(np.searchsorted(cum_mem, cum_mem[start] + budget.memory_bits, side="right")) - 1)
            if end <= start:  # one neuron's synapses do not fit a core
                if col is not None:
                    col.over(l.name, lim["synmem_bits_per_core"], int(b[start]),
                             f"layer {l.name}: neuron {int(order[l.name][start])} needs {int(b[start])} bits of "
                             f"synaptic memory, more than synmem_bits_per_core = {budget.synmem_bits} (estimated "
                             "limit)")
                end = start + 1
            frags += fragment(l.name, start, end)
            start = end
    cores = _first_fit(sorted(frags, key=lambda f: (-f.neurons, -f.synmem_bits)), budget)
    # output axons: split cores whose sources reach too many (core, synapse) routes; splitting a
    # destination adds routes to its sources, so repeat until nothing changes
    for _ in range(64):
        routes = _routes(graph, cores, sizes)
        over = [c for c in cores if sum(routes_of(f, routes) for f in c.fragments) > budget.axons_out]
        if not over:
            break
        changed = False
        for c in over:
            pieces: list[Fragment] = []
            for f in c.fragments:
                r = np.concatenate([[0], np.cumsum(routes[f.layer][f.index])])
                a = 0
                while a < f.neurons:
                    b_ = max(a + 1, int(np.searchsorted(r, r[a] + budget.axons_out, side="right")) - 1)
                    b_ = min(b_, f.neurons)
                    pieces += fragment(f.layer, f.start + a, f.start + b_)
                    a = b_
            if len(pieces) == len(c.fragments) and len(c.fragments) == 1:
                continue  # a single neuron over the budget: reported by check_design_rules
            bins: list[tuple[Core, int]] = []  # (core, its output routes)
            for f in sorted(pieces, key=lambda f: -routes_of(f, routes)):
                for k, (core, out) in enumerate(bins):
                    if budget.fits(core, f) and out + routes_of(f, routes) <= budget.axons_out:
                        core.add(f)
                        bins[k] = (core, out + routes_of(f, routes))
                        break
                else:
                    bins.append((Core.holding(-1, [f]), routes_of(f, routes)))
            changed |= len(bins) > 1
            cores[c.index] = Core.holding(c.index, bins[0][0].fragments)
            for core, _ in bins[1:]:
                core.index = len(cores)
                cores.append(core)
        if not changed:
            break
    routes = _routes(graph, cores, sizes)
    for c in cores:
        c.axons_out = sum(routes_of(f, routes) for f in c.fragments)
    on: dict[str, list[Core]] = {l.name: [] for l in layers}
    for c in cores:
        for name in c.layers:
            on[name].append(c)
    for l in layers:
        mine = on[l.name]
        l.cores = len(mine)
        l.fragments = sum(1 for c in mine for f in c.fragments if f.layer == l.name)
        l.axons_in_max = max((c.axons_in for c in mine), default=0)
        l.axons_out_max = max((c.axons_out for c in mine), default=0)
    packing = Packing(cores, cpc, {l.name: l.cores for l in layers}, [])
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
