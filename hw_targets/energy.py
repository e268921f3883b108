"""Energy per inference from operation counts and per-operation energies (all estimates).

Three models of the same network, side by side (:func:`estimate_energy`):

* **loihi** - the integer network on a neuromorphic chip with the Loihi 1 per-operation
  measurements of Davies et al. 2018 ("Loihi-1-calibrated estimate"; no Loihi 2 per-operation
  table is published)::

      E = synops * E_synop + graded input ops * E_synop
          + active updates * E_active + inactive updates * E_inactive
          + spike messages * (E_spike_tile + hops * E_hop)

* **ann** - the float network run once as an ANN on 45 nm MACs (Horowitz 2014):
  ``E = MACs of one forward pass * 4.6 pJ``.
* **snn_ac** - the SNN convention of the literature on the same 45 nm figures:
  ``E = synops * 0.9 pJ + MACs of the first layer on the analog input * 4.6 pJ``.

The per-operation table is an :class:`EnergyTable` (defaults below, JSON-loadable with
:meth:`EnergyTable.from_json`); every figure carries its source and a label. The Loihi 2 PilotNet
power measurement is kept as a *calibration point* (shown beside the estimate, never used as a
per-operation figure). Every assumption is listed in the result's ``assumptions``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

import numpy as np

from calibration.integer_graph import INPUT, READOUT, IntegerGraph
from xoresnet.errors import DataError
from xoresnet.files import MiB, read_bounded

#: The largest energy table read (ours is 3 kB).
MAX_TABLE_BYTES = 1 * MiB

LOIHI1_LABEL = "Loihi-1-calibrated estimate"
HOROWITZ_LABEL = "45 nm estimate (Horowitz 2014)"
DAVIES = ("Davies et al., 'Loihi: A Neuromorphic Manycore Processor with On-Chip Learning', IEEE Micro 38(1):82-99, "
          "2018, measurements table [MEM: re-check before citing] (loihi2-fixed-point.md section 7.1)")
HOROWITZ = ("Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm 0.9 V [MEM] "
            "(loihi2-fixed-point.md section 7.3)")


@dataclass(frozen=True)
class OpEnergy:
    """Energy of one operation in picojoules, with its source and a label."""

    pj: float
    source: str
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"pj": self.pj, "source": self.source, "label": self.label}


#: PilotNet SNN on Loihi 2 (lava-dl benchmark notebook): a measured point, not a per-op figure.
PILOTNET_LOIHI2 = {
    "name": "PilotNet SNN (LIF) on Loihi 2",
    "inferences_per_s": 408.9,
    "power_total_w": 0.679,
    "power_static_w": 0.232,
    "energy_total_mj": 1.66,
    "energy_dynamic_mj": 1.09,
    "source": "lava-dl tutorials/lava/lib/dl/netx/pilotnet_snn/benchmark.ipynb, Loihi2Power profiler, idle chips "
              "compensated [LOG] (loihi2-fixed-point.md section 7.2)",
    "use": "calibration point only (a different, larger network); not used as per-operation figures",
}


@dataclass(frozen=True)
class EnergyTable:
    """Per-operation energies. Field names are the keys of the JSON form."""

    name: str = "loihi1-davies2018 + horowitz2014-45nm"
    synop: OpEnergy = OpEnergy(23.6, DAVIES + ": synaptic spike operation (min, per synapse), 3.5 ns", LOIHI1_LABEL)
    graded_input_op: OpEnergy = OpEnergy(
        23.6, DAVIES + ": synaptic spike operation, used for one graded (8-bit payload) synaptic operation: "
                       "assumed to cost as much as a binary one", LOIHI1_LABEL)
    neuron_update_active: OpEnergy = OpEnergy(81.0, DAVIES + ": neuron update, active, 8.4 ns", LOIHI1_LABEL)
    neuron_update_inactive: OpEnergy = OpEnergy(52.0, DAVIES + ": neuron update, inactive, 5.3 ns", LOIHI1_LABEL)
    spike_in_tile: OpEnergy = OpEnergy(1.7, DAVIES + ": within-tile spike energy, 2.1 ns", LOIHI1_LABEL)
    hop: OpEnergy = OpEnergy(3.0, DAVIES + ": east-west tile hop (north-south: 4.0 pJ)", LOIHI1_LABEL)
    hops_per_spike: float = 0.0
    ann_mac: OpEnergy = OpEnergy(4.6, HOROWITZ + ": 32-bit float multiply 3.7 pJ + add 0.9 pJ", HOROWITZ_LABEL)
    snn_ac: OpEnergy = OpEnergy(0.9, HOROWITZ + ": 32-bit float add", HOROWITZ_LABEL)
    snn_input_mac: OpEnergy = OpEnergy(4.6, HOROWITZ + ": 32-bit float multiply + add", HOROWITZ_LABEL)
    calibration_points: tuple = (PILOTNET_LOIHI2,)

    OPS = ("synop", "graded_input_op", "neuron_update_active", "neuron_update_inactive", "spike_in_tile", "hop",
           "ann_mac", "snn_ac", "snn_input_mac")

    @classmethod
    def default(cls) -> "EnergyTable":
        return cls()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "hops_per_spike": self.hops_per_spike,
                               "calibration_points": [dict(p) for p in self.calibration_points]}
        for op in self.OPS:
            out[op] = getattr(self, op).to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EnergyTable":
        """A table from JSON: keys of :meth:`to_dict`; missing keys keep the defaults. An operation may be
        a number (pJ, source "user table") or ``{"pj", "source", "label"}``; energies and
        ``hops_per_spike`` are finite and >= 0. Raises ``ValueError`` (one line) naming the bad key."""
        if not isinstance(d, dict):
            raise ValueError(f"an energy table is a JSON object, got {type(d).__name__}")
        base = cls()
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown energy table keys: {', '.join(sorted(unknown))}")
        kw: dict[str, Any] = {}
        for op in cls.OPS:
            if op not in d:
                continue
            v = d[op]
            if _non_negative(v):
                kw[op] = OpEnergy(float(v), "user energy table", "user figure")
            elif isinstance(v, dict) and _non_negative(v.get("pj")):
                kw[op] = OpEnergy(float(v["pj"]), str(v.get("source", "user energy table")),
                                  str(v.get("label", "user figure")))
            else:
                raise ValueError(f"energy table: {op} must be a number of pJ >= 0 or {{'pj': ...}}, got {v!r}")
        if "name" in d:
            kw["name"] = str(d["name"])
        if "hops_per_spike" in d:
            if not _non_negative(d["hops_per_spike"]):
                raise ValueError(f"energy table: hops_per_spike must be a number >= 0, got {d['hops_per_spike']!r}")
            kw["hops_per_spike"] = float(d["hops_per_spike"])
        if "calibration_points" in d:
            points = d["calibration_points"]
            if not isinstance(points, list) or not all(isinstance(q, dict) for q in points):
                raise ValueError("energy table: calibration_points must be a list of objects")
            kw["calibration_points"] = tuple(dict(q) for q in points)
        return replace(base, **kw)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "EnergyTable":
        """:meth:`from_dict` of a JSON file (a regular file of at most :data:`MAX_TABLE_BYTES`); a missing,
        unreadable, oversized or invalid file, a FIFO or a device raises :class:`~xoresnet.errors.DataError`
        (exit code 3), one line."""
        try:
            return cls.from_dict(json.loads(read_bounded(path, what=f"energy table {path}", limit=MAX_TABLE_BYTES)))
        except json.JSONDecodeError as e:
            raise DataError(f"energy table {path}: not valid JSON (line {e.lineno}, column {e.colno}: "
                            f"{e.msg})") from None
        except RecursionError:
            raise DataError(f"energy table {path}: nested too deeply for an energy table") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise DataError(f"energy table {path}: {e}") from None


def _non_negative(v: Any) -> bool:
    """Whether ``v`` is a JSON number (not a boolean), finite and >= 0."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


