"""Loihi 2 design rules: small named rules, one per limit, run by one checker.

:func:`check_design_rules` tiles the graph onto cores (:func:`hw_targets.packing.pack`) and runs
every rule of :data:`RULES` on the result, the way rockpool's Xylo mapper runs its named checks:
each rule is a function of a :class:`RuleContext` returning the :class:`Finding` s of one limit of
:mod:`calibration.loihi2_limits` (the one home of every limit; the finding carries the limit's
source and evidence grade). A value over an enforced limit is a violation; the same value over a
limit the target does not enforce (the capacity limits of ``lava-sim``) is a warning ("would not
fit Loihi 2"). :func:`require_design_rules` raises the first violation as one line
(:class:`~xoresnet.errors.DesignRuleError`, exit code 4) naming the layer, the limit and its source.

The rules need only what the architecture fixes, plus the weights' stored precision: run on
:func:`calibration.architecture.architecture_graph` they check a network before calibration, and
on the calibrated graph with its real weights after it (``deploy.pipeline.architecture_check``,
``deploy.cli``).

Rules (in order): :func:`rule_weight_bits`, :func:`rule_synaptic_delay`,
:func:`rule_graded_payload`, :func:`rule_reset_interval`, :func:`rule_neurons_per_core`,
:func:`rule_neurons_per_tile`, :func:`rule_synmem_per_core`, :func:`rule_axon_in_per_core`,
:func:`rule_core_memory`, :func:`rule_neuron_groups_per_core`, :func:`rule_fan_in_split`,
:func:`rule_system_capacity`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from calibration import loihi2_limits as L
from calibration.integer_graph import INPUT, READOUT, IntegerGraph
from xoresnet.errors import DesignRuleError

from .base import HwTarget, System
from .connectivity import SynapseConn, connectivity
from .packing import UNIT_BITS, FanInSplit, Packing, Tile, layer_specs, pack, sparse_synapse_bits, weight_bits_of

#: Layer name of the readout accumulators in tables and packing.
READOUT_LAYER = READOUT
#: A value above this fraction of a limit the packer does not fill by design is a warning.
NEAR_LIMIT = 0.8


@dataclass
class Finding:
    """A violation or warning of one limit: ``layer``, the ``limit`` (name), the ``value`` and the
    limit's value, a one-line ``message``, the limit's ``source`` and ``evidence`` grade.
    ``warning``: reported, never a violation (near a limit, a fan-in split, an unscheduled graph)."""

    layer: str
    limit: str
    value: float
    limit_value: Any
    message: str
    estimate: bool = False
    source: str = ""
    evidence: str = ""
    warning: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SynapseResources:
    """One synapse process: exact counts (``synapses``, fan-in/out) and the cost model's view."""

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
    bits_per_synapse: int  # sparse/dense: stored bits per synapse; conv: 0 (its kernel is shared)
    synmem_bits: int  # its distinct weights once (conv: one kernel, headers included)
    lowered_as: str  # how the core plan lowers it: conv, depthwise conv, sparse or dense

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LayerResources:
    """One population (or the readout accumulators): what it needs and where it went."""

    name: str
    kind: str
    op: Optional[str]
    block: Optional[str]
    neurons: int
    latency: Optional[int]
    synapses: int = 0  # incoming, exact
    synmem_bits: int = 0  # over the layer's cores (cost model)
    fan_in_max: int = 0
    fan_out_max: int = 0
    weight_bits: int = 0
    sign_modes: list[str] = field(default_factory=list)
    delay_max: int = 0
    cores: int = 0
    fragments: int = 0  # tiles (a split layer: partial-sum tiles included)
    axons_in_max: int = 0
    axons_out_max: int = 0  # output-route units of its busiest core
    tile: Optional[list[int]] = None  # [tx, ty, tc] of a spatial layer
    synmem_units_max: float = 0.0
    core_memory_max: float = 0.0
    lower_bound: float = 0.0  # cores: max(neurons / 4096, distinct-weight SynMem / 12000)
    rule_minimum: int = 0  # cores: the fewest lava-loihi's tile rule gives it on its own (packing.rule_minimum)
    fan_in_split: bool = False
    parts: int = 1  # Lava processes (channel parts) of the core plan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DRCResult:
    target: str
    system: Optional[str]
    violations: list[Finding]
    warnings: list[Finding]
    layers: list[LayerResources]
    synapses: list[SynapseResources]
    packing: Packing
    synmem_model: str = ""

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


