"""Calibration: a float NIR graph plus calibration samples -> a Loihi integer graph.

One scale ``s`` per neuron population (a-units per float unit of current): every synapse into it
is quantized as ``round(w * s)``, its bias ``bias * s * 64`` v-units as ``mant << exp``, and its
threshold *is* the integer ``vth_mant``: the search runs over integer mantissas and sets
``s = vth_mant / vth``, so the threshold carries no rounding error (up to float64 arithmetic).

``s`` is bounded by what must fit Loihi 2 (the largest weight, the 17-bit threshold, the 13+3-bit
bias and the worst-case input current, which must keep ``u`` inside 24 bits for *every* input
pattern); the tightest bound gives the largest threshold mantissa ``top``. Below it, ``s`` scales
weights, bias and threshold together, so it changes nothing but how every value rounds, and the
calibration samples choose the rounding: up to ``candidates`` mantissas spread geometrically over
``[top * 2^-SEARCH_SPAN, top]`` are tried. Populations are calibrated in topological order, each on
the integer spikes of its already quantized sources (the input pixels for the stem), so every
population is judged on the inputs Loihi will really give it and upstream errors are not
counted against it. A candidate's score is the RMS error, in units of ``vth``, of its integer
drive ``(a + bias / 64) / s`` against what the float weights and bias make of the same inputs;
the smallest wins, ties going to the larger scale. (Scoring by spike agreement instead chose
scales that were worse on held-out images: spike flips are rare events, the drive error is not.)
Without calibration samples the largest scale that fits is taken. Gates keep their integer
weights and get ``vth_mant = floor(threshold)``.

The report records per population every bound and the binding one, each candidate with its
score, the choice and why, and the quantization error: the relative RMS weight error, the drive
error and the fraction of neuron-steps whose integer spike differs from the float model's.

Nothing is clipped: a value that does not fit raises :class:`~xoresnet.errors.RangeError`
naming the population or synapse and the value. A :class:`QuantSpec` (the chosen threshold
mantissas) reproduces a calibration exactly; quantization-aware training keeps one fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
import torch

from deploy.nir_interpreter import NIRInterpreter
from deploy.reference import zero_delay_current
from xoresnet.errors import RangeError, UnsupportedModelError

from . import fixed_point as fx
from .float_graph import FloatGraph, FloatPopulation, FloatSynapse, nir_to_float_graph
from .integer_graph import INPUT, READOUT, IntegerGraph, Population, Synapse

SPEC_VERSION = 1
WEIGHT_EXP_MAX = 7
DEFAULT_CANDIDATES = 32
#: The scales searched below the range-limited maximum, in octaves: a scale ``r`` times the maximum
#: rounds every value ``1 / r`` times coarser on average, so only lucky rounding can win far below
#: it (on the bundled digits model a whole-octave search chose scales within 7 % of the maximum).
SEARCH_SPAN = 0.125


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

def round_weight(w_scaled: torch.Tensor, mode: str) -> torch.Tensor:
    """Round scaled weights to what Loihi stores: even integers for mixed-sign matrices, else integers."""
    return 2 * torch.round(w_scaled / 2) if mode == "mixed" else torch.round(w_scaled)


def quantize_weight(w_scaled: torch.Tensor, *, allow_exp: bool, what: str) -> tuple[torch.Tensor, int]:
    """``(w_int, weight_exp)`` with ``w_int << weight_exp ~= w_scaled``; conv synapses have no exponent."""
    mode = fx.sign_mode(w_scaled)
    lo, hi = fx.weight_range(mode)
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

def scale_bounds(pop: FloatPopulation, syns: list[FloatSynapse], levels: int) -> dict[str, float]:
    """Upper bounds on the scale of a neuron population, by cause."""
    bounds: dict[str, float] = {}
    for syn in syns:
        m = float(np.abs(syn.weight).max()) if syn.weight.size else 0.0
        if m > 0:
            cap = 254 if fx.sign_mode(syn.weight) == "mixed" else 255
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
        bounds["current"] = current_limit(fx.decay_codes(pop.du, pop.dv)[0]) / worst
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
    du, dv = fx.decay_codes(pop.du, pop.dv)
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
                                stride=syn.stride, padding=syn.padding, groups=syn.groups, graded=syn.graded,
                                model_delay=syn.model_delay))
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


# ---------------------------------------------------------------------- scoring candidates on calibration samples

@dataclass
class SampleInputs:
    """One population's view of the ``B`` calibration samples over ``T`` steps: what the integer graph
    feeds each incoming synapse, the input pixels ``[B, C, H, W]`` (int64) or the integer spikes
    ``[T, B, *shape]`` of its already quantized source (``int_sources``), the same values flattened
    to ``[T*B, ...]`` float32 frames (``frames``), the float model's spikes ``[T, B, *shape]`` (bool,
    from its own float inputs) and its threshold ``vth`` (float units)."""

    int_sources: list[torch.Tensor]
    frames: list[torch.Tensor]
    float_spikes: torch.Tensor
    vth: float


def sample_inputs(pop: FloatPopulation, syns: list[FloatSynapse], pixels: torch.Tensor,
                  trace: dict[str, torch.Tensor], int_spikes: dict[str, torch.Tensor], T: int) -> SampleInputs:
    """The calibration samples as ``pop`` sees them; ``trace``: the float model's spikes per population,
    ``int_spikes``: integer spikes of the populations quantized so far (both ``[T, B, *shape]``)."""
    int_sources = [pixels if s.src == INPUT else int_spikes[s.src] for s in syns]
    frames = [(pixels.repeat(T, 1, 1, 1) if s.src == INPUT else x.flatten(0, 1)).to(torch.float32)
              for s, x in zip(syns, int_sources)]
    return SampleInputs(int_sources, frames, trace[pop.name] > 0, pop.vth)


def float_current(syns: list[FloatSynapse], frames: list[torch.Tensor]) -> torch.Tensor:
    """Summed synaptic input ``[T*B, ...]`` of ``syns`` (float weights) for the source ``frames``
    ``[T*B, ...]``, in the frames' dtype."""
    total = None
    for syn, x in zip(syns, frames):
        w = torch.as_tensor(syn.weight, dtype=x.dtype)
        if syn.kind == "conv":
            y = torch.nn.functional.conv2d(x, w, stride=syn.stride, padding=syn.padding, groups=syn.groups)
        elif syn.kind == "identity":
            y = x * w
        else:
            y = x.flatten(1) @ w.T
        total = y if total is None else total + y
    return total