# ---------------------------------------------------------------------- ANN MACs

def ann_macs(graph: IntegerGraph) -> dict[str, Any]:
    """MACs of one forward pass of the float network the graph was built from.

    Counted: every conv synapse into a neuron population (``C_out * H_out * W_out * C_in/groups *
    kH * kW``: the whole kernel at every output position, zero weights and padding taps included,
    the usual ANN convention) and the readout (``K * C`` when it is a global average pool followed
    by the linear head, recognised by weights constant over the positions; else ``K * N``).
    Not counted: synapses into gates and relays (spike logic and pooling: no ANN MACs), identity
    synapses (residual additions), pooling additions.
    """
    per: dict[str, int] = {}
    input_macs = 0
    pops = graph.populations
    split_into = {s.src: s.dst for s in graph.synapses if s.src in pops and pops[s.src].kind == "partial_sum"}
    for s in graph.synapses:
        if s.src in split_into:
            continue  # a fan-in split's sum of its partial sums: the layer's MACs are counted at its parts
        layer = split_into.get(s.dst, s.dst)  # a partial sum counts as the layer it is part of
        if layer == READOUT:
            K = s.weight.shape[0]
            src = graph.read_shape(s)
            w = np.asarray(s.weight).reshape(K, -1)
            if len(src) == 3:
                wr = w.reshape(K, src[0], -1)
                macs = K * src[0] if np.all(wr == wr[..., :1]) else w.size
            else:
                macs = w.size
        elif pops[layer].kind != "neuron" or s.kind == "identity":
            continue
        elif s.kind == "conv":
            c_out, c_in_g, kh, kw = s.weight.shape
            _, h, w_ = pops[layer].shape
            macs = c_out * h * w_ * c_in_g * kh * kw
        else:  # dense into a population
            macs = int(np.asarray(s.weight).size)
        per[s.name] = int(macs)
        if s.src == INPUT:
            input_macs += int(macs)
    return {"total": int(sum(per.values())), "input": input_macs, "per_synapse": per}


