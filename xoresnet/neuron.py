"""The discrete-time CUBA LIF neuron: a functional core over ``[T, B, ...]`` and a thin module shell.

Float semantics, one step ``t`` (all quantities in the units of the threshold ``vth``)::

    u[t] = u[t-1] * (1 - du) + x[t]            synaptic current; du = 1 gives a current-free LIF
    h[t] = v[t-1] * (1 - dv) + u[t] + bias     membrane before the spike test ("pre-reset")
    s[t] = h[t] > vth                          strict, as on Loihi
    v[t] = 0 where s[t] else h[t]              hard reset (u is not reset)
    v[t] = h[t] - vth * s[t]                   soft reset: trainable, refused at export

``bias`` is per channel (batch norm's shift, see :class:`Current`) and enters ``v`` every step,
exactly like Loihi's ``bias_mant << bias_exp``. ``du`` and ``dv`` are scalars per layer (Loihi
decays are per population) on the 12-bit Loihi grid: ``du = (du_L + 1) / 4096`` with
``du_L`` in 0..4095 and ``dv = dv_L / 4096`` with ``dv_L`` in 0..4095 (see
``loihi2-fixed-point.md`` section 1.3 for the ``+1`` offset). The Heaviside has an ATan surrogate
gradient ``alpha / 2 / (1 + (pi / 2 * alpha * (h - vth))**2)``; the reset path is detached.

The Loihi fixed-point version of the same step lives in :mod:`calibration.fixed_point`;
quantization-aware training swaps the float step for it through :attr:`CubaLIF.quant`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Protocol

import torch
from torch import nn

from .decay_grid import DECAY_UNITY


class Current(NamedTuple):
    """Input to a neuron population.

    ``x``: synaptic current per element, ``[T, B, C, H, W]`` (or ``[T, B, N]``), float units.
    ``bias``: per-channel current added to ``v`` every step, ``[C]`` or ``None``.
    Two currents into one neuron add (the ADD merge of the OA shortcut).
    """

    x: torch.Tensor
    bias: Optional[torch.Tensor] = None

    def __add__(self, other: "Current") -> "Current":  # type: ignore[override]
        if self.bias is None:
            bias = other.bias
        elif other.bias is None:
            bias = self.bias
        else:
            bias = self.bias + other.bias
        return Current(self.x + other.x, bias)


def decay_problem(du: float, dv: float) -> Optional[str]:
    """Why a neuron with decays ``du``, ``dv`` cannot be exported, or None: with ``du < 1`` (a synaptic current)
    NIR's CubaLIF carries the per-step bias through its membrane time constant ``1/dv``, so ``dv`` must be > 0."""
    if du < 1.0 and dv == 0.0:
        return (f"du={du:g} < 1 with dv=0: NIR's CubaLIF needs a finite membrane time constant to carry the per-step "
                "bias; use dv > 0 or du = 1")
    return None


def snap_to_decay_grid(value: torch.Tensor, *, offset: int) -> torch.Tensor:
    """Round a decay onto the Loihi grid with a straight-through gradient (for learned decays)."""
    lo, hi = offset / DECAY_UNITY, (DECAY_UNITY - 1 + offset) / DECAY_UNITY
    clamped = value.clamp(lo, hi)
    snapped = torch.round(clamped * DECAY_UNITY) / DECAY_UNITY
    return clamped + (snapped - clamped).detach()


def atan_surrogate(h_minus_vth: torch.Tensor, alpha: float) -> torch.Tensor:
    """Derivative of the ATan surrogate of the Heaviside at ``h - vth``."""
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * h_minus_vth) ** 2)


