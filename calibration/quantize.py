"""Calibration: a float NIR graph plus calibration samples -> a Loihi integer graph.

One scale ``s`` per neuron population (a-units per float unit of current): every synapse into it
is quantized as ``round(w * s)``, its bias ``bias * s * 64`` v-units as ``mant << exp``, and its
threshold *is* the integer ``vth_mant``: the search runs over integer mantissas and sets
``s = vth_mant / vth``, so the threshold carries no rounding error (up to float64 arithmetic).
``s`` is bounded by what must fit Loihi 2 (the largest weight, the 17-bit threshold, the 13+3-bit
bias and the worst-case input current, which must keep ``u`` inside 24 bits for *every* input
pattern), and chosen among the ``candidates`` largest threshold mantissas under that bound by
running each population on the calibration samples with its float inputs (teacher forcing):
fewest spike mismatches against the float model, then the largest scale. Gates keep their
integer weights and get ``vth_mant = floor(threshold)``.

Nothing is clipped: a value that does not fit raises :class:`~xoresnet.errors.RangeError`
naming the population or synapse and the value. A :class:`QuantSpec` (the chosen threshold
mantissas) reproduces a calibration exactly; quantization-aware training keeps one fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from deploy.nir_interpreter import NIRInterpreter
from xoresnet.errors import RangeError, UnsupportedModelError

from . import fixed_point as fx
from .float_graph import FloatGraph, FloatPopulation, FloatSynapse, nir_to_float_graph
from .integer_graph import INPUT, READOUT, IntegerGraph, Population, Synapse

SPEC_VERSION = 1
WEIGHT_EXP_MAX = 7


@dataclass
class QuantSpec:
    """The calibration choice: threshold mantissa per neuron population (JSON-able)."""

    vth_mant: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"version": SPEC_VERSION, "vth_mant": dict(self.vth_mant), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantSpec":
        if int(d.get("version", 0)) != SPEC_VERSION:
            raise UnsupportedModelError(f"quantization spec version {d.get('version')!r} is not {SPEC_VERSION}")
        return cls({k: int(v) for k, v in d["vth_mant"].items()}, dict(d.get("meta", {})))


# ---------------------------------------------------------------------- quantizers (torch, float64 in)

def sign_mode(w: torch.Tensor) -> str:
    if w.numel() == 0 or bool(w.min() >= 0):
        return "excitatory"
    return "inhibitory" if bool(w.max() <= 0) else "mixed"


def round_weight(w_scaled: torch.Tensor, mode: str) -> torch.Tensor:
    """Round scaled weights to what Loihi stores: even integers for mixed-sign matrices, else integers."""
    return 2 * torch.round(w_scaled / 2) if mode == "mixed" else torch.round(w_scaled)


def weight_range(mode: str) -> tuple[int, int]:
    return {"mixed": fx.WEIGHT_RANGE_MIXED, "excitatory": fx.WEIGHT_RANGE_EXCITATORY,
            "inhibitory": fx.WEIGHT_RANGE_INHIBITORY}[mode]


def quantize_weight(w_scaled: torch.Tensor, *, allow_exp: bool, what: str) -> tuple[torch.Tensor, int]:
    """``(w_int, weight_exp)`` with ``w_int << weight_exp ~= w_scaled``; conv synapses have no exponent."""
    mode = sign_mode(w_scaled)
    lo, hi = weight_range(mode)
    for exp in range(0, WEIGHT_EXP_MAX + 1 if allow_exp else 1):
        q = round_weight(w_scaled / (1 << exp), mode)
        if q.numel() == 0 or (bool(q.min() >= lo) and bool(q.max() <= hi)):
            return q, exp
    bad = float(q.abs().max())
    raise RangeError(f"{what}: a weight quantizes to {bad:.0f}, outside Loihi 2's {mode} range [{lo}, {hi}]"
                     + (f" even with weight exponent {WEIGHT_EXP_MAX}" if allow_exp else ""))


def quantize_bias(bias_v: torch.Tensor, *, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron ``(mant, exp)``, ``exp`` in 0..7 as small as possible, ``mant << exp ~= bias_v``."""
    lo, hi = fx.BIAS_MANT_RANGE
    mant = torch.round(bias_v)
    exp = torch.zeros_like(bias_v)
    for e in range(1, fx.BIAS_EXP_RANGE[1] + 1):
        over = (mant < lo) | (mant > hi)
        if not bool(over.any()):
            break
        mant = torch.where(over, torch.round(bias_v / (1 << e)), mant)
        exp = torch.where(over, torch.full_like(exp, e), exp)
    if bool(((mant < lo) | (mant > hi)).any()):
        raise RangeError(f"{what}: bias {float(bias_v.abs().max()) / 64:.0f} a-units does not fit Loihi 2's "
                         f"13-bit mantissa with exponent <= {fx.BIAS_EXP_RANGE[1]}")
    return mant, exp