def drive_error(q: QuantizedPopulation, pop: FloatPopulation, syns: list[FloatSynapse], inputs: SampleInputs
                ) -> float:
    """RMS error, in units of the threshold, of the integer drive ``(a + bias / 64) / scale`` of ``q``
    against what the float weights and bias of ``pop`` make of the same inputs: the error this
    population's own rounding adds (the score). By linearity it is the drive of the rounding
    residuals ``w_int 2^exp - w * scale`` and ``bias / 64 - bias_float * scale`` (a-units), which
    float32 carries to ~1e-7 of the error (the integer input itself never wraps: the current bound)."""
    p = q.population
    residual = [replace(f, weight=s.weight * 2.0 ** s.weight_exp - f.weight * p.scale)
                for s, f in zip(q.synapses, syns)]
    bias = population_bias(p).to(torch.float64) / 2 ** fx.ACT_SHIFT
    if pop.bias is not None:
        bias = bias - torch.as_tensor(pop.bias) * p.scale
    T, B = inputs.float_spikes.shape[:2]
    err = float_current(residual, inputs.frames).view((T, B) + p.shape) + bias.to(torch.float32)
    return math.sqrt(float(err.square().sum(dtype=torch.float64)) / err.numel()) / (p.scale * inputs.vth)


def integer_spikes(q: QuantizedPopulation, inputs: SampleInputs) -> torch.Tensor:
    """Loihi spikes ``[T, B, *shape]`` (bool) of ``q`` on the samples: zero delay, from zero state."""
    p = q.population
    T, B = inputs.float_spikes.shape[:2]
    weights = [torch.as_tensor(s.weight) for s in q.synapses]
    a = zero_delay_current(q.synapses, weights, inputs.int_sources, p.shape, T, B, torch.device("cpu"))
    return fx.integrate(a, du=p.du, dv=p.dv, bias=population_bias(p), vth=p.vth)[0]


def population_bias(p: Population) -> torch.Tensor:
    """Effective per-neuron bias of ``p`` (int64 v-units)."""
    return fx.bias_value(torch.as_tensor(p.bias_mant), torch.as_tensor(p.bias_exp))


