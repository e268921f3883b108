"""Our fixed-point process model of ``lava.proc.conv.process.Conv``: Intel's integers, one BLAS call.

Intel's ``PyConvModelFixed`` (lava-nc 0.10.0, ``lava/proc/conv/models.py``) calls
``scipy.signal.convolve2d`` once per (output, input) channel pair and step, and types its
geometry Vars ``np.int8``, so on numpy 2 every layer of 128 or more channels, every input of 128
or more pixels and any ``groups`` of 128 or more raises ``OverflowError`` inside the Lava process
(see ``docs/performance.md``). :class:`PyConvModelExact` keeps the process's Vars and ports and its
semantics exactly (send the previous step's ``a_buf``, receive ``s_in``, convolve, wrap to 24 bits;
``weight_exp`` and ``num_weight_bits`` ignored, as in Intel's model) and computes the convolution
with :class:`deploy.lava_models.arith.ExactConv`; its geometry Vars are int32.

Selected per process through ``exception_proc_model_map`` (:func:`deploy.lava_graph.process_models`).
Importing this module has no side effects beyond the class definition (Lava may execute it).
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv.process import Conv

from deploy.lava_models.arith import ExactConv


@implements(proc=Conv, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyConvModelExact(PyLoihiProcessModel):
    """``Conv`` in fixed point: the integers of Intel's ``PyConvModelFixed``, vectorized."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    a_buf: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)
    weight: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    kernel_size: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=16)
    stride: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=16)
    padding: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=16)
    dilation: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=16)
    groups: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=16)
    num_message_bits: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=5)
    weight_exp: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=8)
    num_weight_bits: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=5)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._conv = None  # built from the Vars on the first step, rebuilt after a Var update

    def on_var_update(self):
        self._conv = None

    def run_spk(self) -> None:
        if self._conv is None:
            self._conv = ExactConv(self.weight, self.stride, self.padding, self.dilation, int(self.groups[0]))
        self.a_out.send(self.a_buf)
        s_in = self.s_in.recv()
        self.a_buf = self._conv(s_in, binary=int(self.num_message_bits[0]) == 0)
