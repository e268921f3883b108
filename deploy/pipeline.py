"""The deployment stages, one function per arrow of the README's diagram, each from one plain artifact to the next.

================================  =================================================================="""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from calibration.architecture import architecture_graph
from calibration.fan_in import apply_fan_in_cuts
from calibration.float_graph import nir_to_float_graph
from calibration.integer_graph import IntegerGraph
from calibration.quantize import DEFAULT_CANDIDATES, Calibration, QuantSpec, calibrate_nir
from calibration.reference import StreamResult
from calibration.schedule import schedule
from hw_targets.base import HwTarget
from hw_targets.connectivity import SynapseConn, connectivity
from hw_targets.design_rules import DRCResult, check_design_rules, require_design_rules
from hw_targets.energy import EnergyTable, estimate_energy
from hw_targets.report import build_report, model_section
from hw_targets.stats import StatsAccumulator, collect_statistics
from xoresnet.checkpoint import Checkpoint
from xoresnet.data import load_dataset
from xoresnet.errors import DesignRuleError
from xoresnet.network import XOResNet
from xoresnet.nir.export import export_nir

from . import lava_run
from .export_dir import reference_stream, stream_sha256
from .parity import ParityReport, check_parity, lava_section

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
                "rule_minimum": pk.rule_minimum_cores,
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


@dataclass
class Analysis:
    """What the integer graph costs and does (:func:`analyse`): ``drc`` (design rules, packing, systems; None
    when the graph was not mapped),
    ``stats`` (the integer reference's accuracy, spikes, latency on the evaluation images), ``accumulator``
    (its raster), ``energy`` (per-inference estimates)."""

    drc: Optional[DRCResult]
    stats: dict[str, Any]
    accumulator: StatsAccumulator
    energy: dict[str, Any]


def analyse(graph: IntegerGraph, mapping: Optional[CoreMapping], pixels: torch.Tensor,
            labels: Optional[torch.Tensor] = None, *,
            float_accuracy: Optional[float] = None, energy_table: Optional[EnergyTable] = None,
            progress: bool = False, batch_size: int = 150, device: str = "cpu") -> Analysis:
    """One zero-delay integer reference run of ``graph`` (``mapping``: its :func:`map_to_cores`, or None) over
    ``pixels [N, C, H, W]`` (accuracy against ``labels``, spike statistics;
    :func:`hw_targets.stats.collect_statistics`) and the energy estimate."""
    stats, accumulator = collect_statistics(graph, pixels, labels, float_accuracy=float_accuracy,
                                            conns=mapping.conns if mapping else None, progress=progress,
                                            batch_size=batch_size, device=device)
    return Analysis(mapping.drc if mapping else None, stats, accumulator, estimate_energy(stats, graph, energy_table))


@dataclass
class LavaParity:
    """One Lava parity run (:func:`lava_parity`): the reference's Loihi-timed stream, Lava's run, their
    comparison and its JSON record (``parity.json``)."""

    reference: StreamResult
    lava: lava_run.LavaRunResult
    report: ParityReport
    record: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.report.passed

    def lava_section(self, graph: IntegerGraph) -> dict[str, Any]:
        """The report's ``lava`` section (:func:`deploy.parity.lava_section`)."""
        return lava_section(graph, self.lava, self.reference)


def lava_parity(graph: IntegerGraph, pixels: torch.Tensor, *, timeout: float, progress: bool = False) -> LavaParity:
    """Run ``pixels [N, C, H, W]`` as one stream through the integer reference (Loihi timing) and through Lava's
    ``Loihi2SimCfg('fixed_pt')`` (:func:`deploy.lava_run.run_lava`, a child process bounded by ``timeout``
    seconds) and compare every population, neuron and step (:func:`deploy.parity.check_parity`). A failed
    comparison is returned, not raised: the caller writes its failure file."""
    reference = reference_stream(graph, pixels)
    lava = lava_run.run_lava(graph, np.asarray(pixels), timeout=timeout, progress=progress, reference=reference)
    report = check_parity(graph, reference, lava)
    record = {**report.to_dict(), "summary": report.summary(), "lava_seconds": round(lava.seconds, 2),
              "lava_runtimes": len(lava.slices),
              "reference_sha256": stream_sha256(reference), "lava_process_models": lava.process_models}
    return LavaParity(reference, lava, report, record)


def report_of(graph: IntegerGraph, target: HwTarget, analysis: Analysis, *, model: Optional[dict[str, Any]] = None,
              dataset: Optional[dict[str, Any]] = None, parity: LavaParity | dict[str, Any] | None = None,
              architecture: Optional[ArchitectureCheck] = None, warnings: Optional[list[str]] = None,
              checkpoint: Optional[Checkpoint] = None) -> dict[str, Any]:
    """``report.json`` (validated) of ``graph`` from its :class:`Analysis`; ``model``: the report's model section
    (default: :func:`~hw_targets.report.model_section` of ``graph`` and ``checkpoint``); ``dataset``: name and
    split of the evaluation images; ``parity``: the Lava parity run, when there was one, or a parity record
    alone (``parity.json``'s ``passed``, ``samples``, ``summary``: no ``lava`` section)."""
    ds = {"name": None, "split": None, **(dataset or {}), "samples": analysis.stats["samples"]}
    run = parity if isinstance(parity, LavaParity) else None
    return build_report(graph=graph, target=target, drc=analysis.drc, stats=analysis.stats, energy=analysis.energy,
                        raster=analysis.accumulator.raster,
                        model=model if model is not None else model_section(graph, checkpoint=checkpoint),
                        dataset=ds, parity=run.record if run else parity,
                        lava=run.lava_section(graph) if run else None,
                        architecture=architecture.to_dict() if architecture else None, warnings=warnings)