def max_input(syn: FloatSynapse | Synapse, levels: int) -> int:
    return levels if syn.graded else 1


def worst_case_current(weights: list[tuple[torch.Tensor, str, int]], shape: tuple[int, ...]) -> tuple[float, float]:
    """Largest positive and negative synaptic input ``a`` any neuron of ``shape`` can receive.

    ``weights``: ``(w, kind, max_input)`` per incoming synapse (float or integer values).
    """
    pos = torch.zeros(shape, dtype=torch.float64)
    neg = torch.zeros(shape, dtype=torch.float64)
    for w, kind, m in weights:
        w = w.to(torch.float64)
        if kind == "conv":
            p = w.clamp(min=0).flatten(1).sum(1) * m
            n = w.clamp(max=0).flatten(1).sum(1) * m
            pos += p.view((-1,) + (1,) * (len(shape) - 1))
            neg += n.view((-1,) + (1,) * (len(shape) - 1))
        elif kind == "identity":
            pos += w.clamp(min=0) * m
            neg += w.clamp(max=0) * m
        else:
            pos += (w.clamp(min=0).sum(1) * m).view(shape)
            neg += (w.clamp(max=0).sum(1) * m).view(shape)
    return float(pos.max()), float(neg.min())


def current_limit(du: int) -> float:
    """Largest |a| for which ``u`` (accumulating with decay ``du + 1``) never wraps its 24 bits."""
    return (1 << (23 - fx.ACT_SHIFT)) * (du + 1) / fx.DECAY_UNITY


# ---------------------------------------------------------------------- per-population quantization

def decay_codes(pop: FloatPopulation) -> tuple[int, int]:
    return round(pop.du * fx.DECAY_UNITY) - 1, round(pop.dv * fx.DECAY_UNITY)


def scale_bounds(pop: FloatPopulation, syns: list[FloatSynapse], levels: int) -> dict[str, float]:
    """Upper bounds on the scale of a neuron population, by cause."""
    bounds: dict[str, float] = {}
    for syn in syns:
        m = float(np.abs(syn.weight).max()) if syn.weight.size else 0.0
        if m > 0:
            cap = 254 if sign_mode(torch.as_tensor(syn.weight)) == "mixed" else 255
            if syn.kind != "conv":
                cap *= 1 << WEIGHT_EXP_MAX
            bounds[f"weights of {syn.name}"] = cap / m
    bounds["threshold"] = fx.VTH_RANGE[1] / pop.vth
    b = float(np.abs(pop.bias).max()) if pop.bias is not None and pop.bias.size else 0.0
    if b > 0:
        bounds["bias"] = fx.BIAS_MANT_RANGE[1] * (1 << fx.BIAS_EXP_RANGE[1]) / (64 * b)
    pos, neg = worst_case_current([(torch.as_tensor(s.weight), s.kind, max_input(s, levels)) for s in syns], pop.shape)
    worst = max(pos, -neg)
    if worst > 0:
        bounds["current"] = current_limit(decay_codes(pop)[0]) / worst
    return bounds


