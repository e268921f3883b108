"""Our process model of ``lava.proc.io.source.RingBuffer`` for replaying spikes into a slice.

A Lava run of a graph too large for one runtime is split into slices
(:class:`deploy.lava_graph.GraphSlice`); the populations a graph_slice reads but does not simulate are
``RingBuffer`` processes sending, at step ``t``, the values the integer reference computed for
that population at stream step ``t`` (``data[..., t - 1]``: Intel's ``PySendModelFixed`` timing).
Intel's fixed-point model sends int32, which Intel's ``Dense`` model (``num_message_bits = 0``)
would use as column *indices* (``weights[:, s_in]``): a spiking population sends bool, and so does
:class:`PySendModelSpikes`. A partial sum's graded payloads are replayed by Intel's model (int32).
Importing this module has no side effects.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.io.source import RingBuffer


@implements(proc=RingBuffer, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySendModelSpikes(PyLoihiProcessModel):
    """Sends ``data[..., (t - 1) % buffer] != 0`` as bool at step ``t``."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.bool_, precision=1)
    data: np.ndarray = LavaPyType(np.ndarray, np.bool_, precision=1)

    def run_spk(self) -> None:
        self.s_out.send(self.data[..., (self.time_step - 1) % self.data.shape[-1]] != 0)
