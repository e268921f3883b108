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
drive ``(a + bias / 64) / s`` against what the float weights and bias make of the same inputs
(:mod:`calibration.drive`); the smallest wins, ties going to the larger scale. (Scoring by spike
agreement instead chose scales that were worse on held-out images: spike flips are rare events,
the drive error is not.) The score is exact when scoring a candidate on every neuron-step costs
at most ``score_macs`` multiply-adds (every population of the bundled digits model); in larger
populations the error's per-neuron mean over all samples stays exact and its deviations from
that mean are summed on an evenly spread, deterministic subset of the (timestep, image, position)
rows (:class:`~calibration.drive.CandidateScorer`). Each candidate costs a few passes over the
weights (:class:`PopulationQuantizer`) and one matrix product per synapse, instead of a
convolution over all samples; only the chosen scale is then run on every sample, exactly, for the
integer spikes the next populations read (:func:`~calibration.drive.measure`). Without
calibration samples the largest scale that fits is taken. Gates keep their integer weights and
get ``vth_mant = floor(threshold)``.

The report records per population every bound and the binding one, each candidate with its
score, the choice and why, the rows scored, and the quantization error of the chosen scale: the
relative RMS weight error, the drive error (its score) and the fraction of neuron-steps whose
integer spike differs from the float model's on all samples (``docs/formats.md``,
``calibration.json``).

Nothing is clipped: a value that does not fit raises :class:`~xoresnet.errors.RangeError`
naming the population or synapse and the value. A :class:`QuantSpec` (the chosen threshold
mantissas) reproduces a calibration exactly; quantization-aware training keeps one fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch

from xoresnet.nir.interpreter import NIRInterpreter
from xoresnet.errors import RangeError, UnsupportedModelError

from . import fixed_point as fx
from .drive import (SCORE_MACS, CandidateScorer, PackedSpikes, PopulationSamples, image_chunks, measure,
                    release_free_memory)
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


def quantize_weight(w_scaled: torch.Tensor, *, allow_exp: bool, what: str, mode: Optional[str] = None
                    ) -> tuple[torch.Tensor, int]:
    """``(w_int, weight_exp)`` with ``w_int << weight_exp ~= w_scaled``; conv synapses have no exponent.
    ``mode``: the sign mode of the whole matrix (default: that of ``w_scaled``)."""
    mode = mode or fx.sign_mode(w_scaled)
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
        bounds["current"] = current_limit(fx.decay_codes(pop.du_fraction, pop.dv_fraction)[0]) / worst
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
    """One population at one scale: its integer registers and synapses (``[]`` for a scale candidate
    that is only scored), the largest positive and negative input current any neuron can receive
    (a-units) and, per synapse, the rounding residual ``w_int 2^weight_exp - scale w`` (a-units per
    input unit, exact in float64, stored as float32)."""

    population: Population
    synapses: list[Synapse]
    worst_current: tuple[float, float]
    residuals: list[torch.Tensor]


