"""Intel Loihi 2: limits, systems, energy model and whether hardware dispatch is available (the default target).

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

The run itself is :func:`deploy.dispatch.run_on_hardware` (an export folder, never a bare graph, after its parity
certificate holds).
"""

from __future__ import annotations

import importlib.util
import os
from calibration.loihi2_limits import LIMITS

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
    """Loihi 2 hardware; :func:`deploy.dispatch.run_on_hardware` runs an export on a chip via lava-loihi."""

    def dispatch_status(self) -> tuple[bool, str]:
        missing = missing_loihi2_modules()
        if missing:
            return False, unavailable_message(missing)
        if not host_configured():
            return False, ("lava-loihi is installed but no Loihi 2 host is configured: pass partition= / board= "
                           "(SLURM) or set NXSDKHOST (lava.utils.loihi.use_ethernet_host)")
        return True, "lava-loihi is installed and a Loihi 2 host is configured"


def host_configured() -> bool:
    """True when the environment names a Loihi 2 host (SLURM partition or board, or ``NXSDKHOST``)."""
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