def binding_detail(pop: FloatPopulation, syns: list[FloatSynapse], binding: str) -> str:
    """The offending value behind a scale bound, for error messages."""
    if binding == "bias":
        return f"bias {float(np.abs(pop.bias).max()):.8g} (float units)"
    if binding == "threshold":
        return f"vth {pop.vth:.6g}"
    if binding.startswith("weights of "):
        syn = next(s for s in syns if s.name == binding[len("weights of "):])
        return f"largest weight {float(np.abs(syn.weight).max()):.8g} (float units)"
    return "the worst-case input current is too large"


@dataclass
class QuantizedPopulation:
    population: Population
    synapses: list[Synapse]
    worst_current: tuple[float, float]


def quantize_population(pop: FloatPopulation, syns: list[FloatSynapse], levels: int,
                        vth_mant: Optional[int]) -> QuantizedPopulation:
    """Integer population and synapses for one scale (``vth_mant``; ``None`` for gates)."""
    du, dv = decay_codes(pop)
    int_syns = []
    if pop.kind == "gate":
        for syn in syns:
            if not np.allclose(syn.weight, np.round(syn.weight)):
                raise UnsupportedModelError(f"gate {pop.name}: input weights must be integers (synapse {syn.name})")
        if pop.vth < 0:
            raise UnsupportedModelError(f"gate {pop.name}: negative threshold {pop.vth}")
        scale, vth = 1.0, int(math.floor(pop.vth))
        du = dv = fx.DU_RANGE[1]
        bias_mant = np.zeros(pop.shape, np.int64)
        bias_exp = np.zeros(pop.shape, np.int64)
    else:
        scale, vth = vth_mant / pop.vth, int(vth_mant)
        if not fx.VTH_RANGE[0] <= vth <= fx.VTH_RANGE[1]:
            raise RangeError(f"population {pop.name}: threshold mantissa {vth} outside Loihi 2's 17-bit range")
        mant, exp = quantize_bias(torch.as_tensor(pop.bias * scale * 64), what=f"population {pop.name}")
        bias_mant, bias_exp = mant.long().numpy(), exp.long().numpy()
    for syn in syns:
        w, exp = quantize_weight(torch.as_tensor(syn.weight) * scale, allow_exp=syn.kind != "conv",
                                 what=f"synapse {syn.name} into {pop.name}")
        int_syns.append(Synapse(syn.name, syn.src, syn.dst, syn.kind, w.long().numpy(), weight_exp=exp,
                                stride=syn.stride, padding=syn.padding, groups=syn.groups, graded=syn.graded))
    worst = worst_case_current([(torch.as_tensor(s.weight) * (1 << s.weight_exp), s.kind, max_input(s, levels))
                                for s in int_syns], pop.shape)
    limit = current_limit(du)
    if worst[0] > limit or -worst[1] > limit:
        raise RangeError(f"population {pop.name}: a worst-case input current of {max(worst[0], -worst[1]):.0f} a-units "
                         f"could overflow Loihi's 24-bit u (limit {limit:.0f}); lower its weights or its scale")
    if pop.kind == "gate" and max(worst[0], -worst[1]) >= 64:
        raise RangeError(f"gate {pop.name}: input sums up to {max(worst[0], -worst[1]):.0f} would leave memory "
                         "in v (a gate needs |sum| < 64)")
    population = Population(pop.name, pop.shape, du, dv, vth, bias_mant, bias_exp, kind=pop.kind, op=pop.op,
                            block=pop.block, scale=scale)
    return QuantizedPopulation(population, int_syns, worst)


# ---------------------------------------------------------------------- teacher-forced evaluation

def _source_values(syn: FloatSynapse, trace_outputs: dict[str, torch.Tensor], pixels: torch.Tensor, T: int):
    """Source values ``[T*B, ...]`` of a synapse on the calibration batch."""
    if syn.src == INPUT:
        return pixels.repeat(T, 1, 1, 1)
    return trace_outputs[syn.src].flatten(0, 1)


def float_current(syns: list[FloatSynapse], sources: list[torch.Tensor]) -> torch.Tensor:
    total = None
    for syn, x in zip(syns, sources):
        w = torch.as_tensor(syn.weight, dtype=torch.float64)
        x = x.to(torch.float64)
        if syn.kind == "conv":
            y = torch.nn.functional.conv2d(x, w, stride=syn.stride, padding=syn.padding, groups=syn.groups)
        elif syn.kind == "identity":
            y = x * w
        else:
            y = x.flatten(1) @ w.T
        total = y if total is None else total + y
    return total


