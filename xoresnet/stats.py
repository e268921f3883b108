"""Spike statistics: per-layer firing rates and per-block merge counts.

The block counts are defined once here (:func:`block_counts`) and used both by the PyTorch model
(through :func:`recording`) and by the integer-reference reports, so the figures agree by
construction. All counts are totals over samples, timesteps and neurons.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn


def block_counts(
    *,
    block_input: torch.Tensor,
    shortcut: Optional[torch.Tensor],
    output: torch.Tensor,
    backbone: Optional[torch.Tensor] = None,
    prev_input: Optional[torch.Tensor] = None,
) -> dict[str, float]:
    """Merge statistics of one residual block (tensors broadcast-compatible, e.g. ``[T, B, C, H, W]``).

    ``shortcut`` is the shortcut's spikes (``S`` or the spiking 1x1 shortcut), ``None`` where the
    shortcut is only a current (non-identity ``add_current``); ``backbone`` is ``A``, ``None`` where
    the backbone's last neuron is itself the merge neuron.

    - ``output_spikes``, ``shortcut_spikes``, ``backbone_spikes``: totals (spike counts for SEW-ADD).
    - ``redundant``: output spikes the shortcut already carried (``sum(min(O, S))``): the
      *relative spike redundancy* of identity mapping.
    - ``merge_absorbed``: coincident backbone and shortcut spikes (``sum(min(A, S))``); an OR
      merge keeps one of each pair, so these are the spikes OR absorbed (ADD would count 2).
    - ``xor_removed`` / ``xor_added``: spikes the XOR selection removed from the backbone's input
      (``S AND P``) and added to it (``P AND NOT S``), where the block selects against ``P``.
    """
    out = {"output_spikes": float(output.sum())}
    if shortcut is not None:
        out["shortcut_spikes"] = float(shortcut.sum())
        out["redundant"] = float(torch.minimum(output, shortcut).sum())
    if backbone is not None and shortcut is not None:
        out["backbone_spikes"] = float(backbone.sum())
        out["merge_absorbed"] = float(torch.minimum(backbone, shortcut).sum())
    if prev_input is not None:
        out["xor_removed"] = float((block_input * prev_input).sum())
        out["xor_added"] = float(((1 - block_input) * prev_input).sum())
    return out


class SpikeRecorder:
    """Accumulates statistics over forward passes.

    ``layers[name]``: ``spikes`` (total) and ``neuron_steps`` (neurons x timesteps x samples).
    ``blocks[name]``: summed :func:`block_counts`. ``samples``: samples seen.
    With ``membrane=True`` it also keeps every neuron's spikes and pre-reset membrane
    (``traces[name] = (s, h)``, ``[T, B, ...]``, last batch only) for trace comparisons.
    """

    def __init__(self, membrane: bool = False):
        self.membrane = membrane
        self.samples = 0
        self.layers: dict[str, dict[str, float]] = {}
        self.blocks: dict[str, dict[str, float]] = {}
        self.traces: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def observe_neuron(self, module, s: torch.Tensor, h: torch.Tensor) -> None:
        rec = self.layers.setdefault(module.name, {"spikes": 0.0, "neuron_steps": 0})
        rec["spikes"] += float(s.detach().sum())
        rec["neuron_steps"] += s.numel()
        if self.membrane:
            self.traces[module.name] = (s.detach(), h.detach())

    def observe_block(self, name: str, counts: dict[str, float]) -> None:
        acc = self.blocks.setdefault(name, {})
        for k, v in counts.items():
            acc[k] = acc.get(k, 0.0) + v

    def summary(self) -> dict:
        """JSON-able: firing rate and spikes per sample per layer, block counts per sample."""
        n = max(self.samples, 1)
        layers = {
            k: {"firing_rate": v["spikes"] / max(v["neuron_steps"], 1), "spikes_per_sample": v["spikes"] / n}
            for k, v in self.layers.items()
        }
        blocks = {k: {c: x / n for c, x in v.items()} for k, v in self.blocks.items()}
        total = sum(v["spikes"] for v in self.layers.values())
        return {"samples": self.samples, "spikes_per_sample": total / n, "layers": layers, "blocks_per_sample": blocks}


@contextmanager
def recording(model: nn.Module, membrane: bool = False) -> Iterator[SpikeRecorder]:
    """Attach a :class:`SpikeRecorder` to every neuron and block of ``model`` for the ``with`` body."""
    rec = SpikeRecorder(membrane=membrane)
    hooked = [m for m in model.modules() if hasattr(m, "observer") or hasattr(m, "recorder")]
    for m in hooked:
        if hasattr(m, "observer"):
            m.observer = rec.observe_neuron
        if hasattr(m, "recorder"):
            m.recorder = rec
    try:
        yield rec
    finally:
        for m in hooked:
            if hasattr(m, "observer"):
                m.observer = None
            if hasattr(m, "recorder"):
                m.recorder = None
