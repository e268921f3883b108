"""Faulty Lava process models, injected by tests through ``run_lava(model_overrides=...)``.

Imported by dotted path (``lava_fault_models.<Class>``, with ``tests/`` on the child's
``PYTHONPATH``: lava-nc installs a ``tests`` package of its own) inside the Lava child; only class
definitions here (Lava may execute this module while it looks for process models).
"""

import time

from lava.proc.lif.models import PyLifResetModelBitAcc

#: The step at which the faulty models misbehave (a later step than the first: the network is running).
FAULT_STEP = 3


class PyLifResetModelRaising(PyLifResetModelBitAcc):
    """Intel's LIFReset model that raises at step :data:`FAULT_STEP` before it sends its spikes, so the
    processes downstream wait for a message that never comes (the case that hangs Lava's runtime)."""

    def run_spk(self):
        if self.time_step == FAULT_STEP:
            raise RuntimeError(f"injected fault at step {FAULT_STEP}")
        super().run_spk()


class PyLifResetModelHanging(PyLifResetModelBitAcc):
    """Intel's LIFReset model that blocks forever at step :data:`FAULT_STEP` without raising: only
    the timeout can end such a run."""

    def run_spk(self):
        if self.time_step == FAULT_STEP:
            while True:
                time.sleep(3600)
        super().run_spk()