SYNMEM_MODEL = ("estimate (hw_targets.packing, read off the lava-loihi logs of YOLO-KP): a conv kernel is stored once "
                "per core for the output channels on it, 6 bits per 8-bit weight in (input channel, tap) rows of fewer "
                "than 64 output channels on the core and 4.125 bits in rows of 64 or more (scaled by the weight bits), no "
                "row header; a sparse/dense synapse costs its weight bits + 12 index bits (+ 6 delay bits), each source "
                "row of a core rounded to whole 64-bit units")


# ---------------------------------------------------------------------- rules

@dataclass
class RuleContext:
    """What every rule reads: the graph, the target's limits, the packing, the system asked for."""

    graph: IntegerGraph
    target: HwTarget
    packing: Packing
    system: System
    weight_bits: dict[str, int]  # synapse -> stored precision

    def limit(self, name: str) -> L.Limit:
        return self.target.limits[name]

    def finding(self, layer: str, limit: L.Limit, value: float, message: str, warning: bool = False) -> Finding:
        """A finding of ``limit``; the message gets the limit's name (unless it has it), evidence
        grade and source appended: ``... [delay_max: CODE: lava-dl netx clamps ...]``."""
        name = "" if limit.name in message else f"{limit.name}: "
        grade = limit.evidence + (", estimate" if limit.estimate else "")
        return Finding(layer, limit.name, value, _jsonable(limit.value), f"{message} [{name}{grade}: {limit.source}]",
                       limit.estimate, limit.source, limit.evidence, warning)

    def over(self, layer: str, limit: L.Limit, value: float, what: str, subject: Optional[str] = None) -> Finding:
        """``value`` of ``what`` exceeds ``limit``."""
        subject = subject or f"layer {layer}"
        return self.finding(layer, limit, value, f"{subject}: {what} {value:g} exceeds {limit.name} = "
                                                 f"{_fmt(limit.value)} {limit.unit}")


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


Rule = Callable[[RuleContext], list[Finding]]


def rule_weight_bits(ctx: RuleContext) -> list[Finding]:
    """Every synapse process stores its weights in at most 8 bits; mixed-sign weights are even."""
    lim, out = ctx.limit("weight_bits"), []
    for s in ctx.graph.synapses:
        bits = ctx.weight_bits[s.name]
        where = f"{s.dst} (synapse {s.name})"
        if bits > lim.value:
            out.append(ctx.over(where, lim, bits, "weight bits"))
        w = np.asarray(s.weight)
        if s.sign_mode == "mixed" and np.any(w % 2):
            odd = int(w[w % 2 != 0].flat[0])
            out.append(ctx.finding(where, lim, bits, f"layer {where}: mixed-sign weight {odd} is odd; Loihi stores 7 "
                                                     "magnitude bits + sign (even values only)"))
    return out


def rule_synaptic_delay(ctx: RuleContext) -> list[Finding]:
    """Delays ride on sparse/dense synapses, at most ``delay_max`` steps (a warning above
    :data:`NEAR_LIMIT` of it); a conv has none."""
    lim, out = ctx.limit("delay_max"), []
    for s in ctx.graph.synapses:
        where = f"{s.dst} (synapse {s.name})"
        if s.kind == "conv" and s.delay:
            out.append(ctx.finding(where, lim, int(s.delay), f"layer {where}: a conv synapse cannot carry a delay "
                                                             f"({s.delay}); Lava's Conv has none"))
        elif s.delay > lim.value:
            out.append(ctx.over(where, lim, int(s.delay), "synaptic delay"))
        elif s.delay > NEAR_LIMIT * lim.value:
            out.append(ctx.finding(where, lim, int(s.delay), f"layer {where}: synaptic delay {s.delay} is "
                                                             f"{100 * s.delay / lim.value:.0f}% of {lim.name} = "
                                                             f"{lim.value}", warning=True))
    return out


def rule_graded_payload(ctx: RuleContext) -> list[Finding]:
    """Graded input pixels and fan-in split partial sums fit a graded spike's payload."""
    lim, out = ctx.limit("graded_payload_bits"), []
    bits = max(1, int(ctx.graph.input_levels).bit_length())
    for s in ctx.graph.synapses:
        if s.graded and bits > lim.value:
            out.append(ctx.over(f"{s.dst} (synapse {s.name})", lim, bits, "graded payload bits"))
    for split in ctx.packing.splits:
        if split.payload_bits > lim.value:
            out.append(ctx.over(split.layer, lim, split.payload_bits, "fan-in split partial-sum bits"))
    return out


