"""Loihi 2 fixed-point arithmetic, bit-exact with lava-nc 0.10.0's ``fixed_pt`` models.

Pure functions on int64 torch tensors (numpy-free, batched, CPU or CUDA). Sources:
``loihi2-fixed-point.md`` sections 1-3 and lava's ``proc/lif/models.py``
(``AbstractPyLifModelFixed``), ``proc/dense/models.py``, ``proc/conv/{models,utils}.py``.

One LIF step (``PyLifModelBitAcc.run_spk``), integer units throughout::

    u = rtz(u * (4096 - (du + 1)) / 4096) + int32(a << 6)   in int32, then ONE wrap into (-2^23, 2^23]
    h = clip(rtz(v * (4096 - dv) / 4096) + u + bias, -(2^23 - 1), 2^23 - 1)
    s = h > vth << 6                                         strict
    v = 0 where s else h                                     u is not reset

``rtz`` rounds toward zero (sign * (|x| >> 12)); ``bias = bias_mant << bias_exp`` (``>>`` for a
negative exponent, i.e. floor); a synaptic input ``a`` counts ``a << 6`` in ``u``, so ``vth`` and
weights share one unit ("a-units"); ``v`` is in "v-units" = 64 a-units.
"""

from __future__ import annotations

from typing import Optional

import torch

from .integer_graph import INPUT
from .loihi2_limits import (  # noqa: F401  (re-exported: the arithmetic and its ranges read as one module)
    A_LIMIT, ACT_SHIFT, BIAS_EXP_RANGE, BIAS_MANT_RANGE, DECAY_SHIFT, DECAY_UNITY, DELAY_MAX, DU_RANGE, DV_RANGE,
    MESSAGE_BITS_GRADED, UV_HALF, V_LIMIT, VTH_RANGE, WEIGHT_RANGE_EXCITATORY, WEIGHT_RANGE_INHIBITORY,
    WEIGHT_RANGE_MIXED, sign_mode, weight_range)
from xoresnet.decay_grid import decay_codes  # noqa: F401  (re-exported beside the arithmetic that reads the codes)


def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """Two's-complement wrap of int64 values to int32, as numpy int32 arithmetic does."""
    lo, hi = torch.aminmax(x) if x.numel() else (torch.tensor(0), torch.tensor(0))
    if int(lo) >= -(1 << 31) and int(hi) < (1 << 31):
        return x  # the common case: nothing to wrap, no modulo pass
    return ((x + (1 << 31)) % (1 << 32)) - (1 << 31)


def wrap24(x: torch.Tensor) -> torch.Tensor:
    """Signed 24-bit wrap of a Conv output (``utils.signed_clamp(x, 24)``)."""
    lo, hi = torch.aminmax(x) if x.numel() else (torch.tensor(0), torch.tensor(0))
    if int(lo) >= -UV_HALF and int(hi) < UV_HALF:
        return x
    return ((x + UV_HALF) % (1 << 24)) - UV_HALF


def rtz_shift(y: torch.Tensor, shift: int) -> torch.Tensor:
    """``y / 2**shift`` rounded toward zero (``sign(y) * (|y| >> shift)``), with bit operations
    (in place on one new tensor: large temporaries cost more than the arithmetic)."""
    r = y >> 63
    r &= (1 << shift) - 1
    r += y
    r >>= shift
    return r