class PopulationQuantizer:
    """Quantizes one population (float weights and bias) at any threshold mantissa. What does not
    depend on the scale (weights as tensors, their extremes, the distinct bias values) is prepared
    once, so that a scale costs a few passes over the weights. The values are exactly those of
    :func:`quantize_weight`, :func:`quantize_bias` and :func:`worst_case_current`: the same float64
    operations in the same order; a matrix's extreme integers are its extreme scaled values rounded
    (rounding is monotone), and the worst-case sums are sums of integers (exact in any order)."""

    def __init__(self, pop: FloatPopulation, syns: list[FloatSynapse], levels: int):
        self.pop, self.syns, self.levels = pop, syns, levels
        self.weights = [torch.as_tensor(s.weight) for s in syns]
        self.extremes = [(float(w.min()), float(w.max())) if w.numel() else (0.0, 0.0) for w in self.weights]
        if pop.kind == "neuron":
            self.bias_values, self.bias_index = torch.unique(torch.as_tensor(pop.bias), return_inverse=True)
        # per synapse: scaled weights, their rounding (float64) and the residuals of candidates (float32),
        # reused by every call (fewer page faults, and no heap fragmentation by the long-lived integers)
        self.scratch = [(torch.empty_like(w), torch.empty_like(w), torch.empty_like(w, dtype=torch.float32))
                        for w in self.weights]

    def quantize(self, vth_mant: Optional[int], *, integers: bool = True) -> QuantizedPopulation:
        """Integer population and synapses for one scale (``vth_mant``; ``None`` for gates).
        ``integers=False``: a candidate to score, without integer synapses (the checks are the same);
        its residuals are overwritten by the next call."""
        pop = self.pop
        du, dv = fx.decay_codes(pop.du_fraction, pop.dv_fraction)
        if pop.kind == "gate":
            for syn in self.syns:
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
            mant, exp = quantize_bias(self.bias_values * scale * 64, what=f"population {pop.name}")
            bias_mant = mant.long()[self.bias_index].numpy()
            bias_exp = exp.long()[self.bias_index].numpy()
        int_syns, residuals = [], []
        pos = torch.zeros(pop.shape, dtype=torch.float64)
        neg = torch.zeros(pop.shape, dtype=torch.float64)
        for syn, w, (w_min, w_max), (h, k, r) in zip(self.syns, self.weights, self.extremes, self.scratch):
            lo_hi = torch.tensor([w_min, w_max], dtype=torch.float64) * scale
            mode = fx.sign_mode(lo_hi) if w.numel() else "excitatory"
            _, exp = quantize_weight(lo_hi, allow_exp=syn.kind != "conv", what=f"synapse {syn.name} into {pop.name}",
                                     mode=mode)
            # round_weight(w * scale / 2^exp, mode) as k * step: k = round(h), h = w * scale / 2^exp / step
            step = 2 if mode == "mixed" else 1
            torch.mul(w, scale, out=h)
            if exp:
                h /= 1 << exp
            if step == 2:
                h /= 2
            torch.round(h, out=k)
            unit = step << exp  # a-units per step of k
            if integers:
                r = torch.empty_like(r)
            torch.sub(k, h, out=r)  # exact in float64 (|k - h| <= 1/2 on h's grid), then rounded to float32
            residuals.append(r.mul_(unit) if unit != 1 else r)
            p, n = signed_sums(k, syn.kind, mode, pop.shape)
            m = max_input(syn, self.levels) * unit
            pos += p * m
            neg += n * m
            if integers:
                q = (k * step if step != 1 else k).long().numpy()
                int_syns.append(Synapse(syn.name, syn.src, syn.dst, syn.kind, q, weight_exp=exp, stride=syn.stride,
                                        padding=syn.padding, groups=syn.groups, graded=syn.graded,
                                        model_delay=syn.model_delay))
        worst = (float(pos.max()), float(neg.min()))
        limit = current_limit(du)
        if worst[0] > limit or -worst[1] > limit:
            raise RangeError(f"population {pop.name}: a worst-case input current of {max(worst[0], -worst[1]):.0f} "
                             f"a-units could overflow Loihi's 24-bit u (limit {limit:.0f}); lower its weights or its "
                             "scale")
        if pop.kind == "gate" and max(worst[0], -worst[1]) >= 64:
            raise RangeError(f"gate {pop.name}: input sums up to {max(worst[0], -worst[1]):.0f} would leave memory "
                             "in v (a gate needs |sum| < 64)")
        population = Population(pop.name, pop.shape, du, dv, vth, bias_mant, bias_exp, kind=pop.kind, op=pop.op,
                                block=pop.block, role=pop.role, scale=scale)
        return QuantizedPopulation(population, int_syns, worst, residuals)