def integer_current(syns: list[Synapse], sources: list[torch.Tensor]) -> torch.Tensor:
    total = None
    for syn, x in zip(syns, sources):
        w = torch.as_tensor(syn.weight)
        if syn.kind == "conv":
            y = fx.conv_current(x, w, stride=syn.stride, padding=syn.padding, groups=syn.groups)
        elif syn.kind == "identity":
            y = fx.identity_current(x, w, syn.weight_exp)
        else:
            y = fx.dense_current(x, w, syn.weight_exp)
        total = y if total is None else total + y
    return total


def simulate_population(p: Population, a: torch.Tensor) -> torch.Tensor:
    """Integer spikes of ``p`` for integer input ``a [T, ...]`` from zero state (zero-delay)."""
    bias = fx.bias_value(torch.as_tensor(p.bias_mant), torch.as_tensor(p.bias_exp))
    u = torch.zeros_like(a[0])
    v = torch.zeros_like(a[0])
    out = torch.empty(a.shape, dtype=torch.bool)
    for t in range(a.shape[0]):
        u, _h, out[t], v = fx.lif_step(u, v, a[t], du=p.du, dv=p.dv, bias=bias, vth=p.vth)
    return out


# ---------------------------------------------------------------------- the calibration stage

@dataclass
class Calibration:
    graph: IntegerGraph
    spec: QuantSpec
    report: dict[str, Any]


def calibrate(float_graph: FloatGraph, pixels: torch.Tensor, trace: Optional[dict[str, torch.Tensor]], *,
              spec: Optional[QuantSpec] = None, candidates: int = 4) -> Calibration:
    """Quantize ``float_graph``; ``pixels`` ``[N, C, H, W]`` integers are the calibration samples and
    ``trace`` the float model's spikes ``[T, N, ...]`` per population on them (NIR interpreter).

    With ``spec`` the threshold mantissas are taken from it (no search): the integer graph of a
    quantization-aware trained model is then exactly the one it was trained with.
    """
    fg = float_graph
    T, levels = fg.timesteps, fg.input_levels
    pixels = torch.as_tensor(pixels).to(torch.int64)
    pops: dict[str, Population] = {}
    int_syns: list[Synapse] = []
    report: dict[str, Any] = {"calibration_samples": int(pixels.shape[0]), "candidates": candidates,
                              "spec_given": spec is not None, "populations": {}}
    chosen: dict[str, int] = {}
    for name, pop in fg.populations.items():
        syns = fg.incoming(name)
        entry: dict[str, Any] = {"kind": pop.kind, "op": pop.op, "block": pop.block}
        if pop.kind == "gate":
            q = quantize_population(pop, syns, levels, None)
        else:
            bounds = scale_bounds(pop, syns, levels)
            binding = min(bounds, key=bounds.get)
            top = int(math.floor(pop.vth * bounds[binding]))
            if spec is not None:
                if name not in spec.vth_mant:
                    raise UnsupportedModelError(f"the quantization spec has no entry for population {name}")
                tried = [spec.vth_mant[name]]
            else:
                tried = [m for m in range(top, top - candidates, -1) if m >= 1]
                if not tried:
                    raise RangeError(
                        f"population {name}: no scale fits Loihi 2: its {binding} limits the threshold mantissa to "
                        f"{pop.vth * bounds[binding]:.3g} (< 1); {binding_detail(pop, syns, binding)}")
            results, error = [], None
            for mant in tried:
                try:
                    cand = quantize_population(pop, syns, levels, mant)
                except RangeError as e:  # rounding pushed a value over its range: try a smaller scale
                    error = e
                    continue
                metrics = teacher_forced_metrics(cand, syns, trace, pixels, T) if trace is not None else {}
                results.append((metrics.get("spike_mismatch", 0.0), -mant, cand, metrics))
            if not results:
                raise error
            results.sort(key=lambda r: (r[0], r[1]))
            _, _, q, metrics = results[0]
            chosen[name] = q.population.vth
            entry.update(binding_limit=binding, scale_bound=bounds[binding],
                         tried={str(-r[1]): r[0] for r in results}, **metrics)
        p = q.population
        limit = current_limit(p.du)
        entry.update(scale=p.scale, vth_mant=p.vth, du=p.du, dv=p.dv,
                     max_abs_weight=int(max((np.abs(s.weight).max() for s in q.synapses), default=0)),
                     weight_exp=[s.weight_exp for s in q.synapses],
                     bias_exp_range=[int(p.bias_exp.min()), int(p.bias_exp.max())],
                     current_headroom=max(q.worst_current[0], -q.worst_current[1]) / limit)
        report["populations"][name] = entry
        pops[name] = p
        int_syns += q.synapses
    readout_syns, readout_bias, readout_scale = quantize_readout(fg)
    report["readout"] = {"scale": readout_scale,
                         "max_abs_weight": int(max(np.abs(s.weight).max() for s in readout_syns))}
    graph = IntegerGraph(
        input_shape=fg.input_shape, input_levels=levels, timesteps=T, populations=pops,
        synapses=int_syns + readout_syns, readout_bias=readout_bias, readout_scale=readout_scale,
        meta={"calibration": report, "source": fg.meta})
    graph.validate()
    return Calibration(graph, QuantSpec(chosen, {"calibration_samples": int(pixels.shape[0])}), report)


