"""Check that the NIR interpreter reproduces the PyTorch float model, spike for spike.

Both run in float32, but batch norm is folded in NIR and the Euler update is written differently,
so membranes differ by float32 rounding, which grows with the size of the sums: ~1e-6 on small
networks, up to 1.2e-4 on XOResNet-101 at width 1.0 (membranes up to ~10; measured where the two
agree). A neuron whose pre-reset membrane lies within the node's tolerance of its threshold in
either model, ``max(tolerance, relative x the node's largest |membrane| in the batch)`` (1e-5 and
:data:`RELATIVE_TOLERANCE`, 2^-13: ten times the largest rounding measured), may legitimately spike in
one and not the other: a **near-threshold flip**. The rule that excuses what follows is causal, per sample: a mismatch of
neuron ``i`` of NIR node ``n`` at timestep ``t`` is *explained* only if the same sample had a
near-threshold flip

* at the same neuron ``i`` of ``n`` at a step ``<= t`` (its own state differs from then on), or
* at any neuron of a node upstream of ``n`` at a step ``<= t`` (the graph has no delays: a flip
  at ``t`` reaches every descendant at ``t``).

Every other mismatch is *unexplained* (a bug; the export refuses it), in particular one upstream
of, earlier than, or beside a near-threshold flip. A prediction that differs is explained only by a
near-threshold flip upstream of the output in its sample. The graph may be the one exported in
memory or the one read back from the written file (``nir.read``), so the export can check the
artifact itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import nir
import numpy as np
import torch

from xoresnet.errors import UnsupportedModelError
from xoresnet.network import XOResNet
from xoresnet.stats import recording

from .interpreter import NEURON_TYPES, NIRInterpreter, predecessors, topological_order

NEAR_THRESHOLD = 1e-5
#: The near-threshold tolerance relative to a node's largest membrane magnitude (module docstring).
RELATIVE_TOLERANCE = 2.0 ** -13


def ancestors(graph: nir.NIRGraph) -> dict[str, set[str]]:
    """Every node's upstream nodes (transitively), from the graph's edges."""
    preds = predecessors(graph)
    up: dict[str, set[str]] = {}
    for name in topological_order(graph.nodes, graph.edges):
        up[name] = set().union(*([{p} | up[p] for p in preds[name]] or [set()]))
    return up


@dataclass
class NeuronTrace:
    """One neuron node in both models on a batch: spikes (bool) and pre-reset membranes ``[T, B, ...]``
    of the PyTorch model (``s_model``, ``h_model``) and of the NIR interpreter (``s_nir``, ``h_nir``),
    and the threshold each compares against."""

    s_model: torch.Tensor
    h_model: torch.Tensor
    vth_model: float
    s_nir: torch.Tensor
    h_nir: torch.Tensor
    vth_nir: torch.Tensor


@dataclass
class BatchVerdict:
    """Per-sample counts ``[B]`` of one batch, where the models must agree, and the first unexplained mismatch."""

    mismatches: torch.Tensor
    near_threshold_flips: torch.Tensor
    unexplained: torch.Tensor
    first_flip: torch.Tensor  # earliest step of any near-threshold flip upstream of the output (T: none)
    max_membrane_difference: float
    first_unexplained: Optional[dict[str, Any]]


def explain(traces: dict[str, NeuronTrace], up: dict[str, set[str]], tolerance: float,
            relative: float = 0.0) -> BatchVerdict:
    """Apply the causal rule to the neuron nodes ``traces`` (in topological order) of one batch.

    ``up``: upstream nodes of every node (:func:`ancestors`); ``up["output"]`` decides the predictions;
    a node's near-threshold tolerance is ``max(tolerance, relative x its largest |membrane|)``.
    """
    T, B = next(iter(traces.values())).s_model.shape[:2]
    steps = torch.arange(T).view(T, 1)
    first_flip: dict[str, torch.Tensor] = {}  # per node, per sample: earliest flip step (T when none)
    mismatches = torch.zeros(B, dtype=torch.long)
    flips = torch.zeros(B, dtype=torch.long)
    unexplained = torch.zeros(B, dtype=torch.long)
    gap, first = 0.0, None
    for name, tr in traces.items():
        diff = tr.s_model != tr.s_nir
        tol = max(tolerance, relative * float(tr.h_model.abs().max())) if tr.h_model.numel() else tolerance
        near = ((tr.h_model - tr.vth_model).abs() <= tol) | ((tr.h_nir - tr.vth_nir).abs() <= tol)
        flip = diff & near
        per_step = flip.flatten(2).any(-1)  # [T, B]
        first_flip[name] = torch.where(per_step, steps, T).min(0).values
        upstream = torch.stack([first_flip[m] for m in up[name] if m in first_flip] or [torch.full((B,), T)])
        since = (steps >= upstream.min(0).values).view((T, B) + (1,) * (diff.dim() - 2))
        excused = since | (flip.cumsum(0) > 0)
        bad = diff & ~excused
        mismatches += diff.flatten(2).sum(-1).sum(0)
        flips += flip.flatten(2).sum(-1).sum(0)
        unexplained += bad.flatten(2).sum(-1).sum(0)
        agree = ~excused
        if bool(agree.any()):
            gap = max(gap, float((tr.h_model - tr.h_nir).abs()[agree].max()))
        if first is None and bool(bad.any()):
            t, b = (int(i) for i in bad.flatten(2).any(-1).nonzero()[0])
            first = {"node": name, "sample": b, "timestep": t}
    out = [first_flip[m] for m in up.get("output", set()) if m in first_flip] or [torch.full((B,), T)]
    return BatchVerdict(mismatches, flips, unexplained, torch.stack(out).min(0).values, gap, first)


def _neuron_traces(model: XOResNet, graph: nir.NIRGraph, interp: NIRInterpreter, x: torch.Tensor
                   ) -> tuple[dict[str, NeuronTrace], torch.Tensor, torch.Tensor]:
    """Both models on the analog batch ``x``: neuron traces in the graph's topological order, and the
    logits ``[B, K]`` of the model and of the interpreter."""
    with recording(model, membrane=True) as rec:
        logits = model(x)
    trace = interp.run(x)
    nodes = {n for n, node in graph.nodes.items() if isinstance(node, NEURON_TYPES)}
    if nodes != set(rec.traces):
        raise UnsupportedModelError(
            f"the NIR graph's neuron nodes and the model's neurons differ (only in NIR: "
            f"{sorted(nodes - set(rec.traces))}, only in the model: {sorted(set(rec.traces) - nodes)})")
    neurons = model.neurons()
    traces = {}
    for name in interp.order:
        if name in nodes:
            s, h = rec.traces[name]
            vth = torch.as_tensor(np.asarray(graph.nodes[name].v_threshold), dtype=h.dtype)
            traces[name] = NeuronTrace(s.bool(), h, float(neurons[name].vth), trace.outputs[name].bool(),
                                       trace.membranes[name], vth)
    return traces, logits, trace.logits


@torch.no_grad()
def compare_nir_to_model(model: XOResNet, graph: nir.NIRGraph, pixels: torch.Tensor, *, batch_size: int = 256,
                         tolerance: float = NEAR_THRESHOLD,
                         relative_tolerance: float = RELATIVE_TOLERANCE) -> dict[str, Any]:
    """Spikes of every neuron of ``model`` against the NIR interpreter running ``graph`` on integer
    ``pixels [N, C, H, W]``, under the causal near-threshold rule (module docstring).

    Returns counts over neuron-steps and samples; ``max_membrane_difference`` and
    ``max_logit_difference`` are taken where the models must agree (not downstream or later of a
    near-threshold flip); ``first_unexplained`` locates the first unexplained mismatch (``None`` if
    none); ``passed`` is true when nothing is unexplained.
    """
    model = model.eval()
    interp = NIRInterpreter(graph)
    up = ancestors(graph)
    levels = model.config.input_levels
    out = {"samples": 0, "neuron_nodes": 0, "neuron_steps": 0, "mismatching_neuron_steps": 0, "exact_samples": 0,
           "samples_with_near_threshold_flip": 0, "near_threshold_flips": 0, "unexplained_mismatches": 0,
           "unexplained_predictions": 0, "max_membrane_difference": 0.0, "max_logit_difference": 0.0,
           "predictions_equal": True, "first_unexplained": None, "tolerance": tolerance,
           "relative_tolerance": relative_tolerance}
    for start in range(0, len(pixels), batch_size):
        x = pixels[start:start + batch_size].to(torch.float32) / levels
        traces, logits, nir_logits = _neuron_traces(model, graph, interp, x)
        T = next(iter(traces.values())).s_model.shape[0]
        v = explain(traces, up, tolerance, relative_tolerance)
        pred_diff = logits.argmax(1) != nir_logits.argmax(1)
        bad_pred = pred_diff & (v.first_flip >= T)
        clean = v.first_flip >= T
        out["samples"] += x.shape[0]
        out["neuron_nodes"] = len(traces)
        out["neuron_steps"] += sum(tr.s_model.numel() for tr in traces.values())
        out["mismatching_neuron_steps"] += int(v.mismatches.sum())
        out["near_threshold_flips"] += int(v.near_threshold_flips.sum())
        out["exact_samples"] += int((v.mismatches == 0).sum())
        out["samples_with_near_threshold_flip"] += int((v.near_threshold_flips > 0).sum())
        out["unexplained_mismatches"] += int(v.unexplained.sum()) + int(bad_pred.sum())
        out["unexplained_predictions"] += int(bad_pred.sum())
        out["max_membrane_difference"] = max(out["max_membrane_difference"], v.max_membrane_difference)
        if bool(clean.any()):
            d = float((logits - nir_logits).abs()[clean].max())
            out["max_logit_difference"] = max(out["max_logit_difference"], d)
        out["predictions_equal"] = out["predictions_equal"] and not bool(pred_diff.any())
        if out["first_unexplained"] is None and v.first_unexplained is not None:
            out["first_unexplained"] = {**v.first_unexplained, "sample": start + v.first_unexplained["sample"]}
        elif out["first_unexplained"] is None and bool(bad_pred.any()):
            out["first_unexplained"] = {"node": "output", "sample": start + int(bad_pred.nonzero()[0]),
                                        "timestep": None}
    out["passed"] = out["unexplained_mismatches"] == 0
    return out
