"""Intel Loihi 2: limits, systems, energy model and hardware dispatch (the default target).

Every limit is a :class:`~hw_targets.base.Limit` with its source; ``estimate=True`` marks the
figures of ``loihi2-fixed-point.md`` section 6 tagged ``[MEM]`` (from memory of a publication,
not verifiable without Intel's proprietary compiler) and values inferred from them. ``[LOG]``
(lava-dl tutorial notebooks run by Intel on real Loihi 2) and ``[CODE]`` (read in the Lava source)
figures are not estimates, although what a ``[LOG]`` figure *means* can be an inference (said in
its ``description``).

Limit names (the design-rule check in :mod:`hw_targets.resources` uses them):

==========================  ===============================================================
``cores_per_chip``          neuro-cores per chip
``neurons_per_core``        LIF neurons a core holds (the usable figure the compiler packs to)
``neurons_per_core_max``    hardware maximum (informational, not enforced)
``synmem_bits_per_core``    synaptic memory a core holds, in bits (see its description)
``core_memory_bits``        the whole per-core memory (synapses + neuron state + axon tables)
``neuron_groups_per_core``  populations (neuron groups) sharing one core
``axons_in_per_core``       input axons: distinct (source neuron, synapse) routes into a core
``axons_out_per_core``      output axon routes: (source neuron, destination core) pairs
``weight_bits``             stored weight precision (mixed sign: 7 bits + sign, even values)
``delay_max``               synaptic delay, steps on top of the one-step hop
``graded_payload_bits``     graded spike payload
``reset_interval``          ``LIFReset`` reset interval must be a power of two
``neurons_per_chip``,       chip totals (informational)
``synapses_per_chip``
==========================  ===============================================================

Dispatch needs **lava-loihi**, Intel's proprietary Loihi extension of Lava, available to members
of the Intel Neuromorphic Research Community (INRC). lava-nc 0.10.0 (open source) ships only the
CPU simulator: ``lava/magma/core/run_configs.py`` and ``lava/magma/compiler/compiler.py`` import
the neuro-core (``nc``) and embedded-C (``c``) process models, subcompilers and builders inside
``try/except ImportError`` and fall back to empty stand-in classes, so ``Loihi2HwCfg`` can be
constructed but can never select a neuro-core model. :func:`missing_loihi2_modules` lists which of
those modules (and the NxCore driver, and the profiler that ``lava.utils.loihi.is_installed``
checks) cannot be imported.

Dispatch runs an export folder, never a bare graph: the parity certificate travels with the
artifacts (``manifest.json``: the verdict and the SHA-256 of every artifact) and
:func:`deploy.export_dir.read_parity_certificate` checks it against the files before anything runs. The run itself
goes through :func:`deploy.lava_run.run_lava` with ``run_config="hw"``: the child-process runner of
the CPU simulation, with its wall-clock timeout and process / shared-memory cleanup.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

from deploy.export_dir import GRAPH_FILE, read_parity_certificate
from xoresnet.errors import DispatchUnavailableError

from .base import HwTarget, Limit, System

# ---------------------------------------------------------------------- limits

_SEC6 = "loihi2-fixed-point.md section 6"

CORES_PER_CHIP = Limit(
    "cores_per_chip", 128, "neuro-cores per chip",
    f"Intel, 'Taking Neuromorphic Computing to the Next Level with Loihi 2', tech brief 2021 [MEM] ({_SEC6})",
    estimate=True,
    description="Hala Point's totals (140,544 cores / 1,152 chips = 122 per chip) suggest ~122 usable cores per chip.")
NEURONS_PER_CORE = Limit(
    "neurons_per_core", 4096, "neurons per core",
    "lava-loihi compiler logs in lava-dl tutorials netx/yolo_kp/run.ipynb (3,584 neurons = 87.52% of 'Neurons') "
    f"and netx/mnist/run.ipynb (10 neurons = 0.24%) [LOG] ({_SEC6})",
    estimate=False,
    description="Usable LIF/SDNN neurons per core, inferred from the logged utilisation percentages.")
NEURONS_PER_CORE_MAX = Limit(
    "neurons_per_core_max", 8192, "neurons per core",
    f"~1 M neurons per chip / 128 cores, Loihi 2 tech brief [MEM] ({_SEC6})", estimate=True,
    description="Hardware maximum; the compiler packs to neurons_per_core.", enforced=False)
SYNMEM_UNITS_PER_CORE = 12000
SYNMEM_WORD_BITS = 64
SYNMEM_BITS_PER_CORE = Limit(
    "synmem_bits_per_core", SYNMEM_UNITS_PER_CORE * SYNMEM_WORD_BITS, "bits of synaptic memory per core",
    "lava-loihi partitioner 'Synapses' resource, SynMem budget 12000 units per core ('allocation=16128 > 12000' "
    f"forces a split), lava-dl netx/oxford/run.ipynb and pilotnet_snn/benchmark.ipynb [LOG] ({_SEC6}); "
    "the unit's size is not public",
    estimate=True,
    description="12000 SynMem units x an assumed 64-bit word = 768,000 bits (93.75 KiB, about half of the "
                "192 KB core memory); compared with the synaptic-memory estimate of hw_targets.resources.")
CORE_MEMORY_BITS = Limit(
    "core_memory_bits", 192 * 1024 * 8, "bits of memory per core",
    f"Loihi 2 tech brief: 192 KB per core, shared by synapses, neuron state and axon tables [MEM] ({_SEC6})",
    estimate=True,
    description="Checked against synaptic memory + neuron state (NEURON_STATE_BITS per neuron).")
NEURON_GROUPS_PER_CORE = Limit(
    "neuron_groups_per_core", 8, "neuron groups per core",
    f"lava-loihi partitioner resource 'NeuronGr': one group = 12.5% [LOG] ({_SEC6})", estimate=False,
    description="Populations sharing a core; each population fragment on a core is one group.")
AXONS_IN_PER_CORE = Limit(
    "axons_in_per_core", 4096, "input axons per core",
    f"Loihi 1: 4,096 input axons per core, Davies et al., IEEE Micro 38(1) 2018 [MEM] ({_SEC6}); no public "
    "Loihi 2 figure (the lava-loihi compiler checks 'AxonIn')",
    estimate=True,
    description="Loihi 1 figure used for Loihi 2. A neuron's fan-in (its presynaptic routes) must fit one core.")
AXONS_OUT_PER_CORE = Limit(
    "axons_out_per_core", 4096, "output axon routes per core",
    f"Loihi 1: 4,096 output axon routes per core, Davies et al. 2018 [MEM] ({_SEC6}); no public Loihi 2 "
    "figure (the lava-loihi compiler checks 'AxonMap'/'AxonMem')",
    estimate=True, description="Loihi 1 figure used for Loihi 2.")
WEIGHT_BITS = Limit(
    "weight_bits", 8, "bits per weight",
    "Lava Dense/Sparse fixed-point models, num_weight_bits 1..8; mixed sign keeps 7 magnitude bits + sign "
    "(even values, [-256, 254]), single sign 0..255 [CODE] (loihi2-fixed-point.md section 2.1)",
    estimate=False)
DELAY_MAX = Limit(
    "delay_max", 62, "steps of synaptic delay",
    "lava-dl netx clamps delays to 62; Lava's DelayDense checks <= 63 ('6 bits') [CODE]; Lava's Conv has no "
    "delay", estimate=False)
GRADED_PAYLOAD_BITS = Limit(
    "graded_payload_bits", 24, "bits per graded spike",
    "Lava's graded processes use 24-bit payloads [CODE]; Loihi 2 hardware up to 32 bits [MEM]", estimate=False)
RESET_INTERVAL = Limit(
    "reset_interval", 2, "power of two",
    "LIFReset on hardware resets only at power-of-two intervals, lava-dl MNIST tutorial [CODE]", estimate=False,
    description="value 2: the reset interval must be a power of 2")
NEURONS_PER_CHIP = Limit(
    "neurons_per_chip", 1 << 20, "neurons per chip", f"Loihi 2 tech brief: ~1 M neurons per chip [MEM] ({_SEC6})",
    estimate=True, enforced=False)
SYNAPSES_PER_CHIP = Limit(
    "synapses_per_chip", 120_000_000, "synapses per chip", f"Loihi 2 tech brief: ~120 M synapses [MEM] ({_SEC6})",
    estimate=True, enforced=False)

#: Neuron state assumed per neuron in a core's memory (u, v 24 bits each, bias 13+3 bits) - estimate.
NEURON_STATE_BITS = 64

LIMITS: dict[str, Limit] = {l.name: l for l in (
    CORES_PER_CHIP, NEURONS_PER_CORE, NEURONS_PER_CORE_MAX, SYNMEM_BITS_PER_CORE, CORE_MEMORY_BITS,
    NEURON_GROUPS_PER_CORE, AXONS_IN_PER_CORE, AXONS_OUT_PER_CORE, WEIGHT_BITS, DELAY_MAX, GRADED_PAYLOAD_BITS,
    RESET_INTERVAL, NEURONS_PER_CHIP, SYNAPSES_PER_CHIP)}

OHEO_GULCH = System("Oheo Gulch", "oheo-gulch", 1,
                    "lava magma/core/resources.py: OheoGulch, 1 Loihi 2 chip [CODE]", estimate=False)
KAPOHO_POINT = System(
    "Kapoho Point", "kapoho-point", 8,
    "8 Loihi 2 chips [MEM]; lava-dl pilotnet_snn/benchmark.ipynb normalises static power by 8 and the yolo_kp "
    "tutorial calls it the '8 chip Loihi 2 form factor' [LOG]; lava's resources.py docstring says four (conflict)",
    estimate=True)
HALA_POINT = System("Hala Point", "hala-point", 1152,
                    "Intel press release, 17 Apr 2024: 1,152 Loihi 2 chips, 140,544 cores [MEM]", estimate=True)
SYSTEMS = (OHEO_GULCH, KAPOHO_POINT, HALA_POINT)

# ---------------------------------------------------------------------- lava-loihi availability

#: What a Loihi 2 hardware run imports that lava-nc 0.10.0 does not ship (module, role).
LOIHI2_MODULES: tuple[tuple[str, str], ...] = (
    ("lava.magma.core.model.nc.model", "AbstractNcProcessModel, the neuro-core process models Loihi2HwCfg selects"),
    ("lava.magma.compiler.subcompilers.nc.ncproc_compiler", "NcProcCompiler, the neuro-core compiler/partitioner"),
    ("lava.magma.compiler.builders.nc_builder", "NcProcessBuilder"),
    ("lava.magma.compiler.subcompilers.nc.neurocore.n3_logical_neurocore", "N3LogicalNeuroCore, the core mapper"),
    ("lava.magma.core.model.c.model", "CLoihiProcessModel, embedded-CPU process models"),
    ("lava.magma.compiler.subcompilers.c.cproc_compiler", "CProcCompiler"),
    ("nxcore", "NxCore, the board driver and runtime (nxcore.arch.base.nxboard)"),
    ("lava.utils.loihi2_profiler", "the Loihi 2 power/activity profiler (lava.utils.loihi.is_installed checks it)"),
)

HOW_TO_GET = ("lava-loihi is Intel's proprietary Loihi 2 extension of Lava, available to Intel Neuromorphic "
              "Research Community (INRC) members (apply at intel.com/neuromorphic; install lava-loihi on an "
              "INRC system with a Loihi 2 host)")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):  # a parent package is missing or broken
        return False


def missing_loihi2_modules() -> list[str]:
    """The modules of :data:`LOIHI2_MODULES` that cannot be imported here (empty: lava-loihi present).

    Uses :func:`importlib.util.find_spec` only: no Lava code runs (parent packages are imported,
    which for ``lava.magma.*`` only runs their empty ``__init__``).
    """
    return [m for m, _ in LOIHI2_MODULES if not _importable(m)]


def unavailable_message(missing: list[str]) -> str:
    return ("Loihi 2 dispatch needs lava-loihi, which is not installed: cannot import "
            + ", ".join(missing) + f" (lava-nc 0.10.0 is the CPU simulator only). {HOW_TO_GET}")


# ---------------------------------------------------------------------- the target

#: Default wall-clock limit of a hardware run, seconds (``xoresnet-export --timeout``'s default).
DISPATCH_TIMEOUT = 900.0


class Loihi2Target(HwTarget):
    """Loihi 2 hardware. :meth:`dispatch` runs an exported integer graph on a chip via lava-loihi."""

    def dispatch_status(self) -> tuple[bool, str]:
        missing = missing_loihi2_modules()
        if missing:
            return False, unavailable_message(missing)
        if not _host_configured():
            return False, ("lava-loihi is installed but no Loihi 2 host is configured: pass partition= / board= "
                           "(SLURM) or set NXSDKHOST (lava.utils.loihi.use_ethernet_host)")
        return True, "lava-loihi is installed and a Loihi 2 host is configured"

    def dispatch(self, export_dir, pixels=None, *, timeout: float = DISPATCH_TIMEOUT, progress: bool = False,
                 partition: Optional[str] = None, board: Optional[str] = None):
        """Run the export in ``export_dir`` on Loihi 2; return the run's
        :class:`~deploy.lava_run.LavaRunResult` (``run_config == "hw"``: spikes, readout, predictions).

        ``pixels``: ``[N, C, H, W]`` integers, one stream of ``N`` samples. ``timeout``: wall-clock
        seconds for the whole run (:func:`deploy.lava_run.run_lava`, the child-process runner of the
        CPU simulation: killed and cleaned up on expiry, :class:`~xoresnet.errors.LavaRunError`).

        Checked in this order: lava-loihi is installed (else
        :class:`~xoresnet.errors.DispatchUnavailableError`, exit code 7, naming the missing modules);
        the folder's parity certificate holds for ``pixels`` (:func:`deploy.export_dir.read_parity_certificate`, else
        :class:`~xoresnet.errors.ParityError`, exit code 5); the graph is scheduled and passes the
        design rules (:class:`~xoresnet.errors.DesignRuleError`); a Loihi 2 host is configured.

        The hardware run builds the same Lava process graph as the CPU simulation
        (``deploy.lava_graph.build_lava_network``) and runs it with ``Loihi2HwCfg``. It could not be
        tested here (no lava-loihi). On hardware, the host-side ``RingBuffer`` input and
        ``Extractor`` probes may need lava-loihi's embedded I/O adapters (``lava.proc.embedded_io``)
        between host and chip; that is the first thing to check on an INRC system.
        """
        missing = missing_loihi2_modules()
        if missing:
            raise DispatchUnavailableError(unavailable_message(missing))
        if pixels is None:
            raise ValueError("Loihi 2 dispatch needs input pixels [N, C, H, W]")
        from deploy.lava_run import run_lava

        from .resources import check_design_rules, require_design_rules

        export_dir = Path(export_dir)
        graph = read_parity_certificate(export_dir, pixels).graph
        if not graph.scheduled:
            raise DispatchUnavailableError(f"{export_dir / GRAPH_FILE} is not scheduled (no reset interval): "
                                           "re-export it")
        require_design_rules(check_design_rules(graph, self))
        if partition or board:
            from lava.utils import loihi

            loihi.use_slurm_host(partition=partition, board=board)
        elif not _host_configured():
            raise DispatchUnavailableError(self.dispatch_status()[1])
        return run_lava(graph, pixels, timeout=timeout, progress=progress, run_config="hw")


def _host_configured() -> bool:
    return any(os.environ.get(k) for k in ("SLURM", "PARTITION", "BOARD", "NXSDKHOST"))


LOIHI2 = Loihi2Target(
    name="loihi2",
    description="Intel Loihi 2 neuromorphic chip (hardware dispatch through lava-loihi)",
    limits=LIMITS,
    systems=SYSTEMS,
    has_hardware=True,
    notes=(
        "Limits marked 'estimate' are Loihi 1 figures or figures from memory of Intel publications; only "
        "Intel's lava-loihi compiler knows the exact Loihi 2 budgets.",
        "Synaptic memory and core packing are estimates of this tool (hw_targets.resources), not the "
        "lava-loihi partitioner's allocation.",
    ),
)