def rule_reset_interval(ctx: RuleContext) -> list[Finding]:
    """``LIFReset`` resets only at power-of-two intervals on hardware (an unscheduled graph: a warning)."""
    P = ctx.graph.reset_interval
    if P == 0:
        return [ctx.finding("graph", ctx.limit("reset_interval"), 0, "graph: not scheduled (no reset interval, "
                            "latencies or delays); run calibration.schedule.schedule before deploying", warning=True)]
    if P & (P - 1):
        lim = ctx.limit("reset_interval")
        return [ctx.finding("graph", lim, P, f"graph: reset interval {P} is not a power of two (LIFReset on Loihi 2 "
                                             "resets only at power-of-two intervals)")]
    return []


def _per_core(ctx: RuleContext, limit_name: str, value: Callable[[Tile], float], what: str) -> list[Finding]:
    """One finding per layer (or fan-in split part) whose busiest core exceeds ``limit_name``. The
    packer fills cores up to the budgets by design, so there is no near-limit warning."""
    lim, out = ctx.limit(limit_name), []
    for layer, tilings in ctx.packing.tilings.items():
        for lt in tilings:
            if not lt.tiles:
                continue
            worst = max(lt.tiles, key=value)
            v = value(worst)
            subject = f"layer {lt.name}" + (f" (core of tile {worst.box})" if len(lt.tiles) > 1 else "")
            if v > lim.value:
                out.append(ctx.over(layer, lim, round(v, 4), what, subject))
    return out


def rule_neurons_per_core(ctx: RuleContext) -> list[Finding]:
    """A core holds at most ``neurons_per_core`` neurons."""
    return _per_core(ctx, "neurons_per_core", lambda t: t.neurons, "neurons on one core")


def rule_neurons_per_tile(ctx: RuleContext) -> list[Finding]:
    """A tile allocates at most ``neurons_per_tile`` neurons (its padded ``tx x ty x tc``)."""
    return _per_core(ctx, "neurons_per_tile", lambda t: t.allocated, "neurons allocated to one tile")


def rule_synmem_per_core(ctx: RuleContext) -> list[Finding]:
    """A core's synaptic memory (kernels once per core, sparse synapses each) fits its SynMem."""
    return _per_core(ctx, "synmem_units_per_core", lambda t: t.synmem_units, "SynMem units on one core")


def rule_axon_in_per_core(ctx: RuleContext) -> list[Finding]:
    """A core's input axons (a conv input: 2 units; a sparse/dense source: 1 each) fit AxonIn."""
    return _per_core(ctx, "axon_in_units_per_core", lambda t: t.axons_in, "AxonIn units on one core")


def rule_core_memory(ctx: RuleContext) -> list[Finding]:
    """Neuron state, synapses and output-route tables share one memory per core."""
    return _per_core(ctx, "core_memory", lambda t: t.core_memory, "fraction of one core's memory")


def rule_neuron_groups_per_core(ctx: RuleContext) -> list[Finding]:
    """At most ``neuron_groups_per_core`` populations per core (one tile per core: one group)."""
    return _per_core(ctx, "neuron_groups_per_core", lambda t: 1, "neuron groups on one core")


def rule_fan_in_split(ctx: RuleContext) -> list[Finding]:
    """A layer one of whose neurons overflows a core is split, not refused: a warning per split,
    built (its partial sums are populations of the graph) or only found (``deploy.pipeline.map_to_cores``
    builds it)."""
    out = []
    for split in ctx.packing.splits:
        lim = ctx.limit(split.reason if split.reason in ctx.target.limits else "graded_payload_bits")
        need = f"one neuron needs {split.need:g} {lim.unit}, more than {lim.name} = {_fmt(lim.value)}: " \
            if split.reason in ctx.target.limits else ""
        state = ("built: partial sums relayed by GradedVec, the layer one step later and every other branch delayed"
                 if split.built else "found and packed, not built in this graph: deploy.pipeline.map_to_cores "
                 "builds it")
        out.append(ctx.finding(split.layer, lim, split.need,
                               f"layer {split.layer}: {need}fan-in split into {len(split.parts)} partial sums on "
                               f"{split.partial_cores} cores + {split.sum_cores} summing core(s), "
                               f"{split.payload_bits}-bit graded partial sums, +{split.extra_latency} step ({state})",
                               warning=True))
    return out