class SpikeFn(torch.autograd.Function):
    """Heaviside ``h > 0`` with the ATan surrogate gradient (single step, used off the fast path)."""

    @staticmethod
    def forward(ctx, h_minus_vth: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(h_minus_vth)
        ctx.alpha = alpha
        return (h_minus_vth > 0).to(h_minus_vth.dtype)

    @staticmethod
    def backward(ctx, grad_s):
        (h_minus_vth,) = ctx.saved_tensors
        return grad_s * atan_surrogate(h_minus_vth, ctx.alpha), None


class _CubaLIFSequence(torch.autograd.Function):
    """Multi-step float CUBA LIF with a hand-written backward pass (no per-step autograd graph).

    Inputs: ``x [T, ...]``, ``bias`` broadcastable to ``x[0]`` (or a 0-dim zero), scalar tensors
    ``du`` and ``dv``. Outputs ``s [T, ...]`` and the pre-reset membrane ``h [T, ...]`` (no grad).

    Forward: ``u + bias`` is formed for all steps at once into the ``h`` buffer, then each step is
    three ops into preallocated buffers (spike test, reset, leak-add into ``h[t]``): no per-step
    allocation, and only ``h`` is saved (plus ``u`` when ``du`` is learned). Backward: the
    surrogate term ``dL/ds * atan'(h - vth)`` is computed for all steps at once into the gradient
    buffer, and the reverse recurrence updates that buffer in place, step by step. Every value is
    computed with the same floating-point operations, in the same order, as the plain per-step
    loop, so results are bit-for-bit those of the straightforward implementation.
    """

    @staticmethod
    def forward(ctx, x, bias, du, dv, vth: float, alpha: float, soft: bool):
        current_free = bool(du == 1.0)  # the one host read
        keep_u = du.requires_grad and not current_free
        leak_u, leak_v = 1.0 - du, 1.0 - dv  # 0-dim tensors: no host read
        T = x.shape[0]
        step_shape = x.shape[1:]
        new = dict(dtype=x.dtype, device=x.device)
        hs = torch.empty(x.shape, **new)
        us = None
        if current_free:
            torch.add(x, bias, out=hs)  # u[t] + bias for every t; v enters below
        else:
            us = torch.empty(x.shape, **new)
            us.copy_(x)
            for t in range(1, T):
                us[t].addcmul_(us[t - 1], leak_u)  # u[t] = x[t] + u[t-1] * (1 - du)
            torch.add(us, bias, out=hs)
            if not keep_u:
                us = None
        if T > 1:
            spiked = torch.empty(step_shape, dtype=torch.bool, device=x.device)
            v = torch.empty(step_shape, **new)
            zero = torch.zeros((), **new)
            for t in range(1, T):
                prev = hs[t - 1]
                torch.gt(prev, vth, out=spiked)
                if soft:
                    torch.sub(prev, spiked * vth, out=v)  # v = h - vth * s
                else:
                    torch.where(spiked, zero, prev, out=v)  # v = 0 where s else h
                hs[t].addcmul_(v, leak_v)  # h[t] = (u[t] + bias) + v[t-1] * (1 - dv)
            del spiked, v
        s = torch.gt(hs, vth, out=torch.empty(x.shape, **new))  # 0/1 in x's dtype, one pass
        ctx.save_for_backward(hs, us, leak_u, leak_v)
        ctx.vth, ctx.alpha, ctx.soft, ctx.current_free = vth, alpha, soft, current_free
        ctx.bias_shape = bias.shape
        ctx.mark_non_differentiable(hs)
        ctx.set_materialize_grads(False)  # h has no gradient: no zero-filled dL/dh in backward
        return s, hs

    @staticmethod
    def backward(ctx, grad_s, _grad_h):
        hs, us, leak_u, leak_v = ctx.saved_tensors
        vth, alpha, soft = ctx.vth, ctx.alpha, ctx.soft
        need_x, need_bias, need_du, need_dv = ctx.needs_input_grad[:4]
        T = hs.shape[0]
        new = dict(dtype=hs.dtype, device=hs.device)
        # g = grad_s * atan_surrogate(h - vth) for all steps (atan_surrogate's operations, in place).
        if grad_s is None:  # s unused downstream (grads are not materialized)
            grad_s = torch.zeros_like(hs)
        g = torch.sub(hs, vth).mul_(math.pi / 2 * alpha)
        g.mul_(g).add_(1).reciprocal_().mul_(alpha / 2)
        torch.mul(grad_s, g, out=g)
        # Reverse recurrence, in place: g[t] += dL/dv[t] * [no spike at t], dL/dv[t] = g[t+1] * (1 - dv).
        # (The reset path is detached.) g[t] becomes dL/dh[t].
        keep = None if soft else torch.le(hs[:-1], vth, out=torch.empty(hs[:-1].shape, **new))  # 0/1
        buf = torch.empty(hs.shape[1:], **new) if T > 1 else None
        grad_h_total = g[T - 1].clone() if need_bias else None
        grad_dv = torch.zeros((), **new) if need_dv else None
        for t in range(T - 2, -1, -1):
            if need_dv:  # step t + 1 leaked v[t]
                prev = hs[t]
                v_prev = prev - vth * (prev > vth) if soft else prev * keep[t]
                grad_dv -= (g[t + 1] * v_prev).sum()
            torch.mul(g[t + 1], leak_v, out=buf)
            if soft:
                g[t].add_(buf)
            else:
                g[t].addcmul_(buf, keep[t])
            if need_bias:
                grad_h_total += g[t]
        grad_bias = _sum_to_shape(grad_h_total, ctx.bias_shape) if need_bias else None
        grad_du = torch.zeros((), **new) if need_du else None
        if not ctx.current_free:
            # dL/du[t] = dL/dh[t] + dL/du[t+1] * (1 - du), in place (dL/dx[t] = dL/du[t]).
            for t in range(T - 2, -1, -1):
                if need_du:  # step t + 1 leaked u[t]
                    grad_du -= (g[t + 1] * us[t]).sum()
                torch.mul(g[t + 1], leak_u, out=buf)
                g[t].add_(buf)
        return (g if need_x else None), grad_bias, grad_du, grad_dv, None, None, None


def _sum_to_shape(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient back to ``shape``."""
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    for i, n in enumerate(shape):
        if n == 1 and grad.shape[i] != 1:
            grad = grad.sum(i, keepdim=True)
    return grad


def cuba_lif_sequence(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    du: torch.Tensor,
    dv: torch.Tensor,
    vth: float,
    *,
    alpha: float = 2.0,
    soft_reset: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the float CUBA LIF over ``x [T, B, C, ...]`` from zero state.

    ``bias``: ``[C]`` (broadcast over batch and space) or ``None``. Returns ``(s, h)``: spikes
    (0/1, same dtype as ``x``) and the pre-reset membrane ``h`` (no gradient), both ``[T, ...]``.
    """
    if bias is None:
        bias_b = torch.zeros((), dtype=x.dtype, device=x.device)
    else:
        bias_b = bias.reshape((bias.shape[0],) + (1,) * (x.dim() - 3)) if x.dim() > 3 else bias
    return _CubaLIFSequence.apply(x, bias_b, du, dv, float(vth), float(alpha), bool(soft_reset))


def cuba_lif_step(
    x: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor],
    du: float | torch.Tensor,
    dv: float | torch.Tensor,
    vth: float,
    *,
    soft_reset: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One timestep of the float CUBA LIF from an explicit state (forward only, ONNX-traceable).

    The functional core of the stateful neuron (one step of :func:`cuba_lif_sequence`)::

        u_new = u * (1 - du) + x                  (u_new = x when du is the Python float 1.0)
        h     = (u_new + bias) + v * (1 - dv)     pre-reset membrane
        s     = h > vth                           strict, 0/1 in x's dtype
        v_new = 0 where s else h                  hard reset (u is not reset)
        v_new = h - vth * s                       soft reset

    Shapes: ``x``, ``u``, ``v`` are one step, ``[B, C, H, W]`` (or ``[B, N]``; any shape with the
    batch first and the channel second); ``bias`` is ``[C]`` broadcast over batch and space (as in
    :func:`cuba_lif_sequence`), or ``None``. ``du``, ``dv``: Python floats or 0-dim tensors; ``vth``
    a float. Returns ``(s, u_new, v_new)``, each of ``x``'s shape; the pre-reset membrane is
    ``v_new`` where ``s == 0`` (and ``v_new + vth`` where ``s == 1`` with the soft reset).

    No Python branching on tensor values (comparisons and :func:`torch.where` only), so it traces
    into ONNX; the one branch is on ``du == 1`` given as a Python float (then ``u`` is ignored and
    ``u_new`` is ``x``). A tensor ``du == 1`` gives the same values (``x + u * 0 == x`` for finite ``u``).
    The operations (``addcmul`` for the leaks included) are those of :func:`cuba_lif_sequence` in
    the same order, so stepping this ``T`` times from zeros reproduces it (bit for bit on CPU).
    No surrogate gradient: use :func:`cuba_lif_sequence` (or :class:`CubaLIF`) to train.
    """

    def leak(d: float | torch.Tensor) -> torch.Tensor:
        if isinstance(d, torch.Tensor):
            return (1 - d).to(x.dtype)
        return x.new_full((), 1.0 - float(d))  # a constant when traced

    if isinstance(du, (int, float)) and float(du) == 1.0:
        u_new = x
    else:
        u_new = torch.addcmul(x, u, leak(du))  # x + u * (1 - du)
    if bias is None:
        base = u_new
    else:
        base = u_new + (bias.reshape((-1,) + (1,) * (x.dim() - 2)) if x.dim() > 2 else bias)
    h = torch.addcmul(base, v, leak(dv))  # (u_new + bias) + v * (1 - dv)
    spiked = h > vth
    s = spiked.to(x.dtype)
    if soft_reset:
        v_new = h - s * vth
    else:
        v_new = torch.where(spiked, 0.0, h)
    return s, u_new, v_new


@dataclass(frozen=True)
class NeuronSpec:
    """Per-layer neuron hyperparameters (JSON-able through :mod:`xoresnet.config`)."""

    du: float = 1.0
    dv: float = 0.5
    vth: float = 1.0
    reset: str = "hard"  # "hard" | "soft" (soft trains, but Loihi cannot run it: export refuses)
    surrogate_alpha: float = 2.0
    learn_decay: bool = False


class NeuronQuant(Protocol):
    """The integer forward of one neuron population that quantization-aware training attaches as
    :attr:`CubaLIF.quant` (:class:`calibration.qat.QuantNeuron`)."""

    def neuron_forward(self, module: "CubaLIF", current: Current) -> tuple[torch.Tensor, torch.Tensor]:
        """``(spikes, membrane)`` of ``module`` for ``current``, each ``[T, B, C, H, W]``, in Loihi fixed
        point (the membrane in float units, for the surrogate gradient)."""


class CubaLIF(nn.Module):
    """Multi-step CUBA LIF population; input a :class:`Current`, output spikes ``[T, B, ...]``.

    ``du``/``dv`` are buffers (or parameters with ``learn_decay``), always read through the Loihi
    grid. ``quant``: a :class:`NeuronQuant`, set by quantization-aware training to run Loihi fixed point
    instead.
    ``observer``: optional callable ``(module, spikes, membrane)`` for statistics.
    """

    def __init__(self, spec: NeuronSpec, name: str = ""):
        super().__init__()
        self.spec = spec
        self.name = name
        du = torch.tensor(float(spec.du))
        dv = torch.tensor(float(spec.dv))
        if spec.learn_decay:
            self.du, self.dv = nn.Parameter(du), nn.Parameter(dv)
        else:
            self.register_buffer("du", du)
            self.register_buffer("dv", dv)
        self.quant: Optional[NeuronQuant] = None
        self.observer: Optional[Callable] = None

    @property
    def vth(self) -> float:
        return self.spec.vth

    def decays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(du, dv) on the Loihi grid (straight-through when learned)."""
        return snap_to_decay_grid(self.du, offset=1), snap_to_decay_grid(self.dv, offset=0)

    def forward(self, current: Current) -> torch.Tensor:
        if self.quant is not None:
            s, h = self.quant.neuron_forward(self, current)
        else:
            du, dv = self.decays()
            s, h = cuba_lif_sequence(
                current.x, current.bias, du.to(current.x.dtype), dv.to(current.x.dtype), self.spec.vth,
                alpha=self.spec.surrogate_alpha, soft_reset=self.spec.reset == "soft",
            )
        if self.observer is not None:
            self.observer(self, s, h)
        return s

    def extra_repr(self) -> str:
        return f"du={float(self.du):.6g}, dv={float(self.dv):.6g}, vth={self.spec.vth}, reset={self.spec.reset}"