def weight_error(q: QuantizedPopulation, syns: list[FloatSynapse]) -> float:
    """RMS of ``w_int 2^exp / scale - w`` over all incoming weights, relative to the RMS weight."""
    err = ref = 0.0
    for syn, fsyn in zip(q.synapses, syns):
        w = fsyn.weight
        err += float(np.sum((syn.weight * 2.0 ** syn.weight_exp / q.population.scale - w) ** 2))
        ref += float(np.sum(w ** 2))
    return math.sqrt(err / ref) if ref > 0 else 0.0


def lowest_candidate(top: int) -> int:
    """The smallest threshold mantissa the search tries below ``top``: ``ceil(top * 2^-SEARCH_SPAN)``."""
    return max(1, math.ceil(top * 2.0 ** -SEARCH_SPAN))


def candidate_mantissas(top: int, count: int) -> list[int]:
    """Up to ``count`` threshold mantissas spread geometrically over ``[lowest_candidate(top), top]``,
    largest first (every one when the span holds fewer; ``[top]`` for ``count`` 1; none when ``top < 1``)."""
    if top < 1:
        return []
    low = lowest_candidate(top)
    if count <= 1:
        return [top]
    if top - low + 1 <= count:
        return list(range(top, low - 1, -1))
    grid = {max(low, round(top * 2.0 ** (-SEARCH_SPAN * k / (count - 1)))) for k in range(count)}
    return sorted(grid, reverse=True)


def choose_scale(pop: FloatPopulation, syns: list[FloatSynapse], levels: int, inputs: Optional[SampleInputs], *,
                 fixed: Optional[int], candidates: int) -> tuple[QuantizedPopulation, dict[str, Any]]:
    """Quantize neuron population ``pop`` at the scale the calibration samples choose: the candidate
    with the smallest :func:`drive_error`, then the larger scale (``fixed``: the threshold mantissa of
    a quantization spec; no samples: the largest scale that fits). A candidate that rounding pushes
    over a range is replaced by the mantissa below it (within the span; never for ``fixed``).
    Returns the quantized population and its report entry."""
    bounds = scale_bounds(pop, syns, levels)
    binding = min(bounds, key=bounds.get)
    top = int(math.floor(pop.vth * bounds[binding]))
    tried = [fixed] if fixed is not None else candidate_mantissas(top, candidates)
    if not tried:
        raise RangeError(f"population {pop.name}: no scale fits Loihi 2: its {binding} limits the threshold mantissa "
                         f"to {pop.vth * bounds[binding]:.3g} (< 1); {binding_detail(pop, syns, binding)}")
    rows: list[dict[str, Any]] = []
    best: Optional[tuple[float, QuantizedPopulation]] = None
    error = None
    queue, low = list(tried), lowest_candidate(top)
    while queue:
        mant = queue.pop(0)
        try:
            cand = quantize_population(pop, syns, levels, mant)
        except RangeError as e:  # rounding pushed a value over its range: a smaller scale may fit
            error = e
            rows.append({"vth_mant": mant, "refused": str(e)})
            if fixed is None and mant - 1 >= low and mant - 1 not in tried and mant - 1 not in queue:
                queue.insert(0, mant - 1)
            continue
        row = {"vth_mant": mant, "scale": cand.population.scale}
        rows.append(row)
        if inputs is None:
            best = (0.0, cand)
            break
        row["current_rmse_vth"] = drive_error(cand, pop, syns, inputs)
        if best is None or row["current_rmse_vth"] < best[0]:  # ties keep the larger scale (tried first)
            best = (row["current_rmse_vth"], cand)
    if best is None:
        raise error
    if fixed is not None:
        choice = "given by the quantization spec (the scale quantization-aware training used)"
    elif inputs is None:
        choice = "the largest scale that fits (no calibration samples)"
    else:
        choice = (f"smallest current error on {inputs.float_spikes.shape[1]} calibration samples among {len(rows)} "
                  f"candidates in [{low}, {top}]" + (" (the largest scale)" if best[1].population.vth == top else ""))
    return best[1], {"bounds": bounds, "binding_limit": binding, "scale_bound": bounds[binding], "max_vth_mant": top,
                     "candidates": rows, "choice": choice}


# ---------------------------------------------------------------------- the calibration stage

@dataclass
class Calibration:
    graph: IntegerGraph
    spec: QuantSpec
    report: dict[str, Any]