def signed_sums(k: torch.Tensor, kind: str, mode: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums of the positive and of the negative integers ``k`` (a synapse's weights in any
    integer unit) into each neuron of ``shape`` (float64, exact; broadcastable to ``shape``): per
    output channel (conv), per neuron (identity, dense)."""
    if kind == "identity":
        return k.clamp(min=0), k.clamp(max=0)
    rows = k.flatten(1)
    total = rows.sum(1)
    if mode == "excitatory":
        p, n = total, torch.zeros_like(total)
    elif mode == "inhibitory":
        p, n = torch.zeros_like(total), total
    else:
        magnitude = torch.linalg.vector_norm(rows, ord=1, dim=1)
        p, n = (magnitude + total) / 2, (total - magnitude) / 2
    view = (-1,) + (1,) * (len(shape) - 1) if kind == "conv" else shape
    return p.view(view), n.view(view)


def quantize_population(pop: FloatPopulation, syns: list[FloatSynapse], levels: int,
                        vth_mant: Optional[int]) -> QuantizedPopulation:
    """Integer population and synapses for one scale (``vth_mant``; ``None`` for gates)."""
    return PopulationQuantizer(pop, syns, levels).quantize(vth_mant)


# ---------------------------------------------------------------------- the scale search

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


def choose_scale(pop: FloatPopulation, syns: list[FloatSynapse], levels: int, scorer: Optional[CandidateScorer], *,
                 fixed: Optional[int], candidates: int) -> tuple[QuantizedPopulation, dict[str, Any]]:
    """Quantize neuron population ``pop`` at the scale the calibration samples choose: the candidate
    with the smallest drive error (``scorer``, :class:`~calibration.drive.CandidateScorer`), then the
    larger scale (``fixed``: the threshold mantissa of a quantization spec; no scorer: the largest
    scale that fits). A candidate that rounding pushes over a range is replaced by the mantissa
    below it (within the span; never for ``fixed``). Returns the quantized population and its
    report entry."""
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
    quantizer = PopulationQuantizer(pop, syns, levels)
    while queue:
        mant = queue.pop(0)
        try:
            cand = quantizer.quantize(mant, integers=scorer is None)
        except RangeError as e:  # rounding pushed a value over its range: a smaller scale may fit
            error = e
            rows.append({"vth_mant": mant, "refused": str(e)})
            if fixed is None and mant - 1 >= low and mant - 1 not in tried and mant - 1 not in queue:
                queue.insert(0, mant - 1)
            continue
        row = {"vth_mant": mant, "scale": cand.population.scale}
        rows.append(row)
        if scorer is None:
            best = (0.0, cand)
            break
        row["current_rmse_vth"] = scorer.score(cand.population, cand.residuals)
        if best is None or row["current_rmse_vth"] < best[0]:  # ties keep the larger scale (tried first)
            best = (row["current_rmse_vth"], cand)
    if best is None:
        raise error
    chosen = best[1] if scorer is None else quantizer.quantize(best[1].population.vth_mant)  # with its integers
    entry: dict[str, Any] = {"bounds": bounds, "binding_limit": binding, "scale_bound": bounds[binding],
                             "max_vth_mant": top, "candidates": rows}
    if fixed is not None:
        entry["choice"] = "given by the quantization spec (the scale quantization-aware training used)"
    elif scorer is None:
        entry["choice"] = "the largest scale that fits (no calibration samples)"
    else:
        entry["choice"] = (f"smallest current error on {scorer.B} calibration samples among {len(rows)} candidates in "
                           f"[{low}, {top}]" + (" (the largest scale)" if best[1].population.vth_mant == top else "")
                           + ("" if scorer.rows == scorer.total_rows else
                              f", its deviations from each neuron's mean sampled on {scorer.rows} of "
                              f"{scorer.total_rows} rows"))
    return chosen, entry


# ---------------------------------------------------------------------- the calibration stage

@dataclass
class Calibration:
    graph: IntegerGraph
    spec: QuantSpec
    report: dict[str, Any]


def calibrate(float_graph: FloatGraph, pixels: torch.Tensor,
              trace: Optional[Mapping[str, torch.Tensor | PackedSpikes]], *,
              spec: Optional[QuantSpec] = None, candidates: int = DEFAULT_CANDIDATES,
              score_macs: int = SCORE_MACS) -> Calibration:
    """Quantize ``float_graph``; ``pixels`` ``[N, C, H, W]`` integers are the calibration samples and
    ``trace`` the float model's spikes ``[T, N, ...]`` per population on them (any dtype, non-zero is
    a spike, or :class:`~calibration.drive.PackedSpikes`; from the NIR interpreter).

    With ``spec`` the threshold mantissas are taken from it (no search): the integer graph of a
    quantization-aware trained model is then exactly the one it was trained with. ``score_macs``:
    the multiply-adds one candidate's score may cost (:class:`~calibration.drive.CandidateScorer`).
    """
    fg = float_graph
    levels = fg.input_levels
    pixels = torch.as_tensor(pixels).to(torch.int64)
    samples = int(pixels.shape[0]) if trace is not None else 0
    packed = {name: v if isinstance(v, PackedSpikes) else PackedSpikes.pack(torch.as_tensor(v))
              for name, v in trace.items()} if samples else {}
    pops: dict[str, Population] = {}
    int_syns: list[Synapse] = []
    int_spikes: dict[str, PackedSpikes] = {}  # integer spikes [T, N, ...] of the populations quantized so far
    report: dict[str, Any] = {"calibration_samples": samples, "candidates": candidates,
                              "spec_given": spec is not None, "score_macs": score_macs, "populations": {}}
    chosen: dict[str, int] = {}
    readers = {name: sum(1 for s in fg.synapses if s.src == name and s.dst != READOUT) for name in fg.populations}
    for name, pop in fg.populations.items():
        syns = fg.incoming(name)
        view = (PopulationSamples([pixels if s.src == INPUT else int_spikes[s.src] for s in syns], packed.pop(name))
                if samples else None)
        for s in syns:  # free the integer spikes of sources no later population reads
            if s.src != INPUT:
                readers[s.src] -= 1
                if readers[s.src] == 0:
                    int_spikes.pop(s.src, None)
        entry: dict[str, Any] = {"kind": pop.kind, "op": pop.op, "block": pop.block}
        scorer = CandidateScorer(pop, syns, view, score_macs) if view is not None and pop.kind == "neuron" else None
        if pop.kind == "gate":
            q = quantize_population(pop, syns, levels, None)
        else:
            if spec is not None and name not in spec.vth_mant:
                raise UnsupportedModelError(f"the quantization spec has no entry for population {name}")
            q, search = choose_scale(pop, syns, levels, scorer if spec is None else None, candidates=candidates,
                                     fixed=spec.vth_mant[name] if spec is not None else None)
            chosen[name] = q.population.vth_mant
            entry.update(search)
        if view is not None:
            m = measure(q.population, q.synapses, view, keep_spikes=readers[name] > 0)
            if scorer is None and any(bool(r.any()) for r in q.residuals):  # a gate with non-integer weights
                scorer = CandidateScorer(pop, syns, view, score_macs)
            error = scorer.score(q.population, q.residuals) if scorer is not None else 0.0  # exact 0: no residual
            entry.update(current_rmse_vth=error, spike_mismatch=m.spike_mismatch)
            if scorer is not None:
                entry.update(scored_rows=scorer.rows, total_rows=scorer.total_rows)
            if m.spikes is not None:
                int_spikes[name] = m.spikes
            del scorer, m
        p = q.population
        limit = current_limit(p.du_code)
        entry.update(scale=p.scale, vth_mant=p.vth_mant, du=p.du_code, dv=p.dv_code, weight_rmse_rel=weight_error(q, syns),
                     max_abs_weight=int(max((np.abs(s.weight).max() for s in q.synapses), default=0)),
                     weight_exp=[s.weight_exp for s in q.synapses],
                     bias_exp_range=[int(p.bias_exp.min()), int(p.bias_exp.max())],
                     current_headroom=max(q.worst_current[0], -q.worst_current[1]) / limit)
        report["populations"][name] = entry
        pops[name] = p
        int_syns += q.synapses
        del q
        if pop.kind == "neuron":  # its integer weights stay: hand back the free heap pages around them
            release_free_memory()
    readout_syns, readout_bias, readout_scale = quantize_readout(fg)
    report["readout"] = {"scale": readout_scale,
                         "max_abs_weight": int(max(np.abs(s.weight).max() for s in readout_syns))}
    graph = IntegerGraph(
        input_shape=fg.input_shape, input_levels=levels, timesteps=fg.timesteps, populations=pops,
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


def float_trace(nir_graph, fg: FloatGraph, pixels: torch.Tensor) -> dict[str, PackedSpikes]:
    """The float model's spikes of every population on ``pixels`` ``[N, C, H, W]``: the NIR interpreter
    in float32 (as PyTorch runs the model), packed 8 to a byte, in chunks of images as
    :func:`~calibration.drive.measure` chunks its largest population (memory, and speed: see
    :data:`~calibration.drive.CHUNK_NEURON_STEPS`). The packed trace is allocated before the first
    run, so that the runs' temporaries do not interleave with it in the heap (which kept their
    memory from being reused: 50 MiB more per image on XOResNet-101)."""
    names = set(fg.populations)
    T, N = fg.timesteps, int(pixels.shape[0])
    trace = {name: PackedSpikes.empty(T, N, pop.shape) for name, pop in fg.populations.items()}
    largest = T * max((math.prod(p.shape) for p in fg.populations.values()), default=1)
    interpreter = NIRInterpreter(nir_graph, dtype=torch.float32)
    for b0, b1 in image_chunks(N, largest):
        run = interpreter.run(pixels[b0:b1].to(torch.float32) / fg.input_levels, keep=names, spikes_only=True)
        for name in names:
            trace[name].store(b0, run.outputs[name])
        del run
        release_free_memory()
    return trace


def calibrate_nir(nir_graph, pixels: torch.Tensor, *, spec: Optional[QuantSpec] = None,
                  candidates: int = DEFAULT_CANDIDATES, score_macs: int = SCORE_MACS) -> Calibration:
    """Float NIR graph + calibration samples -> :class:`Calibration` (integer graph, spec, report)."""
    fg = nir_to_float_graph(nir_graph)
    pixels = torch.as_tensor(pixels).to(torch.int64)
    trace = float_trace(nir_graph, fg, pixels) if pixels.numel() else None
    return calibrate(fg, pixels, trace, spec=spec, candidates=candidates, score_macs=score_macs)
