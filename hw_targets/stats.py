"""Spike, synaptic-operation and residual-block statistics of the integer reference.

Everything comes from **one** zero-delay run of :class:`calibration.reference.ReferenceSimulator` per
batch (``spikes[p]``: bool ``[T, B, *shape]``); each statistic is a reduction of those tensors, so
nothing is simulated twice. Feed batches to a :class:`StatsAccumulator` (or let
:func:`collect_statistics` run the reference) and read :meth:`StatsAccumulator.summary`.

Definitions (all "per sample" figures are over the ``T`` timesteps of one inference):

* **spikes** of a population: its binary spikes; relays (inserted by the scheduler) carry their
  source's spikes and are counted as populations of their own (they exist on the chip); a
  partial sum (a fan-in split part) counts its nonzero graded payloads (one message each).
* **synaptic operations** (synops): each spike of a source neuron costs one operation per nonzero
  synapse it has in each outgoing synapse process (its exact fan-out, :mod:`hw_targets.connectivity`),
  summed over processes, the readout included.
* **graded input operations**: the 8-bit input is sent every timestep as graded spikes (zero pixels
  send nothing); each nonzero pixel costs its fan-out in multiply-accumulates (payload x weight),
  counted separately from the binary synops.
* **neuron updates**: Loihi updates every neuron every step: neurons x ``T``; an update is
  *active* when the neuron fires in that step (the rest are inactive).
* **latency**: steps from a sample's first input step to its last readout step:
  ``T + readout latency`` of the scheduled graph; a new sample can enter every ``reset_interval``.
* **blocks**: the merge statistics of :func:`xoresnet.stats.block_counts` (the one definition, as
  recorded by the PyTorch model), per sample, plus derived rates: ``or_saturation`` (OR merges:
  fraction of merge output spikes where both inputs fired), ``coincidence_rate`` (any gate merge:
  coincident / union of the two branches), ``xor_removed_fraction`` (spikes the XOR selection
  removed / block-input spikes) and ``branch_balance`` (backbone / (backbone + shortcut) spikes into
  the merge; 0.5 = balanced).

Blocks are found by the populations' ``block`` and ``role`` (:data:`calibration.integer_graph.POPULATION_ROLES`,
from the NIR node metadata of :mod:`xoresnet.nir.export`), never by their names: a block's backbone
``neuron`` populations (the last one in topological order feeds the merge), its ``shortcut_neuron``,
``sel`` and ``merge``; the input of a block is the output of the one before it (the last ``stem``
population's for the first). Graphs without roles (NIR from other tools) have no blocks.

The raster (:attr:`StatsAccumulator.raster`) keeps the spikes of the first sample as (timestep,
neuron) pairs, at most ``raster_cap`` per population, evenly subsampled in (t, n) order when
there are more.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from calibration.integer_graph import INPUT, READOUT, IntegerGraph
from xoresnet.stats import block_counts

from .connectivity import SynapseConn, connectivity

RASTER_CAP = 2000  # spikes kept per population in the stored raster


def base_population(graph: IntegerGraph, name: str) -> str:
    """The population a relay copies, through a chain of relays (a relay's single input); ``name`` itself
    for any other population or the input."""
    while name in graph.populations and graph.populations[name].role == "relay":
        name = graph.incoming(name)[0].src
    return name


# ---------------------------------------------------------------------- blocks

@dataclass
class BlockSignals:
    """The signals of one residual block, each a list of populations whose spikes sum to it."""

    name: str
    merge: str  # "or" | "xor" | "iand" | "add" | "add_current"
    block_input: list[str]
    prev_input: Optional[list[str]]
    backbone: Optional[list[str]]
    shortcut: Optional[list[str]]
    output: list[str]


def find_blocks(graph: IntegerGraph) -> list[BlockSignals]:
    """The residual blocks of ``graph``, in order (see the module docstring)."""
    order = [p for p in graph.populations.values() if p.role != "relay"]
    blocks = list(dict.fromkeys(p.block for p in order if p.block))
    stem = [p.name for p in order if p.role == "stem"]
    if not blocks or not stem:
        return []
    current = [stem[-1]]
    prev: Optional[list[str]] = None
    out = []
    for b in blocks:
        mine = {p.name for p in order if p.block == b}
        by_role: dict[str, list[str]] = {}
        for p in order:
            if p.block == b:
                by_role.setdefault(p.role, []).append(p.name)
        if not by_role.get("neuron"):
            continue
        last = by_role["neuron"][-1]
        sc_neuron = by_role["shortcut_neuron"][0] if "shortcut_neuron" in by_role else None
        S = current
        P = prev if "sel" in by_role else None
        spiking_sc = [sc_neuron] if sc_neuron else S
        if "merge" in by_role:
            merge = by_role["merge"][0]
            sig = BlockSignals(b, graph.populations[merge].op or "or", S, P, [last], spiking_sc, [merge])
        else:
            into_last = [(s, base_population(graph, s.src)) for s in graph.incoming(last)]
            # a current shortcut: a conv/dense synapse from outside the block (spikes arrive on identity synapses)
            current_sc = any(s.kind != "identity" and src not in mine for s, src in into_last)
            spikes_in = [src for s, src in into_last if src not in mine or src == sc_neuron]
            if current_sc:
                sig = BlockSignals(b, "add_current", S, P, None, None, [last])
            elif spikes_in:
                sig = BlockSignals(b, "add_current", S, P, None, spiking_sc, [last])
            else:  # SEW ADD: the output is the sum of both branches' spikes
                sig = BlockSignals(b, "add", S, P, [last], spiking_sc, [last] + spiking_sc)
        out.append(sig)
        prev, current = S, sig.output
    return out


# ---------------------------------------------------------------------- accumulation

def _moments(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": 0.0, "std": 0.0, "max": 0.0}
    return {"mean": float(values.mean()), "std": float(values.std()), "max": float(values.max())}


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    if num is None or den is None or den == 0:
        return None
    return float(num) / float(den)


class StatsAccumulator:
    """Accumulates statistics over batches of zero-delay reference results.

    ``update(result, pixels, labels)``: ``result`` from ``run_zero_delay(pixels)``; ``labels``
    (optional) for the integer accuracy. The first sample seen is stored as a spike raster.
    """

    def __init__(self, graph: IntegerGraph, conns: Optional[dict[str, SynapseConn]] = None, *,
                 raster_cap: int = RASTER_CAP):
        self.graph = graph
        self.conns = conns if conns is not None else connectivity(graph)
        self.T = graph.timesteps
        self.raster_cap = raster_cap
        self.blocks = find_blocks(graph)
        self.samples = 0
        self.correct = 0
        self.labelled = 0
        self._spikes: dict[str, list[np.ndarray]] = {p: [] for p in graph.populations}
        self._synops: list[np.ndarray] = []
        self._graded: list[np.ndarray] = []
        self._input_spikes: list[np.ndarray] = []
        self._synops_by_syn = {s.name: 0.0 for s in graph.synapses}
        self._block_sums: dict[str, dict[str, float]] = {b.name: {} for b in self.blocks}
        self._fan_out = {s.name: torch.as_tensor(self.conns[s.name].fan_out, dtype=torch.float64)
                         for s in graph.synapses}
        self.raster: Optional[dict[str, Any]] = None

    @torch.no_grad()
    def update(self, result, pixels, labels=None) -> None:
        g = self.graph
        # a partial sum's graded spikes count where their payload is nonzero (one message each)
        spikes = {k: v if v.dtype == torch.bool else v != 0 for k, v in result.spikes.items()}
        if not spikes:
            raise ValueError("the reference result holds no spikes (run_zero_delay(..., keep_spikes=True))")
        B = next(iter(spikes.values())).shape[1]
        x = torch.as_tensor(pixels)
        counts = {}
        for name, s in spikes.items():
            c = s.sum(0, dtype=torch.int64).reshape(B, -1).to(torch.float64)  # [B, N] spikes per neuron
            counts[name] = c
            self._spikes[name].append(c.sum(1).cpu().numpy())
        synops = torch.zeros(B, dtype=torch.float64)
        graded = torch.zeros(B, dtype=torch.float64)
        nonzero = (x.reshape(B, -1) != 0).to(torch.float64)
        for syn in g.synapses:
            fo = self._fan_out[syn.name]
            if syn.src == INPUT:
                ops = (nonzero @ fo) * self.T
                graded += ops
            else:
                ops = counts[syn.src].cpu() @ fo
                synops += ops
            self._synops_by_syn[syn.name] += float(ops.sum())
        self._synops.append(synops.numpy())
        self._graded.append(graded.numpy())
        self._input_spikes.append(nonzero.sum(1).numpy() * self.T)
        for b in self.blocks:
            sig = {k: self._signal(spikes, getattr(b, k)) for k in
                   ("block_input", "prev_input", "backbone", "shortcut", "output")}
            c = block_counts(block_input=sig["block_input"], shortcut=sig["shortcut"], output=sig["output"],
                             backbone=sig["backbone"], prev_input=sig["prev_input"])
            acc = self._block_sums[b.name]
            for k, v in c.items():
                acc[k] = acc.get(k, 0.0) + v
            acc["block_input_spikes"] = acc.get("block_input_spikes", 0.0) + float(sig["block_input"].sum())
        if labels is not None:
            pred = result.predictions.cpu()
            self.correct += int((pred == torch.as_tensor(labels).cpu()).sum())
            self.labelled += int(pred.numel())
        if self.raster is None:
            self.raster = self._raster(spikes)
        self.samples += B

    @staticmethod
    def _signal(spikes, names: Optional[list[str]]) -> Optional[torch.Tensor]:
        if names is None:
            return None
        out = spikes[names[0]].to(torch.float32)
        for n in names[1:]:
            out = out + spikes[n].to(torch.float32)
        return out

    def _raster(self, spikes) -> dict[str, Any]:
        pops = {}
        for name, s in spikes.items():
            t, n = torch.nonzero(s[:, 0].reshape(s.shape[0], -1), as_tuple=True)  # (t, n) order
            total = int(t.numel())
            if total > self.raster_cap:  # evenly subsampled, so every timestep stays represented
                idx = torch.as_tensor(np.unique(np.linspace(0, total - 1, self.raster_cap).round().astype(np.int64)))
                t, n = t[idx], n[idx]
            pops[name] = {"neurons": int(np.prod(s.shape[2:])), "t": t.tolist(), "n": n.tolist(),
                          "total": total, "truncated": total > self.raster_cap}
        return {"sample": 0, "timesteps": self.T, "cap": self.raster_cap, "populations": pops}

    # ------------------------------------------------------------------ results
    def summary(self, float_accuracy: Optional[float] = None) -> dict[str, Any]:
        """JSON-able statistics (the ``statistics`` section of ``report.json``)."""
        g, T = self.graph, self.T
        n = max(self.samples, 1)
        per_sample = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self._spikes.items()}
        synops_in: dict[str, float] = {}
        synops_out: dict[str, float] = {}
        for syn in g.synapses:
            synops_in[syn.dst] = synops_in.get(syn.dst, 0.0) + self._synops_by_syn[syn.name] / n
            synops_out[syn.src] = synops_out.get(syn.src, 0.0) + self._synops_by_syn[syn.name] / n
        layers = []
        for p in g.populations.values():
            v = per_sample[p.name]
            total = float(v.sum())
            layers.append({
                "name": p.name, "kind": p.kind, "op": p.op, "block": p.block, "role": p.role, "neurons": p.size,
                "spikes_total": total, "spikes_per_sample": _moments(v),
                "firing_rate": total / max(p.size * T * self.samples, 1),
                "synops_in_per_sample": synops_in.get(p.name, 0.0),
                "synops_out_per_sample": synops_out.get(p.name, 0.0),
            })
        all_spikes = sum(per_sample.values()) if per_sample else np.zeros(0)
        synops = np.concatenate(self._synops) if self._synops else np.zeros(0)
        graded = np.concatenate(self._graded) if self._graded else np.zeros(0)
        inp = np.concatenate(self._input_spikes) if self._input_spikes else np.zeros(0)
        neurons = sum(p.size for p in g.populations.values())
        active = float(np.mean(all_spikes)) if np.size(all_spikes) else 0.0
        totals = {
            "neurons": neurons,
            "spikes_per_sample": _moments(np.asarray(all_spikes, dtype=np.float64)),
            "synops_per_sample": _moments(synops),
            "graded_input_ops_per_sample": _moments(graded),
            "input_spikes_per_sample": float(inp.mean()) if inp.size else 0.0,
            "readout_synops_per_sample": synops_in.get(READOUT, 0.0),
            "neuron_updates_per_sample": neurons * T,
            "active_neuron_updates_per_sample": active,
            "inactive_neuron_updates_per_sample": neurons * T - active,
            "firing_rate": active / max(neurons * T, 1),
        }
        blocks = []
        for b in self.blocks:
            acc = {k: v / n for k, v in self._block_sums[b.name].items()}
            bb, sc, ab = acc.get("backbone_spikes"), acc.get("shortcut_spikes"), acc.get("merge_absorbed")
            gate = b.merge in ("or", "xor", "iand")
            blocks.append({
                "name": b.name, "merge": b.merge, "selection": b.prev_input is not None,
                "block_input": b.block_input, "backbone": b.backbone, "shortcut": b.shortcut, "output": b.output,
                "block_input_spikes": acc.get("block_input_spikes", 0.0),
                "output_spikes": acc.get("output_spikes", 0.0),
                "backbone_spikes": bb, "shortcut_spikes": sc, "merge_absorbed": ab,
                "redundant": acc.get("redundant"), "xor_removed": acc.get("xor_removed"),
                "xor_added": acc.get("xor_added"),
                "or_saturation": _ratio(ab, acc.get("output_spikes")) if b.merge == "or" else None,
                "coincidence_rate": _ratio(ab, None if bb is None or sc is None else bb + sc - ab) if gate else None,
                "xor_removed_fraction": _ratio(acc.get("xor_removed"), acc.get("block_input_spikes")),
                "branch_balance": _ratio(bb, None if bb is None or sc is None else bb + sc),
            })
        integer_acc = self.correct / self.labelled if self.labelled else None
        return {
            "samples": self.samples, "timesteps": T, "layers": layers, "totals": totals, "blocks": blocks,
            "synops_per_synapse": {k: v / n for k, v in self._synops_by_syn.items()},
            "accuracy": {"float": float_accuracy, "integer": integer_acc, "samples": self.labelled,
                         "difference": (integer_acc - float_accuracy)
                         if integer_acc is not None and float_accuracy is not None else None},
            "latency": latency(g),
        }


def latency(graph: IntegerGraph) -> dict[str, Any]:
    """Pipeline latency in timesteps (``None`` values for an unscheduled graph)."""
    T = graph.timesteps
    if not graph.scheduled:
        return {"timesteps": T, "scheduled": False, "reset_interval": None, "max_population_latency": None,
                "readout_latency": None, "latency_steps": None, "steps_per_sample": None}
    ro = graph.readout_latency() if graph.readout else None
    max_pop = max((p.latency for p in graph.populations.values()), default=0)
    return {"timesteps": T, "scheduled": True, "reset_interval": graph.reset_interval,
            "max_population_latency": max_pop, "readout_latency": ro,
            "latency_steps": T + (ro if ro is not None else max_pop),
            "steps_per_sample": graph.reset_interval}


def collect_statistics(graph: IntegerGraph, pixels, labels=None, *, float_accuracy: Optional[float] = None,
                       batch_size: int = 150, device: str = "cpu", conns: Optional[dict[str, SynapseConn]] = None,
                       sim=None, progress: bool = False) -> tuple[dict[str, Any], StatsAccumulator]:
    """Run the zero-delay reference once over ``pixels [N, C, H, W]`` (batched) and summarise it.

    ``progress``: a progress bar over the ``N`` images on stderr. Returns ``(summary,
    accumulator)``; the raster is ``accumulator.raster``.
    """
    from calibration.reference import ReferenceSimulator

    sim = sim or ReferenceSimulator(graph, device=device)
    acc = StatsAccumulator(graph, conns)
    N = len(pixels)
    with tqdm(total=N, desc="integer reference", unit="img", file=sys.stderr, disable=not progress,
              leave=False) as bar:
        for start in range(0, N, batch_size):
            x = pixels[start:start + batch_size]
            y = None if labels is None else labels[start:start + batch_size]
            acc.update(sim.run_zero_delay(x), x, y)
            bar.update(len(x))
    return acc.summary(float_accuracy), acc
