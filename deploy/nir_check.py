"""Check that the NIR interpreter reproduces the PyTorch float model, spike for spike.

Both run in float32, but batch norm is folded in NIR and the Euler update is written differently,
so membranes differ by ~1e-6. A neuron whose pre-reset membrane lies within ``tolerance`` (1e-5)
of its threshold in either model may legitimately flip; once it has, everything downstream in
that sample may differ. The check therefore counts, per sample: exact samples, samples with a
near-threshold flip (everything after it excused), and mismatches with no near-threshold flip in
their sample ("unexplained": these are bugs, and the export refuses them).
"""

from __future__ import annotations

from typing import Any

import nir
import torch

from xoresnet.network import XOResNet
from xoresnet.stats import recording

from .nir_interpreter import NIRInterpreter

NEAR_THRESHOLD = 1e-5


@torch.no_grad()
def compare_nir_to_model(model: XOResNet, graph: nir.NIRGraph, pixels: torch.Tensor, *, batch_size: int = 256,
                         tolerance: float = NEAR_THRESHOLD) -> dict[str, Any]:
    """Spikes of every neuron of ``model`` against the NIR interpreter on integer ``pixels [N, C, H, W]``."""
    model = model.eval()
    interp = NIRInterpreter(graph)
    levels = model.config.input_levels
    out = {"samples": 0, "neuron_steps": 0, "mismatching_neuron_steps": 0, "exact_samples": 0,
           "samples_with_near_threshold_flip": 0, "near_threshold_flips": 0, "unexplained_mismatches": 0,
           "max_membrane_difference": 0.0, "predictions_equal": True, "tolerance": tolerance}
    for start in range(0, len(pixels), batch_size):
        x = pixels[start:start + batch_size].to(torch.float32) / levels
        with recording(model, membrane=True) as rec:
            logits = model(x)
        trace = interp.run(x)
        B = x.shape[0]
        mismatch = torch.zeros(B, dtype=torch.long)
        near_flip = torch.zeros(B, dtype=torch.long)
        for name, (s, h) in rec.traces.items():
            s2, h2 = trace.outputs[name], trace.membranes[name]
            vth = model.neurons()[name].vth
            diff = (s != s2)
            near = ((h - vth).abs() < tolerance) | ((h2 - vth).abs() < tolerance)
            mismatch += diff.flatten(2).sum(-1).sum(0).long()  # per sample: [T, B, ...] -> [B]
            near_flip += (diff & near).flatten(2).sum(-1).sum(0).long()
            out["neuron_steps"] += s.numel()
            out["max_membrane_difference"] = max(out["max_membrane_difference"], float((h - h2).abs().max()))
        out["samples"] += B
        out["mismatching_neuron_steps"] += int(mismatch.sum())
        out["near_threshold_flips"] += int(near_flip.sum())
        out["exact_samples"] += int((mismatch == 0).sum())
        out["samples_with_near_threshold_flip"] += int((near_flip > 0).sum())
        out["unexplained_mismatches"] += int(mismatch[near_flip == 0].sum())
        if not torch.equal(logits.argmax(1), trace.logits.argmax(1)):
            explained = (logits.argmax(1) != trace.logits.argmax(1)) & (near_flip == 0)
            out["predictions_equal"] = False
            out["unexplained_mismatches"] += int(explained.sum())
    out["passed"] = out["unexplained_mismatches"] == 0
    return out
