"""Our process models of ``lava.proc.io.extractor.Extractor``: the same values, in narrow types.

Intel's ``PyLoihiExtractorModel`` (lava-nc 0.10.0) receives and sends float64, so every recorded
spike costs 8 bytes in each of the ``buffer_size`` slots of the channel to the host (about 5 GB of
shared memory for XOResNet-101 at width 1.0 with 64 slots) and 8 bytes on the host. Ours forward
what they receive unchanged in value:

* :class:`PyExtractorModelSpikes` records a population's ``s_out``: 1 where the received value is
  nonzero, as bool (1 byte);
* :class:`PyExtractorModelReadout` records the summed readout synapse outputs: the sum over the
  connected ports in int64 (Intel's sums in float64, equal while below 2^53).

Like Intel's model they send through the channel configuration's send function (blocking by
default). Selected per process through ``exception_proc_model_map``
(:func:`deploy.lava_graph.process_models`). Importing this module has no side effects.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.io.extractor import Extractor


class _ExtractorModel(PyLoihiProcessModel):
    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params=proc_params)
        self._send = self.proc_params["channel_config"].get_send_full_function()


@implements(proc=Extractor, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyExtractorModelSpikes(_ExtractorModel):
    """Records spikes: sends ``received != 0`` as bool."""

    in_port: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
    out_port: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.bool_)

    def run_spk(self) -> None:
        self._send(self.out_port.csp_ports[-1], self.in_port.recv() != 0)


@implements(proc=Extractor, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyExtractorModelReadout(_ExtractorModel):
    """Records integer sums: sends the int64 sum of what its connected ports received."""

    in_port: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int64)
    out_port: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int64)

    def run_spk(self) -> None:
        self._send(self.out_port.csp_ports[-1], self.in_port.recv())
