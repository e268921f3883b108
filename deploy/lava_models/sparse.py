"""Our process models of ``lava.proc.sparse.process.Sparse`` and ``DelaySparse``: Intel's code,
without its per-step rework.

* Intel's ``PySparseModelBitAcc`` sums the weights of the spiking inputs as
  ``weights[:, s_in].sum(axis=1)``: scipy builds a new column-sliced CSR matrix every step.
  :class:`PySparseModelFast` computes the same int64 sums as one sparse matrix-vector product.
* Intel's ``PyDelaySparseModelBitAcc`` rebuilds its delay-stacked weight matrix
  (``get_delay_wgts_mat``: one masked copy of the weights per delay value) at every step.
  :class:`PyDelaySparseModelFast` builds it once, with Intel's own function, after Intel's weight
  clipping of the first step, and again only when a Var is set.

Everything else (clipping and truncation of the weights, ``weight_exp``, the delay check, the
buffer roll) is inherited unchanged. Selected per process through ``exception_proc_model_map``
(:func:`deploy.lava_graph.process_models`). Importing this module has no side effects.
"""

from __future__ import annotations

import numpy as np
from lava.proc.sparse.models import PyDelaySparseModelBitAcc, PySparseModelBitAcc
from lava.utils.weightutils import SignMode, clip_weights, determine_sign_mode, truncate_weights


class PySparseModelFast(PySparseModelBitAcc):
    """``Sparse`` in fixed point: Intel's ``PySparseModelBitAcc`` with the binary input summed by a
    sparse product (``weights @ s`` in int64, the values and dtype of Intel's column sums)."""

    def run_spk(self):
        self.weight_exp: int = self.proc_params.get("weight_exp", 0)
        if not self.weights_set:  # Intel's first-step weight conditioning, unchanged
            num_weight_bits: int = self.proc_params.get("num_weight_bits", 8)
            sign_mode: SignMode = self.proc_params.get("sign_mode") or determine_sign_mode(self.weights)
            self.weights = clip_weights(self.weights, sign_mode, num_bits=8)
            self.weights = truncate_weights(self.weights, sign_mode, num_weight_bits)
            self.weights_set = True
        self.a_out.send(self.a_buff)
        if self.num_message_bits.item() > 0:
            a_accum = self.weights.dot(self.s_in.recv())
        else:
            a_accum = self.weights.dot((self.s_in.recv() != 0).astype(np.int64))
        self.a_buff = (np.left_shift(a_accum, self.weight_exp) if self.weight_exp > 0
                       else np.right_shift(a_accum, -self.weight_exp))


class PyDelaySparseModelFast(PyDelaySparseModelBitAcc):
    """``DelaySparse`` in fixed point: Intel's ``PyDelaySparseModelBitAcc`` with its delay-stacked
    weight matrix built once."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._delay_wgts = None

    def on_var_update(self):
        self._delay_wgts = None

    def calc_act(self, s_in) -> np.ndarray:
        """Intel's ``calc_act`` on the cached ``get_delay_wgts_mat(weights, delays, max_delay)``
        (the weights are final: Intel's ``run_spk`` conditions them before its first ``calc_act``)."""
        if self._delay_wgts is None:
            self._delay_wgts = self.get_delay_wgts_mat(self.weights, self.delays, self.a_buff.shape[-1] - 1)
        return np.reshape(self._delay_wgts.dot(s_in), (self.a_buff.shape[-1], self.weights.shape[0])).T
