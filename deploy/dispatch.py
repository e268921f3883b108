"""Hardware dispatch: run an export folder on Loihi 2, only after its parity certificate holds.

Dispatch runs an export folder, never a bare graph: the parity certificate travels with the artifacts
(``manifest.json``: the verdict and the SHA-256 of every artifact) and
:func:`deploy.export_dir.read_parity_certificate` checks it against the files before anything runs. The run
itself goes through :func:`deploy.lava_run.run_lava` with ``run_config="hw"``: the child-process runner of the
CPU simulation, with its wall-clock timeout and process / shared-memory cleanup. Whether the Loihi 2 stack is
present is :mod:`hw_targets.loihi2`'s (:func:`~hw_targets.loihi2.missing_loihi2_modules`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from hw_targets.base import HwTarget, NoHardwareError
from hw_targets.design_rules import check_design_rules, require_design_rules
from hw_targets import loihi2
from hw_targets.loihi2 import DISPATCH_TIMEOUT
from xoresnet.errors import DispatchUnavailableError

from . import lava_run
from .export_dir import GRAPH_FILE, read_parity_certificate


def run_on_hardware(target: HwTarget, export_dir, pixels: Optional[np.ndarray] = None, *,
                    timeout: float = DISPATCH_TIMEOUT, progress: bool = False, partition: Optional[str] = None,
                    board: Optional[str] = None) -> lava_run.LavaRunResult:
    """Run the export in ``export_dir`` on ``target``'s hardware (Loihi 2); return the run's
    :class:`~deploy.lava_run.LavaRunResult` (``run_config == "hw"``: spikes, readout, predictions).

    ``pixels``: ``[N, C, H, W]`` integers, one stream of ``N`` samples. ``timeout``: wall-clock seconds for
    the whole run (:func:`deploy.lava_run.run_lava`: killed and cleaned up on expiry,
    :class:`~xoresnet.errors.LavaRunError`).

    Checked in this order: the target has hardware (else :class:`~hw_targets.base.NoHardwareError`, exit
    code 7, with the target's ``no_dispatch`` line); lava-loihi is installed (else
    :class:`~xoresnet.errors.DispatchUnavailableError`, exit code 7, naming the missing modules); the
    folder's parity certificate holds for ``pixels`` (else :class:`~xoresnet.errors.ParityError`, exit code
    5); the graph is scheduled and passes the design rules (:class:`~xoresnet.errors.DesignRuleError`); a
    Loihi 2 host is configured (``partition`` / ``board`` select a SLURM host).

    The hardware run builds the same Lava process graph as the CPU simulation
    (``deploy.lava_graph.build_lava_network``) and runs it with ``Loihi2HwCfg``. It could not be tested here
    (no lava-loihi). On hardware, the host-side ``RingBuffer`` input and ``Extractor`` probes may need
    lava-loihi's embedded I/O adapters (``lava.proc.embedded_io``) between host and chip; that is the first
    thing to check on an INRC system.
    """
    if not target.has_hardware:
        raise NoHardwareError(target.dispatch_status()[1])
    missing = loihi2.missing_loihi2_modules()  # module attributes: looked up at call time (tests stand in for them)
    if missing:
        raise DispatchUnavailableError(loihi2.unavailable_message(missing))
    if pixels is None:
        raise ValueError("Loihi 2 dispatch needs input pixels [N, C, H, W]")
    export_dir = Path(export_dir)
    graph = read_parity_certificate(export_dir, pixels).graph
    if not graph.scheduled:
        raise DispatchUnavailableError(f"{export_dir / GRAPH_FILE} is not scheduled (no reset interval): "
                                       "re-export it")
    require_design_rules(check_design_rules(graph, target))
    if partition or board:
        from lava.utils import loihi

        loihi.use_slurm_host(partition=partition, board=board)
    elif not loihi2.host_configured():
        raise DispatchUnavailableError(target.dispatch_status()[1])
    return lava_run.run_lava(graph, pixels, timeout=timeout, progress=progress, run_config="hw")
