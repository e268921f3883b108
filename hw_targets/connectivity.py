"""Exact connectivity of an integer graph's synapse processes, and their stored weight precision.

The synapses of a synapse process are the (source neuron, destination neuron) pairs joined by a
*nonzero* weight. For a conv synapse they are counted per axis: the fan-in of every destination
neuron sums its nonzero kernel taps that land inside the source, the fan-out of every source
neuron the taps through which some destination reads it (padding, stride and groups included;
integer arithmetic); dense: nonzero entries per row and column; identity: nonzero diagonal entries.

The statistics (:mod:`hw_targets.stats`: synaptic operations are spikes times fan-out) and the
packer read these; nothing here is an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calibration.integer_graph import READOUT, IntegerGraph, Synapse
from xoresnet.errors import UnsupportedModelError


@dataclass
class SynapseConn:
    """Exact connectivity of one synapse process (flat PyTorch order on both sides)."""

    syn: Synapse
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]
    fan_in: np.ndarray  # int64 [dst_size]: nonzero synapses into each destination neuron
    fan_out: np.ndarray  # int64 [src_size]: nonzero synapses out of each source neuron

    @property
    def src_size(self) -> int:
        return int(np.prod(self.src_shape))

    @property
    def dst_size(self) -> int:
        return int(np.prod(self.dst_shape))

    @property
    def count(self) -> int:
        return int(self.fan_in.sum())


def synapse_connectivity(graph: IntegerGraph, s: Synapse) -> SynapseConn:
    """The exact fan-in and fan-out of synapse process ``s`` of ``graph`` (module docstring); a
    synapse that reads a channel range of its source (``src_channels``) has no fan-out elsewhere."""
    conn = _read_connectivity(graph, s)
    if s.src_channels is None:
        return conn
    full = tuple(graph.source_shape(s.src))
    per = int(np.prod(full[1:])) if len(full) > 1 else 1
    fan_out = np.zeros(int(np.prod(full)), np.int64)
    fan_out[s.src_channels[0] * per: s.src_channels[1] * per] = conn.fan_out
    return SynapseConn(s, full, conn.dst_shape, conn.fan_in, fan_out)


def _read_connectivity(graph: IntegerGraph, s: Synapse) -> SynapseConn:
    """:func:`synapse_connectivity` over what ``s`` reads (its ``src_channels`` range)."""
    src_shape = tuple(graph.read_shape(s))
    dst_shape = (graph.num_classes,) if s.dst == READOUT else tuple(graph.populations[s.dst].shape)
    nz = np.asarray(s.weight) != 0
    if s.kind == "identity":
        fan = nz.reshape(-1).astype(np.int64)
        return SynapseConn(s, src_shape, dst_shape, fan, fan.copy())
    if s.kind == "dense":
        nz = nz.reshape(nz.shape[0], -1)
        return SynapseConn(s, src_shape, dst_shape, nz.sum(1).astype(np.int64), nz.sum(0).astype(np.int64))
    if s.kind != "conv":
        raise UnsupportedModelError(f"synapse {s.name}: unknown kind {s.kind!r}")
    C_out, ipg = nz.shape[:2]
    groups, opg = int(s.groups), C_out // int(s.groups)
    (kh, kw), (sh, sw), (ph, pw) = nz.shape[2:], s.stride, s.padding
    Ho, Wo = (src_shape[1] + 2 * ph - kh) // sh + 1, (src_shape[2] + 2 * pw - kw) // sw + 1
    if (C_out, Ho, Wo) != dst_shape or groups * ipg != src_shape[0]:
        raise UnsupportedModelError(f"synapse {s.name}: conv output {(C_out, Ho, Wo)} does not match population "
                                    f"{s.dst} {dst_shape}")
    # Every source and destination counts once, so the channel sums come first: the fan-in of output
    # (co, yo, xo) sums, over the taps (ky, kx) that land inside the source, co's nonzero weights of
    # that tap; the fan-out of source (ci, y, x) sums, over the taps through which an output reads
    # it, the nonzero weights of ci's tap over the outputs of ci's group.
    per_out = nz.sum(1, dtype=np.int64)  # [C_out, kh, kw]
    per_in = nz.reshape(groups, opg, ipg, kh, kw).sum(1, dtype=np.int64).reshape(groups * ipg, kh, kw)
    fan_in = np.einsum("ckl,yk,xl->cyx", per_out, _reads(Ho, kh, sh, ph, src_shape[1]),
                       _reads(Wo, kw, sw, pw, src_shape[2]))
    fan_out = np.einsum("ckl,yk,xl->cyx", per_in, _read_by(src_shape[1], kh, sh, ph, Ho),
                        _read_by(src_shape[2], kw, sw, pw, Wo))
    return SynapseConn(s, src_shape, dst_shape, fan_in.reshape(-1), fan_out.reshape(-1))


def _reads(n_out: int, k: int, stride: int, pad: int, n_in: int) -> np.ndarray:
    """int64 ``[n_out, k]``: 1 where output ``o``'s tap ``t`` reads a source inside ``[0, n_in)``."""
    pos = np.arange(n_out)[:, None] * stride - pad + np.arange(k)[None, :]
    return ((pos >= 0) & (pos < n_in)).astype(np.int64)


def _read_by(n_in: int, k: int, stride: int, pad: int, n_out: int) -> np.ndarray:
    """int64 ``[n_in, k]``: 1 where source ``i`` is read through tap ``t`` by an output in ``[0, n_out)``."""
    num = np.arange(n_in)[:, None] + pad - np.arange(k)[None, :]
    return ((num % stride == 0) & (num >= 0) & (num // stride < n_out)).astype(np.int64)


def connectivity(graph: IntegerGraph) -> dict[str, SynapseConn]:
    """:class:`SynapseConn` of every synapse, by synapse name."""
    return {s.name: synapse_connectivity(graph, s) for s in graph.synapses}


def stored_weight_bits(weight: np.ndarray, sign_mode: str) -> int:
    """The smallest ``num_weight_bits`` that stores ``weight`` unchanged in Lava's encoding
    (``loihi2-fixed-point.md`` section 2.1): single sign, the magnitude bits of the largest weight;
    mixed sign, the two's-complement bits of ``w >> 1`` (mixed weights are even: 7 magnitude bits
    and a sign hold [-256, 254]). 1 for an all-zero matrix."""
    w = np.asarray(weight).astype(np.int64)
    if w.size == 0 or not np.any(w):
        return 1
    if sign_mode == "mixed":
        m = w >> 1
        lo, hi = int(m.min()), int(m.max())
        return max(int(hi).bit_length(), int(-lo - 1).bit_length()) + 1
    return max(1, int(np.abs(w).max()).bit_length())
