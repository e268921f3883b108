"""Tiles and cores: each layer cut onto Loihi 2 neuro-cores the way Intel's lava-loihi compiler does
it (an estimate), the lower bound it is compared with, and the fan-in splits a layer needs.

**Tiling** (:func:`tile_layer`). A spatial population ``(C, H, W)`` is cut into tiles of
``tx x ty x tc`` (width x height x channels), **one tile per core**, ``ceil(W/tx) * ceil(H/ty) *
ceil(C/tc)`` cores. Read off the compiler's logs (``loihi2-resources.md`` section 2; all 15 conv
layers of YOLO-KP and PilotNet, tile shapes and core counts, are reproduced by this rule, see
``docs/resources.md``) [INFER]:

* ``tx`` is a power of two, at most ``W`` (PilotNet's 20x2x64 layer takes two 16-wide tiles
  although 2,560 neurons would fit one core; every logged tile width is a power of two);
* ``ty = ceil(H / 2**j)`` and ``tc = ceil(C / 2**k)``: heights and channels are halved (PilotNet's
  49x15x36 layer takes thirteen 4x15x36 tiles, not twelve 16x6x36 or 16x15x12; YOLO-KP's 14x14x48
  head four 4x14x48, not three 16x14x16);
* ``tx * ty * tc <= neurons_per_tile`` (3,584), and every per-core budget holds for the tile;
* the compiler takes the fewest cores; ties go to the largest ``tc`` (YOLO-KP layers 6/7 split
  channels only as far as synaptic memory forces), then the smallest allocation, then the widest
  tile no wider than tall (the spatial shape changes no cost).

A population without a spatial shape (the readout, 1-D test populations) is cut into contiguous
neuron ranges, each the longest that fits. Cores are not shared between layers: every logged core
holds one layer's tile (mnist/run.ipynb gives a 10-neuron layer a core of its own).

**SynMem cost model** (units of 64 bits, fitted to the YOLO-KP log; :data:`COST_MODEL`):

* a conv synapse stores its kernel **once per core** for the output channels the core holds: per
  ``(input channel, kernel tap)`` row, ``weight bits x CONV_NARROW_BITS_PER_WEIGHT_BIT / 64`` units
  per output channel of the row on the core when it holds fewer than ``CONV_WIDE_ROW_CHANNELS``
  (64) channels, ``CONV_WIDE_BITS_PER_WEIGHT_BIT`` at 64 or more, no per-row header: 6 and 4.125
  bits per 8-bit weight, which land all ten YOLO-KP layers within 10 % (layers 2, 4, 5, 10 to the
  unit);
* a sparse/dense (identity, dense, readout) synapse is stored per synapse: ``weight bits + 12``
  index bits (+ 6 delay bits when delayed) per synapse, each source row of a core rounded up to
  whole 64-bit units (PilotNet's 10-input, 1-neuron layer takes 10 units; oxford's dense layers
  log 20.2 bits per 8-bit synapse).

**Input axons** (AxonIn units): ``conv_axon_in_units`` per conv synapse into a core, whatever its
channels; one per distinct source neuron of a sparse/dense synapse. **Output routes** (AxonMap
units, charged to the core's memory with its synapses, ``core_memory``): one per source neuron of
a sparse/dense synapse (:func:`synapse_routes`); one per (source tile, destination tile) of a
conv whose receptive-field boxes overlap (:func:`conv_routes`).

**Channel partitions** (:func:`partition_layer`): a population may be cut along its channels into
parts, each its own Lava process that lava-loihi tiles on its own; the packer chooses, per
population in topological order, the cut that needs the fewest cores under the rule above (then
the fewest parts), within what keeps the lowering exact (:func:`calibration.core_plan.cut_rules`).
The cuts are the :class:`~calibration.core_plan.CorePlan` (``Packing.plan``) that the Lava lowering
builds (:mod:`deploy.lava_graph`). ``pack(..., partition=False)`` cuts only where required.

**Fan-in split** (:class:`FanInSplit`): a layer one of whose neurons alone overflows a core
(its inputs over the AxonIn budget, or its synapses over SynMem, e.g. the readout over 2048 x 4 x
4 inputs of XOResNet-50/101) is not refused: its inputs are cut into ``P`` contiguous ranges of
source channels, each summed on partial-sum cores (a layer ``<name>.part<i>`` of the same neurons)
and sent as graded spikes to the layer itself, which then has ``P`` inputs per neuron and one more
step of latency. Found here (:func:`split_fan_in`), built by :func:`calibration.fan_in.apply_fan_in_cuts`
(``deploy.pipeline.map_to_cores``); a graph that holds it is packed as it stands (``built``).

**Identity synapses as depthwise convolutions**: an identity synapse whose weight is the same at
every position of a channel may be lowered as a ``Conv`` with ``groups = C``
(:func:`calibration.core_plan.depthwise_eligible`): one weight per channel on each core and one or
two input axons instead of a 64-bit unit, an input axon and an output route per neuron, at the
price of cutting its destination exactly as its source. :func:`pack` packs the graph both ways and
keeps the one with fewer cores (``CorePlan.depthwise`` records it).

**Lower bound** (:meth:`LayerSpec.lower_bound`): per layer ``max(neurons / neurons_per_core, SynMem of its
distinct weights / synmem_units_per_core)``, summed, with the identity synapses that may be
lowered as depthwise convolutions counted so (the cheaper lowering); a bound for any packing that
keeps layers on cores of their own.

**The tile rule's minimum** (:func:`rule_minimum`): per layer the fewest cores lava-loihi's tile rule
gives it on its own, cut into whatever channel parts are cheapest (no exactness constraint from its
neighbours; the cheaper identity lowering; its output routes left out), summed. No packing that
keeps the rule and one layer per core can use fewer, so ``cores / rule minimum`` is what the packer
loses and ``rule minimum / lower bound`` what the rule itself costs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from calibration import loihi2_limits as L
from calibration.core_plan import (CorePlan, PopulationPlan, check_plan, cut_rules, depthwise_candidates, followed_parts,
                                   lowered_synapses)
from calibration.fan_in import (FanInCut, InputRange, part_name, partial_sum_bound, payload_bits, restrict, split_layers,
                                splittable)
from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Synapse

from .connectivity import stored_weight_bits

# ---------------------------------------------------------------------- cost model

_YOLO = "lava-dl tutorials/lava/lib/dl/netx/yolo_kp/run.ipynb"
CONV_WIDE_ROW_CHANNELS = L.Limit(
    "conv_wide_row_channels", 64, "output channels of one kernel row on a core",
    f"{_YOLO}: rows holding 16, 32, 48 output channels on a core (layers 1, 2, 10) log 6.0 bits per 8-bit weight, "
    "rows of 64, 128, 256 channels (layers 3-9) 3.75-4.5; where between 49 and 64 channels the compression starts "
    "is not logged (64 assumed)", "INFER", enforced=False)
CONV_NARROW_BITS_PER_WEIGHT_BIT = L.Limit(
    "conv_narrow_bits_per_weight_bit", 6 / 8, "stored bits per bit of weight precision, rows of fewer than "
    "conv_wide_row_channels output channels on a core",
    f"{_YOLO}: per-core SynMem / (rows x channels) = 40.8 / (27 x 16), 432 / (144 x 32), 2304 / (512 x 48) units = "
    "6.04, 6.00, 6.00 bits per 8-bit weight (layers 1, 2, 10; slayer quantize_8bit weights, lava-dl "
    "object_detection/models/yolo_kp.py); no per-row header", "INFER", enforced=False)
CONV_WIDE_BITS_PER_WEIGHT_BIT = L.Limit(
    "conv_wide_bits_per_weight_bit", 4.125 / 8, "stored bits per bit of weight precision, rows of "
    "conv_wide_row_channels or more output channels on a core",
    f"{_YOLO}: per-core SynMem / (rows x channels) = 4.50, 4.125, 4.125, 3.75, 4.50, 3.94, 4.50 bits per 8-bit "
    "weight (layers 3-9: 1296 / (288 x 64), 4752 / (576 x 128), 9504 / (1152 x 128), 8640 / (2304 x 64), "
    "10368 / (2304 x 64), 8064 / (512 x 256) units x 64); 4.125 is their median (layers 4 and 5 exactly): the "
    "compiler's compression depends on the trained weights (layers 6 and 7 share a per-core shape)", "INFER",
    enforced=False)
SPARSE_INDEX_BITS = L.Limit(
    "sparse_index_bits", 12, "bits per sparse/dense synapse beside its weight",
    "lava-dl tutorials netx/oxford/run.ipynb: 16,128 units for 256 x 200 synapses = 20.2 bits per synapse "
    "(8 weight bits + 12); PilotNet's and mnist's dense layers log 15-23 bits per synapse", "INFER",
    enforced=False)
SYNMEM_UNIT_BITS = L.Limit(
    "synmem_unit_bits", 64, "bits per SynMem unit",
    "the unit in which the conv and dense fits above are whole numbers (PilotNet: 10 one-synapse rows = 10 units)",
    "INFER", enforced=False)
#: The cost model's figures (reported beside the limits).
COST_MODEL: dict[str, L.Limit] = {c.name: c for c in (CONV_WIDE_ROW_CHANNELS, CONV_NARROW_BITS_PER_WEIGHT_BIT,
                                                      CONV_WIDE_BITS_PER_WEIGHT_BIT, SPARSE_INDEX_BITS,
                                                      SYNMEM_UNIT_BITS)}
UNIT_BITS = SYNMEM_UNIT_BITS.value


def conv_row_units(channels: int, weight_bits: int) -> float:
    """SynMem units of one kernel row (an input channel and tap) holding ``channels`` output channels
    of ``weight_bits``-bit weights on one core (see :data:`COST_MODEL`): narrow rows (fewer than
    ``conv_wide_row_channels`` channels) at 6 bits per 8-bit weight, wide ones at 4.125."""
    rate = CONV_NARROW_BITS_PER_WEIGHT_BIT if channels < CONV_WIDE_ROW_CHANNELS.value else CONV_WIDE_BITS_PER_WEIGHT_BIT
    return channels * weight_bits * rate.value / UNIT_BITS


def sparse_synapse_bits(weight_bits: int, delayed: bool) -> int:
    """Bits of one sparse/dense synapse: weight + index (+ delay field)."""
    return weight_bits + SPARSE_INDEX_BITS.value + (L.DELAY_FIELD_BITS if delayed else 0)


# ---------------------------------------------------------------------- what the tiler sees

@dataclass(frozen=True)
class ConvInput:
    """One conv synapse process into a layer, as far as its cost goes: ``ipg`` input channels per
    group (fewer in a fan-in split part, which reads a range of them), ``groups``, ``opg`` output
    channels per group, ``taps = kh * kw``, stored at ``weight_bits``."""

    synapse: str
    ipg: int
    groups: int
    opg: int
    taps: int
    weight_bits: int

    def units(self, c0: int, c1: int) -> float:
        """SynMem units of the kernel rows that output channels ``[c0, c1)`` need on one core (each
        group's rows hold the group's channels among them: a first and a last group partly, the
        groups between them whole)."""
        g0, g1 = c0 // self.opg, (c1 - 1) // self.opg
        if g0 == g1:
            rows = conv_row_units(c1 - c0, self.weight_bits)
        else:
            rows = (conv_row_units((g0 + 1) * self.opg - c0, self.weight_bits)
                    + conv_row_units(c1 - g1 * self.opg, self.weight_bits)
                    + (g1 - g0 - 1) * conv_row_units(self.opg, self.weight_bits))
        return self.ipg * self.taps * rows

    def distinct_units(self) -> float:
        """SynMem units of every distinct weight once: each kernel row once, holding all the output
        channels of its group (the lower bound's share)."""
        return self.groups * self.ipg * self.taps * conv_row_units(self.opg, self.weight_bits)


@dataclass
class PointInput:
    """One identity/dense synapse process into a layer, stored per synapse.

    ``nonzero``: bool ``[dst neurons, src neurons]`` (dense) or ``[dst neurons]`` (identity: source
    ``i`` feeds destination ``i``); ``bits``: bits per synapse (:func:`sparse_synapse_bits`).
    """

    synapse: str
    nonzero: np.ndarray
    bits: int
    identity: bool

    def __post_init__(self):
        self._cum: Optional[np.ndarray] = None

    @property
    def fan_in(self) -> np.ndarray:
        """int64 [dst]: synapses into each destination neuron."""
        nz = self.nonzero
        return nz.astype(np.int64) if self.identity else nz.sum(1).astype(np.int64)

    def neuron_units(self) -> np.ndarray:
        """float [dst]: SynMem units per destination neuron, rows not rounded (the per-neuron view a
        spatial tile sums; identity rows hold one synapse: one whole unit each)."""
        if self.identity:
            return self.nonzero.astype(np.float64) * math.ceil(self.bits / UNIT_BITS)
        return self.fan_in * (self.bits / UNIT_BITS)

    def range_cost(self, a: int, b: int) -> tuple[float, int]:
        """``(SynMem units, AxonIn units)`` of destination neurons ``[a, b)`` on one core: each
        source row rounded up to whole units."""
        if self.identity:
            n = int(np.count_nonzero(self.nonzero[a:b]))
            return float(n * math.ceil(self.bits / UNIT_BITS)), n
        if self._cum is None:
            self._cum = np.concatenate([np.zeros((1, self.nonzero.shape[1]), np.int32),
                                        np.cumsum(self.nonzero, axis=0, dtype=np.int32)])
        counts = (self._cum[b] - self._cum[a]).astype(np.int64)
        return float(np.sum((counts * self.bits + UNIT_BITS - 1) // UNIT_BITS)), int(np.count_nonzero(counts))

    def distinct_units(self) -> float:
        return self.range_cost(0, len(self.nonzero))[0]

    def sources(self) -> int:
        """Distinct source neurons with a synapse into the layer."""
        return int(np.count_nonzero(self.nonzero if self.identity else self.nonzero.any(0)))


@dataclass
class LayerSpec:
    """A layer (population, readout, or fan-in split part) as the tiler sees it.

    ``shape``: ``(C, H, W)`` for spatial layers, ``(N,)`` otherwise; ``routes``: float ``[neurons]``
    output-route units of each neuron through its sparse/dense out-synapses (set before tiling).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    conv: list[ConvInput] = field(default_factory=list)
    point: list[PointInput] = field(default_factory=list)
    routes: Optional[np.ndarray] = None

    @property
    def neurons(self) -> int:
        return int(np.prod(self.shape))

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3

    def distinct_units(self) -> float:
        return sum(c.distinct_units() for c in self.conv) + sum(p.distinct_units() for p in self.point)

    def lower_bound(self) -> float:
        """``max(neurons / neurons_per_core, distinct-weight SynMem / synmem_units_per_core)``."""
        return max(self.neurons / L.NEURONS_PER_CORE.value, self.distinct_units() / L.SYNMEM_UNITS_PER_CORE.value)


# ---------------------------------------------------------------------- tiles

@dataclass
class Tile:
    """One core's share of a layer: neurons ``box`` (spatial: ``((c0, c1), (y0, y1), (x0, x1))``;
    otherwise ``((a, b),)``, half-open, in the coordinates of the tiled part) and what they cost
    the core."""

    layer: str
    box: tuple[tuple[int, int], ...]
    neurons: int
    allocated: int
    synmem_units: float
    axons_in: int
    routes: float = 0.0

    @property
    def core_memory(self) -> float:
        """Fraction of the core's memory (:data:`calibration.loihi2_limits.CORE_MEMORY`)."""
        return (L.CORE_MEMORY_NEURON_WEIGHT * self.allocated / L.NEURONS_PER_CORE.value
                + L.CORE_MEMORY_TABLE_WEIGHT * (self.synmem_units + self.routes) / L.SYNMEM_UNITS_PER_CORE.value)


@dataclass
class LayerTiling:
    """The tiles of one layer, or of one part of a channel-partitioned layer (``channels``: the
    part's ``(start, stop)`` along the layer's first axis; None for a whole layer); ``tile_shape``
    ``(tx, ty, tc)`` for spatial layers."""

    spec: LayerSpec
    tiles: list[Tile]
    tile_shape: Optional[tuple[int, int, int]] = None
    channels: Optional[tuple[int, int]] = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cores(self) -> int:
        return len(self.tiles)

    @property
    def start(self) -> int:
        return self.channels[0] if self.channels else 0


def _halvings(n: int) -> list[int]:
    """``ceil(n / 2**j)`` for j = 0, 1, ... down to 1, ascending."""
    return sorted({-(-n // (1 << j)) for j in range(max(1, n).bit_length() + 1)})


def _powers_of_two_upto(n: int) -> list[int]:
    """1, 2, 4, ... up to the last power of two <= n."""
    return [1 << i for i in range(max(1, n).bit_length())]


def _conv_units_for(spec: LayerSpec, tc: int) -> float:
    """Max over the layer's channel groups of size ``tc`` of the conv kernel units one core stores."""
    C = spec.shape[0]
    if all(c.groups == 1 for c in spec.conv):
        return sum(c.units(0, min(tc, C)) for c in spec.conv)
    return max(sum(c.units(c0, min(c0 + tc, C)) for c in spec.conv) for c0 in range(0, C, tc))


def _budgets() -> tuple[int, float, int]:
    return L.NEURONS_PER_TILE.value, float(L.SYNMEM_UNITS_PER_CORE.value), L.AXON_IN_UNITS_PER_CORE.value


def _fits_memory(allocated, synmem, routes):
    """Whether (arrays of) tiles fit :data:`calibration.loihi2_limits.CORE_MEMORY`."""
    return (L.CORE_MEMORY_NEURON_WEIGHT * allocated / L.NEURONS_PER_CORE.value
            + L.CORE_MEMORY_TABLE_WEIGHT * (synmem + routes) / L.SYNMEM_UNITS_PER_CORE.value) <= L.CORE_MEMORY.value


def _tile_grid(spec: LayerSpec, tcs: np.ndarray):
    """Every candidate tile ``(tc, tx, ty)`` of spatial layer ``spec`` for the channel groups
    ``tcs``: arrays ``(tc, tx, ty, ok, spatial)`` over ``[len(tcs), len(txs), len(tys)]``, ``ok``
    where the tile meets every per-core budget (per-neuron costs bounded by the layer's worst
    neuron: conservative), ``spatial`` the tiles of one channel group, ``ceil(W/tx) * ceil(H/ty)``."""
    C, H, W = spec.shape
    cap, syn_cap, ax_cap = _budgets()
    per_neuron = sum((p.neuron_units() for p in spec.point), np.zeros(spec.neurons))
    unit_max = float(per_neuron.max(initial=0.0))
    route_max = float(spec.routes.max(initial=0.0)) if spec.routes is not None else 0.0
    point_axons_dense = sum(p.sources() for p in spec.point if not p.identity)
    n_identity = sum(1 for p in spec.point if p.identity)
    conv_axons = L.CONV_AXON_IN.value * len(spec.conv)
    conv_units = np.array([_conv_units_for(spec, int(tc)) for tc in tcs])
    txs = np.array(_powers_of_two_upto(W), np.int64)
    tys = np.array(_halvings(H), np.int64)
    tc_, tx_, ty_ = np.meshgrid(tcs, txs, tys, indexing="ij")
    alloc = tx_ * ty_ * tc_
    synmem = conv_units[:, None, None] + unit_max * alloc
    axons = conv_axons + point_axons_dense + n_identity * alloc
    ok = (alloc <= cap) & (synmem <= syn_cap) & (axons <= ax_cap) & _fits_memory(alloc, synmem, route_max * alloc)
    return tc_, tx_, ty_, ok, -(-W // tx_) * -(-H // ty_)


def _spatial_tiling(spec: LayerSpec) -> Optional[LayerTiling]:
    """The fewest-core tiling of a spatial layer (module docstring), or None when not even one
    neuron per core fits (a fan-in split is needed)."""
    C = spec.shape[0]
    tc_, tx_, ty_, ok, spatial = _tile_grid(spec, np.array(_halvings(C), np.int64))
    if not ok.any():
        return None
    cores = spatial * -(-C // tc_)
    alloc = tx_ * ty_ * tc_
    # fewest cores, then the largest channel group, the smallest allocation, and the widest tile no
    # wider than tall (Intel's own choice on 12 of the 15 logged layers; the others tie in every cost)
    order = np.lexsort((-tx_[ok], tx_[ok] > ty_[ok], alloc[ok], -tc_[ok], cores[ok]))
    i = order[0]
    return grid_tiling(spec, int(tx_[ok][i]), int(ty_[ok][i]), int(tc_[ok][i]))


def grid_tiling(spec: LayerSpec, tx: int, ty: int, tc: int) -> LayerTiling:
    """The tiles of spatial layer ``spec`` cut ``tx x ty x tc`` (enumerated channel group, then y,
    then x), each with its exact costs."""
    C, H, W = spec.shape
    conv_axons = L.CONV_AXON_IN.value * len(spec.conv)
    dense_axons = sum(p.sources() for p in spec.point if not p.identity)
    per_neuron = sum((p.neuron_units() for p in spec.point), np.zeros(spec.neurons)).reshape(C, H, W)
    routes = spec.routes.reshape(C, H, W) if spec.routes is not None else np.zeros((C, H, W))
    identity_sources = sum((p.nonzero.reshape(C, H, W).astype(np.int64) for p in spec.point if p.identity),
                           np.zeros((C, H, W), np.int64))
    tiles = []
    for c0 in range(0, C, tc):
        c1 = min(c0 + tc, C)
        kernel_units = sum(c.units(c0, c1) for c in spec.conv)
        for y0 in range(0, H, ty):
            y1 = min(y0 + ty, H)
            for x0 in range(0, W, tx):
                x1 = min(x0 + tx, W)
                box = (slice(c0, c1), slice(y0, y1), slice(x0, x1))
                tiles.append(Tile(spec.name, ((c0, c1), (y0, y1), (x0, x1)), (c1 - c0) * (y1 - y0) * (x1 - x0),
                                  tx * ty * tc, kernel_units + float(per_neuron[box].sum()),
                                  conv_axons + dense_axons + int(identity_sources[box].sum()),
                                  float(routes[box].sum())))
    return LayerTiling(spec, tiles, (tx, ty, tc))


def _range_cost(spec: LayerSpec, a: int, b: int, route_cum: np.ndarray) -> tuple[float, int, float]:
    syn, ax = 0.0, 0
    for p in spec.point:
        s, x = p.range_cost(a, b)
        syn, ax = syn + s, ax + x
    return syn, ax, float(route_cum[b] - route_cum[a])


def _range_tiling(spec: LayerSpec) -> Optional[LayerTiling]:
    """Contiguous neuron ranges, each the longest that fits a core; None when one neuron does not."""
    cap, syn_cap, ax_cap = _budgets()
    n = spec.neurons
    routes = spec.routes if spec.routes is not None else np.zeros(n)
    route_cum = np.concatenate([[0.0], np.cumsum(routes)])

    def fits(a: int, b: int) -> bool:
        syn, ax, rt = _range_cost(spec, a, b, route_cum)
        return b - a <= cap and syn <= syn_cap and ax <= ax_cap and _fits_memory(b - a, syn, rt)

    tiles, a = [], 0
    while a < n:
        if not fits(a, a + 1):
            return None
        lo, hi = a + 1, min(n, a + cap)  # the longest fitting range: costs grow with its end
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(a, mid) else (lo, mid - 1)
        syn, ax, rt = _range_cost(spec, a, lo, route_cum)
        tiles.append(Tile(spec.name, ((a, lo),), lo - a, lo - a, syn, ax, rt))
        a = lo
    return LayerTiling(spec, tiles)


def tile_layer(spec: LayerSpec) -> Optional[LayerTiling]:
    """The tiles of ``spec`` (module docstring); ``None`` when one neuron alone overflows a core."""
    return _spatial_tiling(spec) if spec.spatial else _range_tiling(spec)


# ---------------------------------------------------------------------- channel partitions

#: Core counts above any real layer: an infeasible channel group or part.
_NO_FIT = 1 << 40


def part_spec(spec: LayerSpec, a: int, b: int) -> LayerSpec:
    """``spec`` restricted to ``[a, b)`` along its first axis (a channel part): its conv inputs
    hold the part's output channels (a grouped conv: its whole groups), its sparse/dense inputs and
    routes the part's neurons."""
    rest = int(np.prod(spec.shape[1:])) if len(spec.shape) > 1 else 1
    lo, hi = a * rest, b * rest
    conv = []
    for c in spec.conv:
        if c.groups == 1:
            conv.append(ConvInput(c.synapse, c.ipg, 1, b - a, c.taps, c.weight_bits))
        else:
            if a % c.opg or b % c.opg:
                raise ValueError(f"part [{a}, {b}) of {spec.name} cuts a group of grouped conv {c.synapse}")
            conv.append(ConvInput(c.synapse, c.ipg, (b - a) // c.opg, c.opg, c.taps, c.weight_bits))
    point = [PointInput(p.synapse, p.nonzero[lo:hi], p.bits, p.identity) for p in spec.point]
    routes = spec.routes[lo:hi] if spec.routes is not None else None
    name = spec.name if (a, b) == (0, spec.shape[0]) else f"{spec.name}[{a}:{b}]"
    return LayerSpec(name, spec.kind, (b - a,) + tuple(spec.shape[1:]), conv, point, routes)


def _group_cores(spec: LayerSpec) -> np.ndarray:
    """int ``[C + 1]``: the fewest cores one channel group of ``tc`` channels of spatial layer
    ``spec`` takes (its spatial tiles), for every ``tc`` in ``1..C`` (index 0 unused);
    :data:`_NO_FIT` where no tile of ``tc`` channels fits a core."""
    C = spec.shape[0]
    tc_, _tx, _ty, ok, spatial = _tile_grid(spec, np.arange(1, C + 1, dtype=np.int64))
    best = np.where(ok, spatial, _NO_FIT).reshape(C, -1).min(1)
    return np.concatenate([[_NO_FIT], best])


def _part_cores(group: np.ndarray) -> np.ndarray:
    """int ``[C + 1]``: the cores lava-loihi's rule gives a part of ``p`` channels (``p`` in
    ``1..C``): the fewest over its channel groups ``tc = ceil(p / 2**k)``, ``ceil(p / tc)`` groups
    of ``group[tc]`` cores each."""
    C = len(group) - 1
    p = np.arange(1, C + 1, dtype=np.int64)
    best = np.full(C, _NO_FIT, np.int64)
    for k in range(C.bit_length() + 1):
        tc = -(-p // (1 << k))
        best = np.minimum(best, np.where(group[tc] >= _NO_FIT, _NO_FIT, -(-p // tc) * group[tc]))
    return np.concatenate([[_NO_FIT], best])


def _best_parts(part_cores: np.ndarray, n: int, step: int) -> Optional[list[int]]:
    """The part sizes (multiples of ``step``) summing to ``n`` with the fewest cores, then the fewest
    parts (dynamic programming over the cut positions); None if none fits."""
    m = n // step
    cost = part_cores[step * np.arange(1, m + 1)]  # cost[i - 1]: a part of i steps
    key = np.where(cost >= _NO_FIT, _NO_FIT, cost * (m + 1) + 1)  # cores first, then one per part
    best = np.full(m + 1, _NO_FIT, np.int64)
    best[0] = 0
    back = np.zeros(m + 1, np.int64)
    for j in range(1, m + 1):
        total = best[j - 1::-1] + key[:j]  # last part of i = 1..j steps
        i = int(np.argmin(total))
        best[j], back[j] = total[i], i + 1
    if best[m] >= _NO_FIT:
        return None
    parts, j = [], m
    while j:
        parts.append(int(back[j]) * step)
        j -= int(back[j])
    return sorted(parts, reverse=True)


@dataclass(frozen=True)
class PartitionConstraint:
    """What keeps a cut of one population exact (:class:`calibration.core_plan.CutRules`):
    ``cuts`` (required positions), ``multiple`` (boundaries are multiples), ``whole`` (one part),
    ``parts`` (the cut is forced: a grouped conv's destination follows its source); ``optimize``:
    False cuts only where required (the packing without channel partitions, for comparison)."""

    cuts: tuple[int, ...] = ()
    multiple: int = 1
    whole: bool = False
    parts: Optional[tuple[int, ...]] = None
    optimize: bool = True


def partition_layer(spec: LayerSpec, constraint: PartitionConstraint = PartitionConstraint()
                    ) -> Optional[list[LayerTiling]]:
    """``spec`` cut along its first axis into the parts that need the fewest cores under
    lava-loihi's tile rule (then the fewest parts), each part tiled by that rule
    (:func:`tile_layer`): one :class:`LayerTiling` per part, in order. A 1-D layer is cut only
    where ``constraint`` requires (its range tiling is already the tightest). None when one
    neuron alone overflows a core (a fan-in split is needed)."""
    n = spec.shape[0]
    segments = list(zip((0,) + tuple(constraint.cuts), tuple(constraint.cuts) + (n,)))
    if constraint.parts is not None:
        sizes = list(constraint.parts)
    elif constraint.whole or not spec.spatial or not constraint.optimize:
        sizes = [b - a for a, b in segments] if not constraint.whole else [n]
    else:
        part_cores = _part_cores(_group_cores(spec))
        sizes = []
        for a, b in segments:
            best = _best_parts(part_cores, b - a, constraint.multiple)
            if best is None:
                return None
            sizes += best
    out, a = [], 0
    for size in sizes:
        t = tile_layer(part_spec(spec, a, a + size))
        if t is None:
            return None
        t.channels = (a, a + size) if len(sizes) > 1 else None
        out.append(t)
        a += size
    return out


def rule_minimum(spec: LayerSpec) -> Optional[int]:
    """The fewest cores lava-loihi's tile rule gives layer ``spec`` on its own (module docstring):
    a spatial layer cut into the channel parts that need the fewest cores (:func:`partition_layer`'s
    search without constraints), a 1-D layer in its longest-fitting ranges; None when one neuron
    alone overflows a core (a fan-in split is needed)."""
    if not spec.spatial:
        tiling = _range_tiling(spec)
        return tiling.cores if tiling is not None else None
    part_cores = _part_cores(_group_cores(spec))
    parts = _best_parts(part_cores, spec.shape[0], 1)
    return None if parts is None else int(sum(part_cores[p] for p in parts))


# ---------------------------------------------------------------------- fan-in split

@dataclass(frozen=True)
class FanInPart:
    """One partial sum: the layer's neurons over ``inputs`` only, on ``cores`` cores."""

    inputs: tuple[InputRange, ...]
    cores: int
    axons_in: int
    synmem_units: float


@dataclass(frozen=True)
class FanInSplit:
    """How a layer whose neurons overflow one core's fan-in budget is computed exactly
    (:mod:`calibration.fan_in` builds it).

    Each of ``parts`` computes, for every neuron of ``layer``, the integer sum of its synapses
    from the part's input ranges (``neurons`` partial-sum neurons per part, on the part's cores);
    the partial sums travel as graded spikes of ``payload_bits`` (at most the 24-bit graded
    payload: Lava's ``GradedVec`` with ``vth = 0`` forwards any nonzero sum) into ``layer``, whose
    neurons then receive ``len(parts)`` graded inputs each (weight 1) on ``sum_cores`` cores.
    The relay adds ``extra_latency`` timestep(s): the other branches into the layer's consumers
    are delayed to match. ``reason``: the budget one neuron exceeds (``axon_in_units_per_core``
    or ``synmem_units_per_core``) with ``need`` units of it. ``built``: the graph holds it (its
    partial sums are populations); else the packer only found it.
    """

    layer: str
    neurons: int
    reason: str
    need: float
    parts: tuple[FanInPart, ...]
    sum_cores: int
    payload_bits: int
    extra_latency: int = 1
    built: bool = False

    @property
    def partial_cores(self) -> int:
        return sum(p.cores for p in self.parts)

    @property
    def cores(self) -> int:
        return self.partial_cores + self.sum_cores

    @property
    def cut(self) -> FanInCut:
        """What :func:`calibration.fan_in.apply_fan_in_cuts` builds."""
        return FanInCut(self.layer, tuple(p.inputs for p in self.parts), self.reason, self.need)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["partial_cores"], d["cores"] = self.partial_cores, self.cores
        return d


def _point_part(p: PointInput, lo: int, hi: int, per: int) -> PointInput:
    """``p`` restricted to source channels ``[lo, hi)`` (``per`` source neurons each)."""
    if p.identity:
        keep = np.zeros_like(p.nonzero)
        keep[lo * per:hi * per] = p.nonzero[lo * per:hi * per]
        return PointInput(p.synapse, keep, p.bits, True)
    return PointInput(p.synapse, p.nonzero[:, lo * per:hi * per], p.bits, False)


def _input_axes(spec: LayerSpec, read: dict[str, tuple[int, int]]) -> list[tuple[str, int, int, Any]]:
    """The layer's splittable inputs as one concatenated axis of source channels: ``(synapse,
    channels, neurons per channel, input)`` per synapse (``read[name]``: its channels and neurons
    per channel; a synapse not in ``read`` stays on the layer)."""
    out = [(c.synapse, c.ipg, 1, c) for c in spec.conv if c.synapse in read]
    out += [(p.synapse, *read[p.synapse], p) for p in spec.point if p.synapse in read]
    return out


def _split_specs(spec: LayerSpec, parts: int, read: dict[str, tuple[int, int]]
                 ) -> list[tuple[LayerSpec, tuple[InputRange, ...]]]:
    """``spec``'s splittable inputs cut into ``parts`` contiguous ranges of source channels."""
    axes = _input_axes(spec, read)
    total = sum(n for _, n, _, _ in axes)
    bounds = [round(total * i / parts) for i in range(parts + 1)]
    out = []
    for i in range(parts):
        lo, hi = bounds[i], bounds[i + 1]
        part = LayerSpec(part_name(spec.name, i), "partial_sum", spec.shape, routes=np.ones(spec.neurons))
        ranges, offset = [], 0
        for name, n, per, inp in axes:
            a, b = max(lo, offset) - offset, min(hi, offset + n) - offset
            if a < b:
                ranges.append(InputRange(name, a, b))
                if isinstance(inp, ConvInput):
                    part.conv.append(ConvInput(inp.synapse, b - a, inp.groups, inp.opg, inp.taps, inp.weight_bits))
                else:
                    part.point.append(_point_part(inp, a, b, per))
            offset += n
        out.append((part, tuple(ranges)))
    return out


def split_fan_in(spec: LayerSpec, read: dict[str, tuple[int, int]], bits_of=None
                 ) -> tuple[FanInSplit, list[LayerTiling]]:
    """The fewest-part :class:`FanInSplit` of ``spec`` (one neuron of which overflows a core) and
    the tilings of its parts and of the summing layer. ``read``: the splittable synapses
    (:func:`calibration.fan_in.splittable`) -> ``(source channels, neurons per channel)``;
    ``bits_of(cut)``: the payload bits (sign included) of the largest partial sum of a
    :class:`~calibration.fan_in.FanInCut` (more parts when over the graded payload)."""
    syn_need = sum(c.units(0, 1) for c in spec.conv) + sum(
        float((p.fan_in * math.ceil(p.bits / UNIT_BITS)).max(initial=0)) for p in spec.point)
    ax_need = L.CONV_AXON_IN.value * len(spec.conv) + sum(int(p.fan_in.max(initial=0)) for p in spec.point)
    reason, need = (("axon_in_units_per_core", ax_need) if ax_need > L.AXON_IN_UNITS_PER_CORE.value
                    else ("synmem_units_per_core", syn_need))
    total = sum(n for _, n, _, _ in _input_axes(spec, read))
    direct = LayerSpec(spec.name, spec.kind, spec.shape, [c for c in spec.conv if c.synapse not in read],
                       [p for p in spec.point if p.synapse not in read], spec.routes)
    first = max(2, math.ceil(max(ax_need / L.AXON_IN_UNITS_PER_CORE.value, syn_need / L.SYNMEM_UNITS_PER_CORE.value)))
    for parts in range(first, total + 1):
        tilings, ranges = [], []
        for part, rng in _split_specs(spec, parts, read):
            t = tile_layer(part)
            if t is None:
                break
            tilings.append(t)
            ranges.append((rng, t))
        else:
            identity = np.ones(spec.neurons, bool)
            sum_spec = LayerSpec(spec.name, spec.kind, spec.shape, direct.conv,
                                 direct.point + [PointInput(part_name(spec.name, i), identity,
                                                            sparse_synapse_bits(1, False), True) for i in range(parts)],
                                 routes=spec.routes)
            sum_tiling = tile_layer(sum_spec)
            if sum_tiling is None:  # more parts would only add inputs to the summing neurons
                break
            cut = FanInCut(spec.name, tuple(rng for rng, _ in ranges))
            bits = bits_of(cut) if bits_of is not None else 0
            if bits > L.GRADED_PAYLOAD.value:
                continue
            split = FanInSplit(spec.name, spec.neurons, reason, float(need),
                               tuple(FanInPart(rng, t.cores, max(x.axons_in for x in t.tiles),
                                               max(x.synmem_units for x in t.tiles)) for rng, t in ranges),
                               sum_tiling.cores, bits)
            return split, tilings + [sum_tiling]
    # one input per part always fits (a kernel row of one channel, or one sparse synapse), and a
    # summing neuron takes thousands of partial sums: only a neuron whose output routes alone fill a
    # core (some 15,000 out-synapse processes), or whose direct inputs do, gets here
    raise ValueError(f"layer {spec.name}: no fan-in split fits a core")


# ---------------------------------------------------------------------- from an integer graph

def _populations_and_readout(graph: IntegerGraph) -> list[tuple[str, str, tuple[int, ...]]]:
    out = [(p.name, p.kind, tuple(p.shape)) for p in graph.populations.values()]
    if graph.readout:
        out.append((READOUT, "readout", (graph.num_classes,)))
    return out


def weight_bits_of(s: Synapse) -> int:
    """The stored precision of a synapse process (:func:`~hw_targets.connectivity.stored_weight_bits`)."""
    return stored_weight_bits(s.weight, s.sign_mode)


def layer_specs(graph: IntegerGraph, weight_bits: Optional[dict[str, int]] = None,
                depthwise: frozenset[str] = frozenset()) -> dict[str, LayerSpec]:
    """Every population (and the readout) of ``graph`` as a :class:`LayerSpec`, topological order;
    ``weight_bits``: each synapse process's stored precision, when already known; ``depthwise``:
    the identity synapses lowered as depthwise convolutions (:func:`calibration.core_plan.lowered_synapses`)."""
    specs = {name: LayerSpec(name, kind, shape) for name, kind, shape in _populations_and_readout(graph)}
    for s in lowered_synapses(graph, depthwise):
        spec = specs[s.dst]
        bits = weight_bits[s.name] if weight_bits is not None else weight_bits_of(s)
        w = np.asarray(s.weight)
        if s.kind == "conv":
            c_out, ipg, kh, kw = w.shape
            spec.conv.append(ConvInput(s.name, int(ipg), int(s.groups), int(c_out) // int(s.groups), int(kh * kw), bits))
        elif s.kind == "identity":
            spec.point.append(PointInput(s.name, w.reshape(-1) != 0, sparse_synapse_bits(bits, bool(s.delay)), True))
        else:
            spec.point.append(PointInput(s.name, w.reshape(w.shape[0], -1) != 0,
                                         sparse_synapse_bits(bits, bool(s.delay)), False))
    return specs


def synapse_routes(p: PointInput, graph: IntegerGraph, s: Synapse) -> np.ndarray:
    """Output-route units per source neuron of sparse/dense synapse ``s`` (its :class:`PointInput`
    ``p``), over the whole source: one for every source with a nonzero synapse, whatever the cores
    it reaches (PilotNet's and mnist's dense layers log AxonMap = their neuron count; a conv-shaped
    source feeding a 12-core dense layer logs fewer units than neurons)."""
    read = (p.nonzero if p.identity else p.nonzero.any(0)).astype(np.float64)
    if s.src_channels is None:
        return read
    out = np.zeros(int(np.prod(graph.source_shape(s.src))))
    per = len(read) // (s.src_channels[1] - s.src_channels[0])
    out[s.src_channels[0] * per: s.src_channels[1] * per] = read
    return out


def _overlaps(dst_edges: list[tuple[int, int]], src_edges: list[tuple[int, int]], stride: int, pad: int,
              k: int, size: int) -> np.ndarray:
    """int [src tiles]: along one axis, how many destination tiles read each source tile (a
    destination range ``[a, b)`` reads sources ``[a*stride - pad, (b-1)*stride - pad + k)``)."""
    count = np.zeros(len(src_edges), np.int64)
    for a, b in dst_edges:
        lo, hi = max(0, a * stride - pad), min(size, (b - 1) * stride - pad + k)
        for j, (s0, s1) in enumerate(src_edges):
            count[j] += s0 < hi and lo < s1
    return count


def _edges(n: int, step: int, start: int = 0) -> list[tuple[int, int]]:
    return [(start + a, start + min(a + step, n)) for a in range(0, n, step)]


def conv_routes(s: Synapse, src: LayerTiling, dst: LayerTiling) -> np.ndarray:
    """float [src tiles]: output-route units of each source tile of conv synapse ``s`` (``src``:
    a tiling of its source, or of one channel part of it; ``dst``: of its destination or a part):
    the destination tiles whose receptive-field box overlaps it (separable per axis: x, y,
    channels, in the whole layers' channel coordinates)."""
    (stx, sty, stc), (dtx, dty, dtc) = src.tile_shape, dst.tile_shape
    C_src, H, W = src.spec.shape
    C_dst, Ho, Wo = dst.spec.shape
    kh, kw = np.asarray(s.weight).shape[2:]
    (sh, sw), (ph, pw) = s.stride, s.padding
    cx = _overlaps(_edges(Wo, dtx), _edges(W, stx), int(sw), int(pw), int(kw), W)
    cy = _overlaps(_edges(Ho, dty), _edges(H, sty), int(sh), int(ph), int(kh), H)
    ipg, opg = np.asarray(s.weight).shape[1], np.asarray(s.weight).shape[0] // int(s.groups)
    read0 = s.src_channels[0] if s.src_channels is not None else 0  # source channel of input channel 0
    src_edges = _edges(C_src, stc, src.start)
    cc = np.zeros(len(src_edges), np.int64)
    for a, b in _edges(C_dst, dtc, dst.start):  # input channels the output channels [a, b) read: their groups'
        lo, hi = read0 + (a // opg) * ipg, read0 + ((b - 1) // opg + 1) * ipg
        for j, (s0, s1) in enumerate(src_edges):
            cc[j] += s0 < hi and lo < s1
    # tiles are enumerated channel group, then y, then x (grid_tiling)
    return (cc[:, None, None] * cy[None, :, None] * cx[None, None, :]).reshape(-1).astype(np.float64)


@dataclass
class Packing:
    """Every layer's tiles (one per core), the fan-in splits, cores and chips, systems, lower bound,
    and the :class:`~calibration.core_plan.CorePlan` the Lava lowering builds."""

    tilings: dict[str, list[LayerTiling]]  # layer -> its parts' tilings (an unbuilt split: parts, then the sum)
    splits: list[FanInSplit]
    cores_per_chip: int
    bounds: dict[str, float]  # layer -> lower bound in cores
    rule_minimum: dict[str, int] = field(default_factory=dict)  # layer -> the tile rule's fewest cores (rule_minimum)
    plan: CorePlan = field(default_factory=CorePlan)
    systems: list[dict[str, Any]] = field(default_factory=list)
    method: str = ("lava-loihi tiling as logged: every population cut into the channel parts that need the fewest cores "
                   "(then the fewest parts), each part tiled tx x ty x tc (tx a power of two, ty = ceil(H/2^j), "
                   "tc = ceil(C/2^k)), the fewest tiles that meet every per-core budget, one tile per core; "
                   "readout/1-D layers in contiguous ranges; fan-in splits as partial-sum layers")

    @property
    def num_cores(self) -> int:
        return sum(lt.cores for ts in self.tilings.values() for lt in ts)

    @property
    def chips(self) -> int:
        return -(-self.num_cores // self.cores_per_chip)

    @property
    def cores_per_layer(self) -> dict[str, int]:
        return {name: sum(lt.cores for lt in ts) for name, ts in self.tilings.items()}

    @property
    def lower_bound(self) -> float:
        return float(sum(self.bounds.values()))

    @property
    def bound_ratio(self) -> float:
        return self.num_cores / self.lower_bound if self.lower_bound else 1.0

    @property
    def rule_minimum_cores(self) -> int:
        """The layers' :func:`rule_minimum` summed: the fewest cores the tile rule allows."""
        return int(sum(self.rule_minimum.values()))

    @property
    def rule_ratio(self) -> float:
        """Cores / :attr:`rule_minimum_cores`: what the packing loses to its exactness constraints."""
        return self.num_cores / self.rule_minimum_cores if self.rule_minimum_cores else 1.0

    @property
    def smallest_system(self) -> Optional[str]:
        fitting = [s for s in self.systems if s["fits"]]
        return min(fitting, key=lambda s: s["chips"])["name"] if fitting else None

    def to_dict(self, max_cores: int = 4096) -> dict[str, Any]:
        table, k = [], 0
        for name, ts in self.tilings.items():
            for lt in ts:
                for t in lt.tiles:
                    if k < max_cores:
                        box = [list(b) for b in t.box]
                        if lt.channels is not None:
                            box[0] = [box[0][0] + lt.start, box[0][1] + lt.start]
                        table.append({"core": k, "chip": k // self.cores_per_chip, "layers": [t.layer],
                                      "fragments": [[name] + box], "neurons": t.neurons,
                                      "synmem_bits": int(round(t.synmem_units * UNIT_BITS)), "axons_in": t.axons_in,
                                      "axons_out": int(round(t.routes))})
                    k += 1
        return {"method": self.method, "cores": self.num_cores, "chips": self.chips,
                "cores_per_chip": self.cores_per_chip, "cores_per_layer": self.cores_per_layer,
                "systems": self.systems, "core_table": table, "core_table_truncated": k > max_cores,
                "lower_bound": round(self.lower_bound, 3), "bound_ratio": round(self.bound_ratio, 4),
                "rule_minimum": self.rule_minimum_cores, "rule_ratio": round(self.rule_ratio, 4),
                "smallest_system": self.smallest_system, "fan_in_splits": [s.to_dict() for s in self.splits],
                "cost_model": {k_: v.to_dict() for k_, v in COST_MODEL.items()},
                "partitions": {"cut_populations": self.plan.cut_populations, "parts": self.plan.parts,
                               "populations": len(self.plan.populations),
                               "depthwise_identities": len(self.plan.depthwise)}}


def _constraint(name: str, rules, plans: dict[str, tuple[int, ...]], optimize: bool,
                given: Optional[CorePlan]) -> PartitionConstraint:
    """How population ``name`` may be cut: as ``given`` (the graph's own core plan) says, else as
    its grouped-conv source is, else as :func:`calibration.core_plan.cut_rules` allows."""
    if given is not None:
        return PartitionConstraint(parts=tuple(given.populations[name].parts) if name in given.populations else None,
                                   whole=name not in given.populations)
    if name in rules.follows:
        src, ipg, opg = rules.follows[name]
        if src in plans:
            return PartitionConstraint(parts=followed_parts(plans[src], ipg, opg))
    return PartitionConstraint(tuple(sorted(rules.cuts.get(name, ()))), rules.multiple.get(name, 1),
                               name in rules.whole, optimize=optimize)


def _with_source_parts(spec: LayerSpec, graph: IntegerGraph, plans: dict[str, tuple[int, ...]]) -> LayerSpec:
    """``spec`` with each conv (groups 1) from a channel-partitioned source as one input per source
    part it reads (one Lava Conv each: their kernel rows add up to the same SynMem, their input
    axons count per process)."""
    syns = {s.name: s for s in graph.incoming(spec.name)}
    conv = []
    for c in spec.conv:
        s = syns[c.synapse]
        if c.groups != 1 or s.src not in plans:
            conv.append(c)
            continue
        lo, hi = s.src_channels if s.src_channels is not None else (0, graph.source_shape(s.src)[0])
        edges = np.concatenate([[0], np.cumsum(plans[s.src])])
        for a, b in zip(edges, edges[1:]):
            if a < hi and lo < b:
                conv.append(ConvInput(c.synapse, int(min(b, hi) - max(a, lo)), 1, c.opg, c.taps, c.weight_bits))
    return LayerSpec(spec.name, spec.kind, spec.shape, conv, spec.point, spec.routes)


def _built_splits(graph: IntegerGraph, tilings: dict[str, list[LayerTiling]]) -> list[FanInSplit]:
    """The fan-in splits ``graph`` holds already (:func:`calibration.fan_in.split_layers`)."""
    out = []
    recorded = {d["layer"]: d for d in graph.meta.get("fan_in_splits", []) if isinstance(d, dict)}
    for layer, parts in split_layers(graph).items():
        shape = (graph.num_classes,) if layer == READOUT else graph.populations[layer].shape
        fparts, bits = [], 0
        for p in parts:
            syns = graph.incoming(p)
            tiles = [t for lt in tilings[p] for t in lt.tiles]
            fparts.append(FanInPart(tuple(InputRange(s.name, *(s.src_channels or (0, graph.read_shape(s)[0])))
                                          for s in syns), len(tiles), max(t.axons_in for t in tiles),
                                    max(t.synmem_units for t in tiles)))
            bits = max(bits, payload_bits(partial_sum_bound(graph, syns, shape)))
        rec = recorded.get(layer, {})
        out.append(FanInSplit(layer, int(np.prod(shape)), str(rec.get("reason", "")), float(rec.get("need", 0.0)),
                              tuple(fparts), sum(lt.cores for lt in tilings[layer]), bits, built=True))
    return out


def pack(graph: IntegerGraph, systems, cores_per_chip: int = L.CORES_PER_CHIP.value,
         weight_bits: Optional[dict[str, int]] = None, partition: bool = True,
         depthwise: Optional[frozenset[str]] = None) -> Packing:
    """Cut and tile every layer of ``graph`` in topological order (:func:`partition_layer`: the
    channel parts that need the fewest cores, within what keeps the lowering exact,
    :func:`calibration.core_plan.cut_rules`; its sparse/dense output routes charged to its cores),
    find the fan-in split of a layer one neuron of which overflows a core (:func:`split_fan_in`:
    described and packed; :func:`calibration.fan_in.apply_fan_in_cuts` builds it), then add the conv
    output routes of every tile (a few units per core; the design rules check the total).
    ``systems``: the :class:`~hw_targets.base.System` objects to report (fits or not);
    ``weight_bits``: see :func:`layer_specs`. The identity synapses that may be lowered as depthwise
    convolutions (:func:`calibration.core_plan.depthwise_candidates`) are packed both ways, all of
    them as convolutions and all as ``Sparse``, and the packing with fewer cores is kept (a tie
    keeps ``Sparse``); ``depthwise``, when given, names the ones to lower so instead. A graph that
    carries a core plan (``graph.core_plan``, :func:`deploy.pipeline.map_to_cores` sets it) is cut
    and lowered exactly as the plan says, so
    that the cores counted are those of the Lava processes the lowering builds
    (:func:`calibration.core_plan.check_plan` refuses a plan that would not be exact);
    ``partition``: False ignores it, cuts populations only where a synapse reads a channel range and
    lowers every identity synapse as ``Sparse`` (the packing before channel partitions, for comparison)."""
    candidates = depthwise_candidates(graph)
    cheapest = layer_specs(graph, weight_bits, candidates)  # the bound's lowering, whichever is packed
    bounds = {name: spec.lower_bound() for name, spec in cheapest.items()}
    least = {name: rule_minimum(spec) for name, spec in cheapest.items()}
    given = graph.core_plan if partition else None
    if given is not None or not partition or depthwise is not None:
        chosen = given.depthwise if given is not None else frozenset(depthwise or ()) if partition else frozenset()
        return _pack_lowered(graph, systems, cores_per_chip, weight_bits, partition, chosen, bounds, least)
    sparse = _pack_lowered(graph, systems, cores_per_chip, weight_bits, partition, frozenset(), bounds, least)
    if not candidates:
        return sparse
    as_conv = _pack_lowered(graph, systems, cores_per_chip, weight_bits, partition, candidates, bounds, least)
    return as_conv if as_conv.num_cores < sparse.num_cores else sparse


def _pack_lowered(graph: IntegerGraph, systems, cores_per_chip: int, weight_bits: Optional[dict[str, int]],
                  partition: bool, depthwise: frozenset[str], bounds: dict[str, float],
                  least: dict[str, Optional[int]]) -> Packing:
    """:func:`pack` with the identity synapses named in ``depthwise`` lowered as depthwise
    convolutions; ``bounds`` and ``least``: each layer's lower bound and :func:`rule_minimum`."""
    specs = layer_specs(graph, weight_bits, depthwise)
    rules = cut_rules(graph, depthwise)
    given = graph.core_plan if partition else None
    check_plan(graph, given)
    lowered = lowered_synapses(graph, depthwise)
    out_syn: dict[str, list[Synapse]] = {name: [] for name in specs}
    for s in lowered:
        if s.src != INPUT:
            out_syn[s.src].append(s)
    points = {p.synapse: p for spec in specs.values() for p in spec.point}
    tilings: dict[str, list[LayerTiling]] = {}
    splits: list[FanInSplit] = []
    plans: dict[str, tuple[int, ...]] = {}
    plan = CorePlan(method=given.method if given is not None else "hw_targets.packing.partition_layer: the fewest "
                    "cores under lava-loihi's logged tile rule, then the fewest parts", depthwise=depthwise)
    for name in specs:
        spec = specs[name]
        spec.routes = sum((synapse_routes(points[s.name], graph, s) for s in out_syn[name] if s.kind != "conv"),
                          np.zeros(spec.neurons))
        ts = partition_layer(_with_source_parts(spec, graph, plans), _constraint(name, rules, plans, partition, given)) \
            if name != READOUT else partition_layer(spec, PartitionConstraint(whole=True))
        if ts is not None:
            tilings[name] = ts
            if name in graph.populations:
                plans[name] = tuple(lt.spec.shape[0] for lt in ts)
                plan.populations[name] = PopulationPlan(name, plans[name], tuple(lt.tile_shape for lt in ts),
                                                        tuple(lt.cores for lt in ts))
            continue
        read = {}
        for s in graph.incoming(name):
            shape = graph.read_shape(s)
            if splittable(s):
                read[s.name] = (shape[0], int(np.prod(shape[1:])) if len(shape) > 1 else 1)
        split, ts = split_fan_in(spec, read, lambda cut: _cut_bits(graph, cut))
        splits.append(split)
        tilings[name] = ts
    splits = _built_splits(graph, tilings) + splits
    for s in lowered:  # conv output routes, per source tile
        if s.kind != "conv" or s.src == INPUT:
            continue
        for src in tilings[s.src]:
            for d in tilings[s.dst]:
                if src.tile_shape is None or d.tile_shape is None or not any(
                        c.synapse == s.name for c in d.spec.conv):
                    continue
                for tile, r in zip(src.tiles, conv_routes(s, src, d)):
                    tile.routes += float(r)
    rule_min = {name: sum(lt.cores for lt in tilings[name]) if least[name] is None else least[name]
                for name in specs}  # a fan-in split layer counts as packed
    packing = Packing(tilings, splits, cores_per_chip, bounds, rule_min, plan)
    packing.systems = [{"name": s.name, "key": s.key, "chips": s.chips, "cores": s.chips * cores_per_chip,
                        "fits": packing.num_cores <= s.chips * cores_per_chip, "chips_needed": packing.chips,
                        "core_utilization": packing.num_cores / (s.chips * cores_per_chip), "estimate": s.estimate}
                       for s in systems]
    return packing


def _cut_bits(graph: IntegerGraph, cut: FanInCut) -> int:
    """Payload bits (sign included) of the largest partial sum of ``cut`` (:mod:`calibration.fan_in`)."""
    shape = (graph.num_classes,) if cut.layer == READOUT else graph.populations[cut.layer].shape
    syns = {s.name: s for s in graph.incoming(cut.layer)}
    return max(payload_bits(partial_sum_bound(
        graph, [restrict(graph, syns[r.synapse], r.start, r.stop, r.synapse, cut.layer) for r in part], shape))
        for part in cut.parts)