def readout_scale(weight: torch.Tensor) -> float:
    """Scale putting the largest readout weight at the top of the 8-bit range."""
    m = float(weight.abs().max()) if weight.numel() else 0.0
    return (254 if sign_mode(weight) == "mixed" else 255) / m if m > 0 else 1.0


def quantize_readout(fg: FloatGraph) -> tuple[list[Synapse], np.ndarray, float]:
    """Readout weights on one scale (8-bit, host-side integer bias)."""
    syns = [s for s in fg.synapses if s.dst == READOUT]
    w_all = torch.cat([torch.as_tensor(s.weight).flatten() for s in syns])
    mode = sign_mode(w_all)
    scale = readout_scale(w_all)
    out = []
    for s in syns:
        q = round_weight(torch.as_tensor(s.weight) * scale, mode)
        out.append(Synapse(s.name, s.src, READOUT, "dense", q.long().numpy()))
    bias = np.round(fg.readout_bias * scale).astype(np.int64)
    return out, bias, scale


def teacher_forced_metrics(q: QuantizedPopulation, float_syns: list[FloatSynapse], trace: dict[str, torch.Tensor],
                           pixels: torch.Tensor, T: int) -> dict[str, float]:
    """Spike mismatch and current error of one quantized population given the float model's inputs."""
    p = q.population
    B = pixels.shape[0]
    sources = [_source_values(s, trace, pixels, T) for s in float_syns]
    a = integer_current(q.synapses, [s.to(torch.int64) for s in sources]).view((T, B) + p.shape)
    x = float_current(float_syns, sources).view((T, B) + p.shape)
    spikes = simulate_population(p, a)
    ref = trace[p.name] > 0
    vth = p.vth / p.scale
    return {"spike_mismatch": float((spikes != ref).double().mean()),
            "current_rmse_vth": float(torch.sqrt(((a / p.scale - x) ** 2).mean())) / vth}


def calibrate_nir(nir_graph, pixels: torch.Tensor, *, spec: Optional[QuantSpec] = None,
                  candidates: int = 4) -> Calibration:
    """Float NIR graph + calibration samples -> :class:`Calibration` (integer graph, spec, report)."""
    fg = nir_to_float_graph(nir_graph)
    pixels = torch.as_tensor(pixels).to(torch.int64)
    trace = None
    if pixels.numel():
        populations = set(fg.populations)
        run = NIRInterpreter(nir_graph, dtype=torch.float64).run(pixels.to(torch.float64) / fg.input_levels,
                                                                 keep=populations)
        trace = {k: v for k, v in run.outputs.items() if k in populations}
    return calibrate(fg, pixels, trace, spec=spec, candidates=candidates)