def decay_rtz(x: torch.Tensor, keep: int) -> torch.Tensor:
    """``x * keep / 4096`` rounded toward zero (``keep`` = 4096 - effective decay), a new tensor.

    Round toward zero is a floor after adding ``4095`` to negative products. int64 ``x``: the
    product, then that shift. int32 ``x`` (``|x| <= 2^25``; u and v stay within 2^24): the product
    would overflow, so ``keep = 64 * kh + kl`` (``kh, kl < 64``) and ``floor((x * keep + c) / 4096)
    = (x * kh + ((x * kl + c) >> 6)) >> 6`` (nested floors of positive divisors), every term below
    2^31."""
    if keep == 0:
        return torch.zeros_like(x)
    if keep == DECAY_UNITY:
        return x.clone()
    c = x >> (x.element_size() * 8 - 1)  # -1 where negative, else 0
    c &= DECAY_UNITY - 1
    if x.dtype == torch.int32:
        kh, kl = divmod(keep, 64)
        if kl:
            c += x * kl
        c >>= 6
        y = x * kh
        y += c
        y >>= 6
        return y
    c += x * keep
    c >>= DECAY_SHIFT
    return c


def shift_exp(acc: torch.Tensor, exp: int) -> torch.Tensor:
    """Dense/Sparse weight exponent applied to the summed input: ``<< exp`` or floor ``>> -exp``."""
    return acc if exp == 0 else acc << exp if exp > 0 else acc >> (-exp)


