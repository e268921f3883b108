"""Lava's CPU simulator (``Loihi2SimCfg(select_tag="fixed_pt")``, lava-nc 0.10.0): no hardware.

The simulator computes what Loihi 2 computes, so the fixed-point rules (weight bits, delays,
power-of-two reset interval, graded payload) are the Loihi 2 ones and are enforced; the capacity
limits (cores, neurons and synaptic memory per core, axons, chips) do not bind a CPU simulation and
are checked as *non-enforced*: exceeding them is a warning ("would not fit Loihi 2"), not an error.
Energy figures are the Loihi 2 estimates (what the simulated network would cost on the chip).

Dispatch raises :class:`~hw_targets.base.NoHardwareError` with the target's ``no_dispatch`` line; the simulation
itself is :func:`deploy.lava_run.run_lava`.
"""

from __future__ import annotations

from dataclasses import replace

from calibration.loihi2_limits import CAPACITY_LIMITS
from calibration.loihi2_limits import LIMITS as LOIHI2_LIMITS

from .base import HwTarget
from .loihi2 import SYSTEMS

#: The Loihi 2 limits, the capacity ones (cores, per-core budgets) not enforced: warnings only.
LIMITS = {k: (replace(v, enforced=False) if k in CAPACITY_LIMITS else v) for k, v in LOIHI2_LIMITS.items()}


LAVA_SIM = HwTarget(
    name="lava-sim",
    description="Lava CPU simulator, Loihi2SimCfg(select_tag='fixed_pt') (lava-nc 0.10.0); no hardware",
    limits=LIMITS,
    systems=SYSTEMS,
    has_hardware=False,
    notes=("Capacity limits are reported for Loihi 2 but do not bind the CPU simulator (warnings only).",),
    no_dispatch="target lava-sim is Lava's CPU simulator and has no hardware to dispatch to; dispatch with "
                "--target loihi2 (needs lava-loihi) or simulate with lava-sim",
)
