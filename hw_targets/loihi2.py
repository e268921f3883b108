"""Intel Loihi 2: limits, systems, energy model and hardware dispatch (the default target).

The limits are those of :mod:`calibration.loihi2_limits` (the one home of every Loihi 2 figure,
each with its source and evidence grade); the design rules of :mod:`hw_targets.design_rules`
and the packer of :mod:`hw_targets.packing` read them by name. The systems a packed network is
checked against are defined here, smallest first, with their sources.

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

from calibration.loihi2_limits import LIMITS
from deploy.export_dir import GRAPH_FILE, read_parity_certificate
from xoresnet.errors import DispatchUnavailableError

from .base import HwTarget, System

# ---------------------------------------------------------------------- systems

OHEO_GULCH = System("Oheo Gulch", "oheo-gulch", 1,
                    "lava magma/core/resources.py: OheoGulch, 'a single Loihi 2 chip'", "CODE")
KAPOHO_POINT = System(
    "Kapoho Point", "kapoho-point", 8,
    "lava-dl tutorials: yolo_kp/run.ipynb calls it the '8 chip Loihi 2 form factor' and "
    "pilotnet_snn/benchmark.ipynb normalises static power by 8 chips; lava's magma/core/resources.py docstring says "
    "four (conflict; loihi2-fixed-point.md section 6)", "LOG")
HALA_POINT = System("Hala Point", "hala-point", 1152,
                    "Intel press release, 17 Apr 2024: 1,152 Loihi 2 chips, 140,544 cores", "MEM")
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

        from .design_rules import check_design_rules, require_design_rules

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
        "Limits marked 'estimate' are inferred from Intel's compiler logs (INFER) or known from memory of "
        "Intel publications (MEM); only Intel's lava-loihi compiler knows the exact Loihi 2 budgets.",
        "Tiles, synaptic memory and core counts are estimates of this tool (hw_targets.packing, a cost model "
        "fitted to the lava-loihi logs of YOLO-KP), not the lava-loihi partitioner's allocation.",
    ),
)