# ---------------------------------------------------------------------- estimate

def _model(label: str, breakdown: dict[str, float], counts: dict[str, float], per_op: dict[str, float]
           ) -> dict[str, Any]:
    total = float(sum(breakdown.values()))
    return {"label": label, "total_pj": total, "total_uj": total * 1e-6, "breakdown_pj": breakdown,
            "counts": counts, "per_op_pj": per_op}


def estimate_energy(stats: dict[str, Any], graph: IntegerGraph, table: Optional[EnergyTable] = None
                    ) -> dict[str, Any]:
    """Energy per inference of the three models (the ``energy`` section of ``report.json``).

    ``stats``: :meth:`hw_targets.stats.StatsAccumulator.summary` (per-sample means are used).
    """
    t = table or EnergyTable.default()
    tot = stats["totals"]
    synops = float(tot["synops_per_sample"]["mean"])
    graded = float(tot["graded_input_ops_per_sample"]["mean"])
    active = float(tot["active_neuron_updates_per_sample"])
    inactive = float(tot["inactive_neuron_updates_per_sample"])
    messages = float(tot["spikes_per_sample"]["mean"]) + float(tot["input_spikes_per_sample"])
    macs = ann_macs(graph)
    spike_pj = t.spike_in_tile.pj + t.hops_per_spike * t.hop.pj
    loihi = _model(
        LOIHI1_LABEL,
        {"synaptic_ops": synops * t.synop.pj, "graded_input_ops": graded * t.graded_input_op.pj,
         "neuron_updates_active": active * t.neuron_update_active.pj,
         "neuron_updates_inactive": inactive * t.neuron_update_inactive.pj, "spike_messages": messages * spike_pj},
        {"synaptic_ops": synops, "graded_input_ops": graded, "neuron_updates_active": active,
         "neuron_updates_inactive": inactive, "spike_messages": messages},
        {"synaptic_ops": t.synop.pj, "graded_input_ops": t.graded_input_op.pj,
         "neuron_updates_active": t.neuron_update_active.pj, "neuron_updates_inactive": t.neuron_update_inactive.pj,
         "spike_messages": spike_pj})
    ann = _model(HOROWITZ_LABEL, {"macs": macs["total"] * t.ann_mac.pj}, {"macs": float(macs["total"])},
                 {"macs": t.ann_mac.pj})
    snn = _model(HOROWITZ_LABEL,
                 {"accumulates": synops * t.snn_ac.pj, "input_macs": macs["input"] * t.snn_input_mac.pj},
                 {"accumulates": synops, "input_macs": float(macs["input"])},
                 {"accumulates": t.snn_ac.pj, "input_macs": t.snn_input_mac.pj})
    T, P = graph.timesteps, graph.reset_interval
    assumptions = [
        f"All figures are per inference (one sample, T = {T} timesteps), means over {stats['samples']} samples of "
        "the zero-delay integer reference.",
        f"loihi: per-operation energies of Loihi 1 (Davies et al. 2018, [MEM]) applied to Loihi 2 "
        f"('{LOIHI1_LABEL}'); no per-operation Loihi 2 table is published. Static/leakage power is not included.",
        "loihi: one synaptic operation per (spike, nonzero synapse) pair, the readout synapses included.",
        "loihi: the 8-bit input is sent as graded spikes at every timestep (zero pixels send none); each graded "
        f"synaptic operation is billed as one synaptic operation ({t.graded_input_op.pj:g} pJ).",
        "loihi: every neuron is updated every timestep (neurons x T"
        + (f"; in a pipelined stream a neuron runs reset_interval = {P} steps per sample, not counted"
           if P and P != T else "") + "); an update is 'active' when the neuron fires in that step, 'inactive' "
        "otherwise (Davies et al. do not define 'active' further).",
        f"loihi: one spike message per emitted spike (binary spikes and nonzero input pixels per step), "
        f"{t.hops_per_spike:g} hops per spike (all traffic assumed within a tile; each east-west hop would add "
        f"{t.hop.pj:g} pJ).",
        "ann: the float network run once (a single forward pass, not per timestep) on 45 nm FP32 MACs "
        f"({t.ann_mac.pj:g} pJ = 3.7 pJ multiply + 0.9 pJ add); MACs of every conv (full kernel at every output "
        "position, padding and zero weights included) and of the head; pooling, residual additions and spike logic "
        "are not counted.",
        f"snn_ac: the usual SNN convention: {t.snn_ac.pj:g} pJ (FP32 add) per synaptic operation of the binary "
        f"spikes over the T timesteps, plus {t.snn_input_mac.pj:g} pJ MACs for the first layer on the analog input, "
        "computed once (the input is constant over time; the model convolves it once).",
        "ann and snn_ac ignore memory access, neuron updates and data movement; they are not Loihi numbers.",
        f"calibration point (not used in the estimate): {PILOTNET_LOIHI2['name']}, "
        f"{PILOTNET_LOIHI2['energy_dynamic_mj']} mJ dynamic / {PILOTNET_LOIHI2['energy_total_mj']} mJ total per "
        f"inference at {PILOTNET_LOIHI2['inferences_per_s']} inferences/s, {PILOTNET_LOIHI2['power_total_w']} W.",
    ]
    return {"loihi": loihi, "ann": ann, "snn_ac": snn, "ann_macs": macs, "assumptions": assumptions,
            "table": t.to_dict(), "calibration_points": [dict(p) for p in t.calibration_points]}