def rule_system_capacity(ctx: RuleContext) -> list[Finding]:
    """The network (and every layer) fits the system asked for (default: the largest known)."""
    sys_, pk = ctx.system, ctx.packing
    cpc = ctx.limit("cores_per_chip")
    cap = sys_.chips * cpc.value
    evidence = max(sys_.evidence, cpc.evidence, key=L.EVIDENCE.index)  # the weaker of the two
    chips = f"{sys_.chips} chip{'s' if sys_.chips != 1 else ''}"
    lim = L.Limit(f"cores_of_{sys_.key}", cap, f"cores ({sys_.name}: {chips} x {cpc.value})",
                  f"{sys_.source}; {cpc.name}: {cpc.source}", evidence, enforced=cpc.enforced)
    over_layers = [(name, n) for name, n in pk.cores_per_layer.items() if n > cap]
    out = [ctx.finding(name, lim, n, f"layer {name}: needs {n} cores, more than {sys_.name}'s {cap} cores "
                                     f"({chips} x {cpc.value})") for name, n in over_layers]
    if pk.num_cores > cap and not over_layers:
        out.append(ctx.finding("network", lim, pk.num_cores, f"network: needs {pk.num_cores} cores on {pk.chips} "
                                                             f"chips, more than {sys_.name}'s {chips} ({cap} cores)"))
    elif NEAR_LIMIT * cap < pk.num_cores <= cap:
        out.append(ctx.finding("network", lim, pk.num_cores, f"network: {pk.num_cores} cores are "
                                                             f"{100 * pk.num_cores / cap:.0f}% of {sys_.name}'s "
                                                             f"{cap} cores", warning=True))
    return out


#: Every rule, in the order the checker runs them.
RULES: tuple[Rule, ...] = (rule_weight_bits, rule_synaptic_delay, rule_graded_payload, rule_reset_interval,
                           rule_neurons_per_core, rule_neurons_per_tile, rule_synmem_per_core, rule_axon_in_per_core,
                           rule_core_memory, rule_neuron_groups_per_core, rule_fan_in_split, rule_system_capacity)


# ---------------------------------------------------------------------- the checker

def _is_warning(f: Finding, target: HwTarget) -> bool:
    """A rule's warnings and the findings of limits the target does not enforce are warnings."""
    if f.warning:
        return True
    lim = target.limits.get(f.limit)
    if lim is None and f.limit.startswith("cores_of_"):
        lim = target.limits.get("cores_per_chip")
    return lim is not None and not lim.enforced


def _synapse_resources(graph: IntegerGraph, conns: dict[str, SynapseConn], weight_bits: dict[str, int],
                       depthwise: frozenset[str]) -> list[SynapseResources]:
    """Every synapse's :class:`SynapseResources`; ``depthwise``: the identity synapses the core plan
    lowers as depthwise convolutions (costed as convolutions)."""
    whole = layer_specs(graph, weight_bits, depthwise).values()
    specs = {c.synapse: c for spec in whole for c in spec.conv}
    points = {p.synapse: p for spec in whole for p in spec.point}
    out = []
    for s in graph.synapses:
        c = conns[s.name]
        bits = weight_bits[s.name]
        if s.kind == "conv" or s.name in depthwise:
            per, ibits, units = 0, 0, specs[s.name].distinct_units() if s.name in specs else 0.0
        else:
            per = sparse_synapse_bits(bits, bool(s.delay))
            ibits, units = per - bits - (L.DELAY_FIELD_BITS if s.delay else 0), (
                points[s.name].distinct_units() if s.name in points else 0.0)
        out.append(SynapseResources(s.name, s.src, s.dst, s.kind, c.count, int(c.fan_in.max(initial=0)),
                                    int(c.fan_out.max(initial=0)), bits, s.sign_mode,
                                    int(np.abs(s.weight).max(initial=0)), int(s.delay), bool(s.graded), ibits,
                                    L.DELAY_FIELD_BITS if s.delay else 0, per, int(round(units * UNIT_BITS)),
                                    "depthwise conv" if s.name in depthwise else
                                    "sparse" if s.kind == "identity" else s.kind))
    return out


