"""Exact integer kernels of our Lava process models (numpy and scipy only: no Lava, no torch).

Every function computes the same integers as the corresponding lava-nc 0.10.0 fixed-point model,
vectorized. The models (:mod:`deploy.lava_models.conv`, ...) call them once per step; the tests
compare them with Intel's own code (``tests/test_lava_models.py``).
"""

from __future__ import annotations

import numpy as np

#: Exact-float limits: a float32 (float64) sum of integers is exact while every partial sum is an
#: integer below 2**24 (2**53) in magnitude, whatever the summation order (BLAS may reorder).
FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53
#: Lava Conv's output register: signed 24 bits, wrapped (``lava.proc.conv.utils.signed_clamp``).
CONV_OUT_BITS = 24


def wrap_signed(x: np.ndarray, bits: int) -> np.ndarray:
    """``x`` (int64) wrapped into the signed ``bits``-bit range: ``((x + 2^(b-1)) mod 2^b) - 2^(b-1)``,
    as int32 (Lava's ``signed_clamp``; on any integer dtype it depends only on ``x mod 2^b``)."""
    half = 1 << (bits - 1)
    return (((x + half) & ((1 << bits) - 1)) - half).astype(np.int32)


def conv_output_xy(in_xy: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Output ``(X, Y)`` of a convolution (Lava's ``utils.output_shape`` in Python integers):
    ``floor((n + 2p - d(k - 1) - 1) / s) + 1`` per axis."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(in_xy, kernel, stride, padding, dilation))


class ExactConv:
    """Lava's ``Conv`` (fixed_pt) as one vectorized, exact computation per step.

    ``weight``: ``(C_out, kX, kY, C_in / groups)`` integers (Lava layout); ``stride``, ``padding``
    (symmetric), ``dilation``: ``(x, y)``. :meth:`__call__` takes the received ``s_in``
    ``(X, Y, C_in)`` and returns the wrapped output ``(X_out, Y_out, C_out)`` int32:

    ``out[x, y, k] = wrap24(sum_{i, j, c} in_pad[x*sx + i*dx, y*sy + j*dy, g*C_g + c] * weight[k, kX-1-i, kY-1-j, c])``

    (``g`` the group of ``k``; the kernel is flipped: a true convolution, as ``scipy.signal.convolve2d``
    computes it in Lava). ``binary`` inputs count as 1 where nonzero (Lava's ``astype(bool)`` for
    ``num_message_bits == 0``), graded ones by value.

    Exactness: the patches are multiplied with the kernel in float32 when every partial sum is
    provably an integer below 2^24 (bound: the largest L1 norm of a kernel row times ``max |s_in|``),
    in float64 below 2^53, else in int64, whose wrap-around keeps the result exact modulo 2^24. Intel's
    model sums in float64 and casts to int32: it computes the same integers whenever its own sums are
    exact (below 2^53) and in int32 range; outside that range its result is undefined.
    """

    def __init__(self, weight: np.ndarray, stride, padding, dilation, groups: int):
        weight = np.asarray(weight)
        if weight.ndim != 4:
            raise ValueError(f"conv weight must be (C_out, kX, kY, C_in/groups), got shape {weight.shape}")
        self.c_out, self.kx, self.ky, self.c_group = (int(n) for n in weight.shape)
        self.groups = int(groups)
        if self.groups < 1 or self.c_out % self.groups:
            raise ValueError(f"groups {self.groups} does not divide C_out = {self.c_out}")
        self.stride = tuple(int(s) for s in stride)
        self.padding = tuple(int(p) for p in padding)
        self.dilation = tuple(int(d) for d in dilation)
        k_group = self.c_out // self.groups
        # [g, (i, j, c), k]: the flipped kernel of each group as a matrix over the patch index
        flipped = np.asarray(weight, dtype=np.int64)[:, ::-1, ::-1, :]
        mat = flipped.reshape(self.groups, k_group, self.kx, self.ky, self.c_group).transpose(0, 2, 3, 4, 1)
        self.matrix = {np.dtype(np.int64): np.ascontiguousarray(mat.reshape(self.groups, -1, k_group))}
        self.row_l1 = int(np.abs(flipped).reshape(self.c_out, -1).sum(1).max()) if weight.size else 0

    def _matrix(self, dtype: np.dtype) -> np.ndarray:
        if dtype not in self.matrix:
            self.matrix[dtype] = self.matrix[np.dtype(np.int64)].astype(dtype)
        return self.matrix[dtype]

    def compute_dtype(self, max_abs_input: int) -> np.dtype:
        """The narrowest dtype in which every partial sum is exact (see the class docstring)."""
        bound = self.row_l1 * int(max_abs_input)
        if bound < FLOAT32_EXACT:
            return np.dtype(np.float32)
        if bound < FLOAT64_EXACT:
            return np.dtype(np.float64)
        return np.dtype(np.int64)

    def __call__(self, s_in: np.ndarray, *, binary: bool) -> np.ndarray:
        X, Y, C = s_in.shape
        if C != self.c_group * self.groups:
            raise ValueError(f"conv input has {C} channels, the kernel expects {self.c_group} x {self.groups} groups")
        xo, yo = conv_output_xy((X, Y), (self.kx, self.ky), self.stride, self.padding, self.dilation)
        if xo < 1 or yo < 1:
            raise ValueError(f"conv output would be {xo} x {yo} for a {X} x {Y} input")
        x = s_in != 0 if binary else s_in
        if not x.any():
            return np.zeros((xo, yo, self.c_out), dtype=np.int32)
        top = 1 if binary else int(np.abs(x.astype(np.int64)).max())
        dt = self.compute_dtype(top)
        (sx, sy), (px, py), (dx, dy) = self.stride, self.padding, self.dilation
        padded = np.zeros((X + 2 * px, Y + 2 * py, C), dtype=dt)
        padded[px:px + X, py:py + Y] = x
        # patches[p, i, j, g, c] with p = (x, y) the output position
        patches = np.empty((xo, yo, self.kx, self.ky, C), dtype=dt)
        for i in range(self.kx):
            for j in range(self.ky):
                patches[:, :, i, j] = padded[i * dx: i * dx + sx * (xo - 1) + 1: sx,
                                             j * dy: j * dy + sy * (yo - 1) + 1: sy]
        P = xo * yo
        if self.groups == 1:
            out = patches.reshape(P, -1) @ self._matrix(dt)[0]
        else:
            grouped = patches.reshape(P, self.kx, self.ky, self.groups, self.c_group).transpose(3, 0, 1, 2, 4)
            out = np.matmul(grouped.reshape(self.groups, P, -1), self._matrix(dt))  # [g, P, k]
            out = out.transpose(1, 0, 2)
        out = out.reshape(xo, yo, self.c_out)
        return wrap_signed(out.astype(np.int64) if dt != np.int64 else out, CONV_OUT_BITS)


def conv_exact(s_in: np.ndarray, weight: np.ndarray, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1,
               *, binary: bool = False) -> np.ndarray:
    """One call of :class:`ExactConv` (for tests and one-off use)."""
    return ExactConv(weight, stride, padding, dilation, groups)(np.asarray(s_in), binary=binary)


#: Loihi's LIF registers (lava's ``AbstractPyLifModelFixed``): 12-bit decays, ``u``/``v`` of 24 bits,
#: synaptic input and threshold MSB-aligned by 6 bits.
DECAY_SHIFT = 12
DECAY_UNITY = 1 << DECAY_SHIFT
UV_HALF = 1 << 23
ACT_SHIFT = 6


def decay_toward_zero(x: np.ndarray, keep: int) -> np.ndarray:
    """``int32(sign(y) * (|y| >> 12))`` for ``y = int64(x) * keep`` (Lava's decay), without the
    sign/abs temporaries: ``trunc(y / 4096) = (y + (4095 if y < 0 else 0)) >> 12``; ``keep`` 0 and
    4096 skip the product (0 and ``x`` exactly)."""
    if keep == 0:
        return np.zeros(x.shape, dtype=np.int32)
    if keep == DECAY_UNITY:
        return x.astype(np.int32)
    y = x.astype(np.int64)
    y *= keep
    y += (y >> 63) & (DECAY_UNITY - 1)
    y >>= DECAY_SHIFT
    return y.astype(np.int32)


def lif_subthreshold(u: np.ndarray, v: np.ndarray, a_in: np.ndarray, *, du: int, dv: int, bias) -> tuple:
    """One step of Lava's fixed-point LIF sub-threshold dynamics (``AbstractPyLifModelFixed
    .subthr_dynamics``, lava-nc 0.10.0): ``(u, v)`` new, int32, the same integers.

    ``u = wrap24(int32(decay(u, 4096 - du - 1)) + (a_in << 6))`` (int32 arithmetic, one wrap into
    ``(-2^23, 2^23]``), ``v = clip(int32(decay(v, 4096 - dv)) + u + bias, -(2^23 - 1), 2^23 - 1)``
    (int32 sum)."""
    cur = decay_toward_zero(u, DECAY_UNITY - (du + 1))
    cur += np.left_shift(a_in, ACT_SHIFT)  # in a_in's dtype, then into int32: wraps as Lava's does
    lo, hi = (int(cur.min()), int(cur.max())) if cur.size else (0, 0)
    if hi > UV_HALF or lo <= -UV_HALF:
        cur = np.where(cur > UV_HALF, cur - 2 * UV_HALF, np.where(cur <= -UV_HALF, cur + 2 * UV_HALF, cur))
    volt = decay_toward_zero(v, DECAY_UNITY - dv)
    volt += cur
    volt += np.asarray(bias).astype(np.int32, copy=False)
    np.clip(volt, -UV_HALF + 1, UV_HALF - 1, out=volt)
    return cur, volt
