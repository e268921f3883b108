"""Our process model of ``lava.proc.lif.process.LIFReset``: Intel's integers, fewer array passes.

Intel's ``PyLifResetModelBitAcc`` (lava-nc 0.10.0, ``lava/proc/lif/models.py``) recomputes the
scaled bias every step and decays ``u`` and ``v`` through int64 ``sign * (|x| >> 12)`` temporaries
even when a decay is total or absent. :class:`PyLifResetModelFast` inherits everything (receive,
reset schedule, threshold, spike, voltage reset, send) and replaces two methods:

* ``scale_bias``: computed once (and again after a Var is set), with Intel's own code;
* ``subthr_dynamics``: the same integers as Intel's (:func:`deploy.lava_models.arith.lif_subthreshold`).

Selected per process through ``exception_proc_model_map`` (:func:`deploy.lava_graph.process_models`).
Importing this module has no side effects.
"""

from __future__ import annotations

import numpy as np
from lava.proc.lif.models import PyLifResetModelBitAcc

from deploy.lava_models.arith import lif_subthreshold


class PyLifResetModelFast(PyLifResetModelBitAcc):
    """``LIFReset`` in fixed point: Intel's ``PyLifResetModelBitAcc`` with a cached bias and exact,
    leaner decays."""

    def on_var_update(self):
        self.isbiasscaled = False

    def scale_bias(self):
        if not self.isbiasscaled:
            super().scale_bias()

    def subthr_dynamics(self, activation_in: np.ndarray):
        self.u[:], self.v[:] = lif_subthreshold(self.u, self.v, activation_in, du=int(self.du), dv=int(self.dv),
                                                bias=self.effective_bias)
