"""The deployment stages, each a function from one plain artifact to the next.

checkpoint --(:func:`export_nir`)--> float NIR graph --(:func:`architecture_check`: design rules
before calibration)--(:func:`calibrate_checkpoint`)--> integer graph --(:func:`map_to_cores`:
fan-in splits built, scheduled, design rules with the real weights, core plan)--> Loihi-timed
integer graph --> reference / Lava (:mod:`deploy.cli` runs them all; ``xoresnet-eval --integer``
the first three).

This module and the CLIs are the only places where :mod:`deploy` and :mod:`hw_targets` meet: the
packer (:mod:`hw_targets.packing`) finds the fan-in splits and chooses the core plan,
:mod:`calibration.fan_in` builds the splits into the graph, the graph carries the plan
(:attr:`~calibration.integer_graph.IntegerGraph.core_plan`) to the Lava lowering.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from calibration.architecture import architecture_graph
from calibration.fan_in import apply_fan_in_cuts
from calibration.float_graph import nir_to_float_graph
from calibration.integer_graph import IntegerGraph
from calibration.quantize import DEFAULT_CANDIDATES, Calibration, QuantSpec, calibrate_nir
from hw_targets.connectivity import SynapseConn, connectivity
from hw_targets.design_rules import DRCResult, check_design_rules, require_design_rules
from xoresnet.checkpoint import Checkpoint
from xoresnet.data import load_dataset
from xoresnet.errors import DesignRuleError
from xoresnet.network import XOResNet

from .nir_export import export_nir
from .schedule import schedule

DEFAULT_CALIB_SAMPLES = 64


def calibration_pixels(dataset: str, data_dir: Optional[str], samples: int) -> torch.Tensor:
    """The first ``samples`` images of the training split: integers ``[N, C, H, W]``."""
    return load_dataset(dataset, "train", data_dir, limit=max(samples, 1)).pixels[:samples]


def calibrate_checkpoint(model: XOResNet, ckpt: Checkpoint, pixels: torch.Tensor, *,
                         candidates: int = DEFAULT_CANDIDATES, nir_graph=None) -> Calibration:
    """Calibrate ``model`` (``nir_graph``: its :func:`export_nir`, when already exported); a
    quantization-aware trained checkpoint keeps the scales it trained with."""
    spec = QuantSpec.from_dict(ckpt.quant) if ckpt.quant is not None else None
    return calibrate_nir(nir_graph if nir_graph is not None else export_nir(model), pixels, spec=spec,
                         candidates=candidates)


@dataclass
class CoreMapping:
    """An integer graph mapped onto a target's cores (:func:`map_to_cores`): ``graph`` (scheduled,
    fan-in splits built, ``core_plan`` set), ``drc`` (its design rules and packing) and ``conns``
    (its exact connectivity)."""

    graph: IntegerGraph
    drc: DRCResult
    conns: dict[str, SynapseConn]


def map_to_cores(graph: IntegerGraph, target, *, system: Optional[str] = None) -> CoreMapping:
    """Map the unscheduled integer ``graph`` onto ``target``'s cores: schedule it and pack it; if a
    layer's neurons each read more than a core can take, build the fan-in split the packer found
    (:func:`calibration.fan_in.apply_fan_in_cuts`: partial sums one step later, exact) and schedule
    and pack again; run the design rules; attach the packer's core plan (how every population is
    cut into Lava processes) to the graph. Never raises for a design-rule violation
    (:func:`~hw_targets.design_rules.require_design_rules` does)."""
    scheduled = schedule(graph)
    conns = connectivity(scheduled)
    drc = check_design_rules(scheduled, target, system=system, conns=conns)
    cuts = [s.cut for s in drc.packing.splits if not s.built]
    if cuts:
        scheduled = schedule(apply_fan_in_cuts(graph, cuts))
        conns = connectivity(scheduled)
        drc = check_design_rules(scheduled, target, system=system, conns=conns)
    scheduled.core_plan = drc.packing.plan
    return CoreMapping(scheduled, drc, conns)


@dataclass
class ArchitectureCheck:
    """The design rules on the architecture alone (:func:`architecture_check`): ``drc`` at the widest
    weights (8 bits, the most calibration gives: the cores reported before calibration), and, only
    when that fails, ``narrowest`` (the fewest bits any calibration gives)."""

    drc: DRCResult
    narrowest: Optional[DRCResult]
    seconds: float

    @property
    def passed(self) -> bool:
        return self.drc.passed

    def to_dict(self) -> dict[str, Any]:
        pk = self.drc.packing
        return {"passed": self.passed, "extreme": "widest", "cores": pk.num_cores, "chips": pk.chips,
                "lower_bound": round(pk.lower_bound, 3), "bound_ratio": round(pk.bound_ratio, 4),
                "smallest_system": pk.smallest_system, "fan_in_splits": len(pk.splits),
                "cut_populations": pk.plan.cut_populations,
                "seconds": round(self.seconds, 2), "violations": [f.message for f in self.drc.violations],
                "narrowest_cores": self.narrowest.packing.num_cores if self.narrowest else None}


def architecture_check(nir_graph, target, *, system: Optional[str] = None) -> ArchitectureCheck:
    """Check the design rules of ``target`` on the architecture of ``nir_graph`` before calibration.

    The graph is :func:`calibration.architecture.architecture_graph` of the float graph, mapped
    (:func:`map_to_cores`: relays, delays and fan-in splits are the calibrated graph's): first with
    every nonzero weight at 8 bits, the
    most calibration gives, so a pass means every calibration passes the capacity rules; if that
    fails, again at the fewest bits any calibration gives: a failure there is certain and raises
    :class:`~xoresnet.errors.DesignRuleError` (exit code 4) naming the layer, the limit and its
    source. A network between the two is decided after calibration, with its real weights.
    """
    started = time.perf_counter()
    fg = nir_to_float_graph(nir_graph)
    widest = map_to_cores(architecture_graph(fg, "widest"), target, system=system).drc
    narrowest = None
    if not widest.passed:
        narrowest = map_to_cores(architecture_graph(fg, "narrowest"), target, system=system).drc
        try:
            require_design_rules(narrowest)
        except DesignRuleError as e:
            raise DesignRuleError(f"before calibration, with the fewest weight bits any calibration gives: {e}") \
                from None
    return ArchitectureCheck(widest, narrowest, time.perf_counter() - started)