def _layer_resources(graph: IntegerGraph, conns: dict[str, SynapseConn], packing: Packing,
                     syn_res: list[SynapseResources]) -> list[LayerResources]:
    layers: dict[str, LayerResources] = {}
    for p in graph.populations.values():
        layers[p.name] = LayerResources(p.name, p.kind, p.op, p.block, p.size, p.latency if graph.scheduled else None)
    if graph.readout:
        lat = None
        if graph.scheduled:
            try:
                lat = graph.readout_latency()
            except ValueError:
                lat = None
        layers[READOUT_LAYER] = LayerResources(READOUT_LAYER, "readout", None, None, graph.num_classes, lat)
    fan_in = {name: np.zeros(l.neurons, np.int64) for name, l in layers.items()}
    fan_out = {name: np.zeros(l.neurons, np.int64) for name, l in layers.items()}
    for s, r in zip(graph.synapses, syn_res):
        c, dst = conns[s.name], layers[s.dst]
        dst.synapses += c.count
        dst.weight_bits = max(dst.weight_bits, r.weight_bits)
        if r.sign_mode not in dst.sign_modes:
            dst.sign_modes.append(r.sign_mode)
        dst.delay_max = max(dst.delay_max, int(s.delay))
        fan_in[s.dst] += c.fan_in
        if s.src != INPUT:
            fan_out[s.src] += c.fan_out
    split = {sp.layer for sp in packing.splits}
    for name, l in layers.items():
        tiles = [t for lt in packing.tilings[name] for t in lt.tiles]
        main = max(packing.tilings[name], key=lambda lt: lt.cores)  # the part with the most cores
        l.fan_in_max, l.fan_out_max = int(fan_in[name].max(initial=0)), int(fan_out[name].max(initial=0))
        l.cores = l.fragments = len(tiles)
        l.synmem_bits = int(round(sum(t.synmem_units for t in tiles) * UNIT_BITS))
        l.axons_in_max = max((t.axons_in for t in tiles), default=0)
        l.axons_out_max = int(round(max((t.routes for t in tiles), default=0.0)))
        l.synmem_units_max = round(max((t.synmem_units for t in tiles), default=0.0), 3)
        l.core_memory_max = round(max((t.core_memory for t in tiles), default=0.0), 4)
        l.tile = list(main.tile_shape) if main.tile_shape else None
        l.parts = len(packing.tilings[name]) if name in packing.plan.populations else 1
        l.lower_bound = round(packing.bounds[name], 4)
        l.rule_minimum = packing.rule_minimum[name]
        l.fan_in_split = name in split
    return list(layers.values())


def check_design_rules(graph: IntegerGraph, target: HwTarget | str | None = None, *,
                       system: Optional[str] = None, conns: Optional[dict[str, SynapseConn]] = None,
                       rules: tuple[Rule, ...] = RULES) -> DRCResult:
    """Tile ``graph`` onto ``target``'s cores and run ``rules`` on it; never raises for a violation
    (see :func:`require_design_rules`).

    ``system``: a system key or name of the target (``oheo-gulch``, ``kapoho-point``,
    ``hala-point``) the network must fit; default: the largest known system. ``conns``: the
    graph's :func:`~hw_targets.connectivity.connectivity` when already computed.
    """
    if target is None or isinstance(target, str):
        from . import get_target

        target = get_target(target)
    conns = conns if conns is not None else connectivity(graph)
    sys_ = target.system(system) if system else max(target.systems, key=lambda s: s.chips)
    bits = {s.name: weight_bits_of(s) for s in graph.synapses}
    packing = pack(graph, target.systems, target.limits["cores_per_chip"].value, bits)
    ctx = RuleContext(graph, target, packing, sys_, bits)
    violations, warnings = [], []
    for rule in rules:
        for f in rule(ctx):
            (warnings if _is_warning(f, target) else violations).append(f)
    for f in warnings:
        if not f.warning:  # a violation of a limit the target does not enforce
            f.message = f"would not fit Loihi 2: {f.message}"
    syn_res = _synapse_resources(graph, conns, bits, packing.plan.depthwise)
    layers = _layer_resources(graph, conns, packing, syn_res)
    return DRCResult(target.name, sys_.key if system else None, violations, warnings, layers, syn_res, packing,
                     SYNMEM_MODEL)


def require_design_rules(result: DRCResult) -> DRCResult:
    """Raise :class:`~xoresnet.errors.DesignRuleError` (exit code 4) for the first violation, one line."""
    if result.violations:
        first = result.violations[0]
        more = len(result.violations) - 1
        raise DesignRuleError(f"design rule violated on {result.target}: {first.message}"
                              + (f" (and {more} more violation{'s' if more > 1 else ''})" if more else ""))
    return result


__all__ = ["DRCResult", "Finding", "LayerResources", "RULES", "RuleContext", "SynapseResources", "FanInSplit",
           "check_design_rules", "require_design_rules"]