def calibrate(float_graph: FloatGraph, pixels: torch.Tensor, trace: Optional[dict[str, torch.Tensor]], *,
              spec: Optional[QuantSpec] = None, candidates: int = DEFAULT_CANDIDATES) -> Calibration:
    """Quantize ``float_graph``; ``pixels`` ``[N, C, H, W]`` integers are the calibration samples and
    ``trace`` the float model's spikes ``[T, N, ...]`` per population on them (NIR interpreter).

    With ``spec`` the threshold mantissas are taken from it (no search): the integer graph of a
    quantization-aware trained model is then exactly the one it was trained with.
    """
    fg = float_graph
    T, levels = fg.timesteps, fg.input_levels
    pixels = torch.as_tensor(pixels).to(torch.int64)
    samples = int(pixels.shape[0]) if trace is not None else 0
    pops: dict[str, Population] = {}
    int_syns: list[Synapse] = []
    int_spikes: dict[str, torch.Tensor] = {}  # integer spikes [T, N, ...] of the populations quantized so far
    report: dict[str, Any] = {"calibration_samples": samples, "candidates": candidates,
                              "spec_given": spec is not None, "populations": {}}
    chosen: dict[str, int] = {}
    readers = {name: sum(1 for s in fg.synapses if s.src == name and s.dst != READOUT) for name in fg.populations}
    for name, pop in fg.populations.items():
        syns = fg.incoming(name)
        inputs = sample_inputs(pop, syns, pixels, trace, int_spikes, T) if samples else None
        for s in syns:  # free the integer spikes of sources no later population reads
            if s.src != INPUT:
                readers[s.src] -= 1
                if readers[s.src] == 0:
                    int_spikes.pop(s.src, None)
        entry: dict[str, Any] = {"kind": pop.kind, "op": pop.op, "block": pop.block}
        if pop.kind == "gate":
            q = quantize_population(pop, syns, levels, None)
        else:
            if spec is not None and name not in spec.vth_mant:
                raise UnsupportedModelError(f"the quantization spec has no entry for population {name}")
            q, search = choose_scale(pop, syns, levels, inputs, candidates=candidates,
                                     fixed=spec.vth_mant[name] if spec is not None else None)
            chosen[name] = q.population.vth
            entry.update(search)
        if inputs is not None:
            spikes = integer_spikes(q, inputs)
            entry.update(current_rmse_vth=drive_error(q, pop, syns, inputs),
                         spike_mismatch=float((spikes != inputs.float_spikes).double().mean()))
            if readers[name]:
                int_spikes[name] = spikes
        p = q.population
        limit = current_limit(p.du)
        entry.update(scale=p.scale, vth_mant=p.vth, du=p.du, dv=p.dv, weight_rmse_rel=weight_error(q, syns),
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
    return Calibration(graph, QuantSpec(chosen, {"calibration_samples": samples}), report)


def readout_scale(weight: torch.Tensor) -> float:
    """Scale putting the largest readout weight at the top of the 8-bit range."""
    m = float(weight.abs().max()) if weight.numel() else 0.0
    return (254 if fx.sign_mode(weight) == "mixed" else 255) / m if m > 0 else 1.0


def quantize_readout(fg: FloatGraph) -> tuple[list[Synapse], np.ndarray, float]:
    """Readout weights on one scale (8-bit, host-side integer bias)."""
    syns = [s for s in fg.synapses if s.dst == READOUT]
    w_all = torch.cat([torch.as_tensor(s.weight).flatten() for s in syns])
    mode = fx.sign_mode(w_all)
    scale = readout_scale(w_all)
    out = []
    for s in syns:
        q = round_weight(torch.as_tensor(s.weight) * scale, mode)
        out.append(Synapse(s.name, s.src, READOUT, "dense", q.long().numpy()))
    bias = np.round(fg.readout_bias * scale).astype(np.int64)
    return out, bias, scale


def calibrate_nir(nir_graph, pixels: torch.Tensor, *, spec: Optional[QuantSpec] = None,
                  candidates: int = DEFAULT_CANDIDATES) -> Calibration:
    """Float NIR graph + calibration samples -> :class:`Calibration` (integer graph, spec, report)."""
    fg = nir_to_float_graph(nir_graph)
    pixels = torch.as_tensor(pixels).to(torch.int64)
    trace = None
    if pixels.numel():
        populations = set(fg.populations)
        run = NIRInterpreter(nir_graph, dtype=torch.float64).run(pixels.to(torch.float64) / fg.input_levels,
                                                                 keep=populations, spikes_only=True)
        trace = {k: v for k, v in run.outputs.items() if k in populations}
    return calibrate(fg, pixels, trace, spec=spec, candidates=candidates)