def bias_value(mant: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
    """Effective per-neuron bias in v-units: ``mant << exp`` (``exp`` >= 0) or ``mant >> -exp``."""
    return torch.where(exp >= 0, mant << exp.clamp(min=0), mant >> (-exp).clamp(min=0))


def lif_step(
    u: torch.Tensor, v: torch.Tensor, a: torch.Tensor, *, du: int, dv: int, bias: torch.Tensor, vth: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Loihi LIF step. ``bias`` in v-units (see :func:`bias_value`), ``vth`` mantissa.

    All int64, or all int32 where :func:`int32_is_exact` holds for ``a`` (then nothing overflows
    and the int32 wraps of Lava's arithmetic are no-ops). Returns ``(u, h, s, v)``: new current,
    pre-reset voltage, spikes (bool) and post-reset voltage.
    """
    narrow = a.dtype == torch.int32
    x = a << ACT_SHIFT if narrow else wrap_int32(a << ACT_SHIFT)
    keep_u, keep_v = DECAY_UNITY - (du + 1), DECAY_UNITY - dv
    if keep_u:  # du = 4095: no current memory, u = a << 6
        d = decay_rtz(u, keep_u)
        d += x
        x = d if narrow else wrap_int32(d)
    u = wrap_u(x)
    h = decay_rtz(v, keep_v)  # in place from here on: large temporaries cost more than the arithmetic
    h += u
    h += bias
    h.clamp_(-V_LIMIT, V_LIMIT)
    s = h > (vth << ACT_SHIFT)
    return u, h, s, h * ~s


def wrap_u(x: torch.Tensor) -> torch.Tensor:
    """The single wrap of the current into ``(-2^23, 2^23]`` (not a modulo: ``-2^23`` becomes ``+2^23``)."""
    lo, hi = torch.aminmax(x) if x.numel() else (torch.tensor(0), torch.tensor(0))
    if int(lo) > -UV_HALF and int(hi) <= UV_HALF:
        return x  # the common case: nothing to wrap
    return torch.where(x > UV_HALF, x - 2 * UV_HALF, torch.where(x <= -UV_HALF, x + 2 * UV_HALF, x))


#: With |a| <= 2^18 (``a << 6`` <= 2^24) a step keeps |u| <= 2^23 by induction: ``x`` = decayed u +
#: ``a << 6`` stays within 3 * 2^23, one wrap brings it back into (-2^23, 2^23], and ``h`` stays
#: within 3 * 2^23 before its clip. Every intermediate then fits int32 with room to spare and no
#: int32 wrap of Lava's arithmetic can occur. (Calibration bounds |a| by 2^17.)
INT32_A_LIMIT = (1 << (24 - ACT_SHIFT)) + 1


def int32_is_exact(a: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether :func:`lif_step` may run on int32 for the inputs ``a`` and ``bias`` (half the memory
    traffic of int64, the same integers)."""
    if not a.numel():
        return True
    lo, hi = torch.aminmax(a)
    b = int(bias.abs().max()) if bias.numel() else 0
    return max(-int(lo), int(hi)) < INT32_A_LIMIT and b <= UV_HALF


def integrate(a: torch.Tensor, *, du: int, dv: int, bias: torch.Tensor, vth: int, record_state: bool = False
              ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Run :func:`lif_step` over the input sequence ``a [T, ...]`` (int64 a-units) from zero state,
    on int32 where :func:`int32_is_exact`.

    Returns ``(s, u, v)``: spikes (bool ``[T, ...]``) and, with ``record_state``, the post-step
    current and post-reset voltage (int64 v-units, ``[T, ...]``; else ``None``).
    """
    if int32_is_exact(a, bias):
        a, bias = a.to(torch.int32), bias.to(torch.int32)
    u = torch.zeros_like(a[0])
    v = torch.zeros_like(a[0])
    s_seq = torch.empty(a.shape, dtype=torch.bool, device=a.device)
    u_seq = torch.empty(a.shape, dtype=torch.int64, device=a.device) if record_state else None
    v_seq = torch.empty_like(u_seq) if record_state else None
    for t in range(a.shape[0]):
        u, _h, s_seq[t], v = lif_step(u, v, a[t], du=du, dv=dv, bias=bias, vth=vth)
        if record_state:
            u_seq[t], v_seq[t] = u, v
    return s_seq, u_seq, v_seq


# ---------------------------------------------------------------------- synapses
# Sums of integer products run in floating point, exactly: in float32 when every partial sum is an
# integer below 2^24 in magnitude (bounded by max over outputs of sum |w| times max |x|), else in
# float64 (exact below 2^53, far above any Loihi sum). float32 convolutions are ~15x faster on CPU.
# Outputs are int64, or int32 when every value is provably below 2^23 in magnitude (half the
# memory traffic; sums of up to 255 of them still fit int32).

def exact_float_dtype(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.dtype, float]:
    """``(dtype, bound)``: the float type that sums ``weight`` (``[n_out, ...]``) times ``x`` exactly,
    and the bound on every partial sum's magnitude."""
    if not x.numel():
        return torch.float32, 0.0
    x_max = 1.0 if x.dtype == torch.bool else float(x.abs().max())
    bound = float(weight.abs().flatten(1).sum(1).max()) * x_max if weight.numel() else 0.0
    return (torch.float32 if bound < 2 ** 24 else torch.float64), bound


def conv_current(x: torch.Tensor, weight: torch.Tensor, *, stride, padding, groups: int) -> torch.Tensor:
    """Lava ``Conv`` (fixed_pt): exact integer conv2d of ``x [N, C, H, W]`` with ``weight`` in PyTorch
    layout (cross-correlation), cast to int32 and wrapped to signed 24 bits. No weight exponent."""
    dtype, bound = exact_float_dtype(x, weight)
    y = torch.nn.functional.conv2d(x.to(dtype), weight.to(dtype), stride=stride, padding=padding, groups=groups)
    if bound < UV_HALF:  # nothing can wrap; exact integers: the cast does not round
        return y.to(torch.int32)
    return wrap24(wrap_int32(y.to(torch.int64)))


def dense_current(x: torch.Tensor, weight: torch.Tensor, weight_exp: int) -> torch.Tensor:
    """Lava ``Dense``/``Sparse``: ``(W @ x) << weight_exp`` (floor ``>>`` when negative) on ``x [N, ...]``."""
    x = x.flatten(1)
    dtype, _ = exact_float_dtype(x, weight)
    return shift_exp((x.to(dtype) @ weight.to(dtype).T).to(torch.int64), weight_exp)


def identity_current(x: torch.Tensor, weight: torch.Tensor, weight_exp: int) -> torch.Tensor:
    """A diagonal ``Sparse`` synapse: element-wise ``(w * x) << weight_exp``. For spikes (bool
    ``x``) that is ``w << weight_exp`` where a spike arrived (floor ``>>`` is exact on 0 and w)."""
    if x.dtype == torch.bool:
        w = shift_exp(weight.to(torch.int64), weight_exp)
        return x * (w.to(torch.int32) if w.numel() and int(w.abs().max()) < UV_HALF else w)
    return shift_exp(x.to(torch.int64) * weight.to(torch.int64), weight_exp)


def synapse_current(syn, x: torch.Tensor, weight: torch.Tensor, shape: Optional[tuple[int, ...]] = None
                    ) -> torch.Tensor:
    """Integer output (a-units, ``[N, ...]``; int64, or int32 when every value is below 2^23 in
    magnitude) of the integer-graph synapse ``syn`` (its ``kind``,
    ``graded``, ``weight_exp``, ``stride``, ``padding``, ``groups``, ``src_channels``) with ``weight``
    (``syn.weight`` as a tensor on ``x``'s device) for source values ``x [N, *source_shape]``:
    payloads for a graded synapse (pixels, partial sums), else spikes (any non-zero value counts 1,
    as Lava's binary ``num_message_bits = 0``); a synapse with ``src_channels = (a, b)`` reads
    ``x[:, a:b]``. Dense outputs are ``[N, n_out]``, or ``[N, *shape]`` when the target's ``shape``
    is given."""
    x = x if syn.graded or x.dtype == torch.bool else (x != 0)
    channels = getattr(syn, "src_channels", None)
    if channels is not None:
        x = x[:, int(channels[0]):int(channels[1])]
    if syn.kind == "conv":
        return conv_current(x, weight, stride=syn.stride, padding=syn.padding, groups=syn.groups)
    if syn.kind == "dense":
        out = dense_current(x, weight, syn.weight_exp)
        return out if shape is None else out.view((out.shape[0],) + tuple(shape))
    return identity_current(x, weight, syn.weight_exp)


def zero_delay_current(syns: list, weights: list[torch.Tensor], sources: list[torch.Tensor],
                       shape: tuple[int, ...], T: int, B: int, device: torch.device) -> torch.Tensor:
    """Zero-delay synaptic input ``a [T, B, *shape]`` (a-units, int64 or int32: see
    :func:`synapse_current`; summed over the integer-graph synapses ``syns``) of a
    population of ``shape``. ``weights[i]``: ``syns[i].weight`` as a tensor; ``sources[i]``: the
    input pixels ``[B, C, H, W]`` (the same at every step) for a synapse from the input, else its
    source population's spikes ``[T, B, *source_shape]``. A synapse with a ``model_delay`` of ``k``
    delivers its source's step ``t - k`` at step ``t`` (nothing before ``k``)."""
    size = (T, B) + tuple(shape)
    a = None
    for syn, w, x in zip(syns, weights, sources):
        every_step = syn.src == INPUT  # the pixels: one current, added at every step
        y = synapse_current(syn, x if every_step else x.flatten(0, 1), w, shape)
        y = y.view((1,) + tuple(y.shape)) if every_step else y.view((T, B) + tuple(y.shape[1:]))
        if syn.model_delay:
            k = min(syn.model_delay, T)
            y = torch.cat([torch.zeros((k,) + tuple(y.shape[1:]), dtype=y.dtype, device=y.device),
                           y.expand((T,) + tuple(y.shape[1:]))[: T - k]])
        if a is None and tuple(y.shape) == size:
            a = y  # a new tensor: the sum starts from it
        else:
            a = torch.zeros(size, dtype=y.dtype, device=device) if a is None else a
            if a.dtype != y.dtype:
                a = a.to(torch.int64)  # int32 outputs are below 2^23: sums of a few fit, wider ones widen
            a += y  # broadcasts a current of one step (the pixels) over all steps
    return a if a is not None else torch.zeros(size, dtype=torch.int64, device=device)
