"""The integer graph of an architecture, before calibration: what the design rules can check first.

Calibration decides the scales, hence the integer weights; everything else the design rules and
the packer read (populations and their shapes, synapse kinds and shapes, strides, groups, which
weights are nonzero, graded inputs, and after :func:`calibration.schedule.schedule` the relays and
delays) is fixed by the architecture. :func:`architecture_graph` builds that graph from the float
graph with every nonzero weight at one extreme of what calibration can give:

* ``"widest"``: the largest magnitude of the weight's sign mode (255, -255, or +-254 for mixed
  matrices), i.e. 8 stored bits, the most calibration ever produces;
* ``"narrowest"``: the smallest nonzero integer (1, -1, or +-2 for mixed matrices, which must be
  even), the fewest bits any calibration of this architecture can produce.

A weight that is zero in the float graph is zero in every calibration; a nonzero one may round to
zero, so both graphs have at least the synapses of any calibrated graph. Every resource of the
packer grows with weight bits and synapses, so the calibrated graph needs at most the widest
graph's cores and at least the narrowest one's: a network the narrowest graph cannot fit cannot
fit after any calibration, and is refused before it (``deploy.pipeline.architecture_check``).

Neuron registers are placeholders inside Loihi's ranges (``vth`` 1, no bias, the float graph's
decays on the 12-bit grid): the design rules do not read them.
"""

from __future__ import annotations

import numpy as np

from xoresnet.decay_grid import decay_codes

from . import loihi2_limits as lim
from .float_graph import FloatGraph
from .integer_graph import IntegerGraph, Population, Synapse

EXTREMES = ("widest", "narrowest")


def _weights(w: np.ndarray, extreme: str) -> np.ndarray:
    """int16 weights of ``w``'s nonzero pattern and signs at ``extreme`` of its sign mode."""
    mode = lim.sign_mode(w)
    lo, hi = lim.weight_range(mode)
    if extreme == "widest":
        pos, neg = hi, lo if mode != "mixed" else -hi
    else:
        pos, neg = (2, -2) if mode == "mixed" else (1, -1)
    out = np.zeros(w.shape, np.int16)
    out[w > 0] = pos
    out[w < 0] = neg
    return out


def architecture_graph(fg: FloatGraph, extreme: str = "widest") -> IntegerGraph:
    """An unscheduled :class:`IntegerGraph` of ``fg``'s architecture with every nonzero weight at
    ``extreme`` (``"widest"`` or ``"narrowest"``, see the module docstring)."""
    if extreme not in EXTREMES:
        raise ValueError(f"extreme must be one of {EXTREMES}, got {extreme!r}")
    pops = {}
    for p in fg.populations.values():
        du, dv = decay_codes(p.du_fraction, p.dv_fraction)
        zero = np.zeros(p.shape, np.int16)
        pops[p.name] = Population(p.name, tuple(p.shape), du_code=du, dv_code=min(dv, lim.DV_RANGE[1]), vth_mant=1,
                                  bias_mant=zero, bias_exp=zero.copy(), kind=p.kind, op=p.op, block=p.block,
                                  role=p.role)
    syns = [Synapse(s.name, s.src, s.dst, s.kind, _weights(np.asarray(s.weight), extreme), stride=tuple(s.stride),
                    padding=tuple(s.padding), groups=int(s.groups), graded=bool(s.graded),
                    model_delay=int(s.model_delay)) for s in fg.synapses]
    return IntegerGraph(tuple(fg.input_shape), int(fg.input_levels), int(fg.timesteps), pops, syns,
                        np.zeros(fg.readout_bias.shape, np.int64), 1.0, meta={"architecture": extreme})
