"""Quantization-aware training: train through the exact Loihi integer forward.

:func:`enable_qat` attaches, for a fixed :class:`~calibration.quantize.QuantSpec`, integer
versions of every synapse, neuron and the readout to an :class:`~xoresnet.network.XOResNet`.
The forward pass then computes *exactly* what :mod:`calibration.reference` computes (zero-delay
timing) on the integer graph that ``calibrate_nir(export_nir(model), spec=spec)`` produces:

* weights: batch norm folded as the NIR export folds it (float32), times the population's scale
  in float64, rounded by the calibration quantizer (even integers for mixed-sign matrices);
* neuron: :func:`calibration.fixed_point.lif_step` on int64 (round-toward-zero decays, the
  ``du + 1`` offset, u wrap, v saturation, strict threshold), bias as ``mant << exp``;
* readout: the calibration's 8-bit readout weights and integer bias.

Gradients are straight-through: every rounded value is ``exact.detach() + (x - x.detach())`` with
``x`` its float counterpart, so the value is the integer one and the gradient the float one; the
spike uses the ATan surrogate in float units (``(h - vth << 6) / (64 * scale)``). Batch norm is
frozen to its running statistics (it is folded on Loihi).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from xoresnet.blocks import ConvBN, XORResidualBlock
from xoresnet.network import XOResNet
from xoresnet.neuron import CubaLIF, Current, SpikeFn
from xoresnet.nir.export import export_nir

from . import fixed_point as fx
from .float_graph import global_pool_readout
from .quantize import QuantSpec, calibrate_nir, quantize_bias, quantize_weight, readout_scale, round_weight


def _ste(exact: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Value of ``exact``, gradient of ``approx``."""
    return exact.detach().to(approx.dtype) + (approx - approx.detach())


@dataclass
class QuantNeuron:
    """Integer version of one neuron population (attached as ``CubaLIF.quant``)."""

    vth_mant: int

    def scale(self, module: CubaLIF) -> float:
        """a-units per float unit; vth as the NIR file stores it (float32), as calibration reads it."""
        return self.vth_mant / float(np.float32(module.vth))

    def bias_float(self, module: CubaLIF, bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The neuron bias as the NIR export + calibration see it (float64, per channel)."""
        if bias is None:
            return None
        du, dv = (float(d) for d in module.decays())
        if du == 1.0:
            return bias.double()  # exported in the conv biases (each float32 already), summed in float64
        # CubaLIF: exported as v_leak = float32(bias / dv), read back as dv * v_leak
        v_leak = (bias.double() / dv).float().double()
        return dv * v_leak + (bias.double() - bias.double().detach())

    def neuron_forward(self, module: CubaLIF, current: Current) -> tuple[torch.Tensor, torch.Tensor]:
        a = current.x  # integer-valued a-units (float dtype, straight-through weights)
        s_scale = self.scale(module)
        du, dv = fx.decay_codes(*(float(d) for d in module.decays()))
        shape = a.shape[2:]
        bias = self.bias_float(module, current.bias)
        if bias is None:
            bias_v = torch.zeros((), dtype=torch.float64, device=a.device)
            bias_i = torch.zeros((), dtype=torch.int64, device=a.device)
        else:
            per_elem = bias.view((-1,) + (1,) * (len(shape) - 1)).expand(shape)
            scaled = per_elem * s_scale * 64
            mant, exp = quantize_bias(scaled.detach(), what=f"population {module.name}")
            bias_i = fx.bias_value(mant.long(), exp.long())
            bias_v = _ste(bias_i.double(), scaled)
        vth_v = float(self.vth_mant << fx.ACT_SHIFT)
        keep_u, keep_v = 1 - (du + 1) / fx.DECAY_UNITY, 1 - dv / fx.DECAY_UNITY
        u_i = torch.zeros(a.shape[1:], dtype=torch.int64, device=a.device)
        v_i = torch.zeros_like(u_i)
        u = torch.zeros(a.shape[1:], dtype=torch.float64, device=a.device)
        v = torch.zeros_like(u)
        spikes, membranes = [], []
        alpha = module.spec.surrogate_alpha
        for t in range(a.shape[0]):
            a_t = a[t].double()
            u_i, h_i, s_i, v_i = fx.lif_step(u_i, v_i, torch.round(a_t.detach()).long(), du=du, dv=dv, bias=bias_i,
                                             vth=self.vth_mant)
            u = _ste(u_i, u * keep_u + a_t * 64)
            h = _ste(h_i, v * keep_v + u + bias_v)
            s = SpikeFn.apply((h - vth_v) / (64 * s_scale), alpha)
            v = h * (1 - s.detach())
            spikes.append(s)
            membranes.append(h.detach() / (64 * s_scale))
        dtype = a.dtype
        return torch.stack(spikes).to(dtype), torch.stack(membranes).to(dtype)


@dataclass
class QuantSynapse:
    """Integer version of a conv + batch norm synapse into a population of scale ``scale``."""

    scale: float
    graded_levels: Optional[int] = None  # the stem: input pixels as 8-bit graded spikes

    def integer_weight(self, cb: ConvBN) -> torch.Tensor:
        """Straight-through integer weights, exactly as calibration quantizes the exported NIR weights."""
        weight, _ = cb.folded()  # float32, as exported
        w = weight.double()
        if self.graded_levels is not None:
            w = w / self.graded_levels
        w_scaled = w * self.scale
        q = round_weight(w_scaled.detach(), fx.sign_mode(w_scaled.detach()))
        return _ste(q, w_scaled)

    def synapse_forward(self, cb: ConvBN, s: torch.Tensor) -> Current:
        _, shift = cb.folded()
        x = s
        if self.graded_levels is not None:
            x = torch.round(s * self.graded_levels)  # the pixel integers the input carries
        T, B = x.shape[:2]
        w = self.integer_weight(cb)
        c = cb.conv
        y = torch.nn.functional.conv2d(x.flatten(0, 1).double(), w, stride=c.stride, padding=c.padding)
        # the bias stays float64: calibration sums the exported (float32) conv biases in float64
        return Current(y.unflatten(0, (T, B)).to(s.dtype), shift.double())


@dataclass
class QuantSpikeCurrent:
    """Integer weight of a spike-as-current synapse (weight 1 times the target's scale, ``w << exp``)."""

    scale: float

    def spike_current_forward(self, module, s: torch.Tensor) -> Current:
        w, exp = quantize_weight(torch.full((1,), self.scale, dtype=torch.float64), allow_exp=True,
                                 what="spike-current synapse")
        return Current(s * float(int(w.item()) << exp))


@dataclass
class QuantReadout:
    """The 8-bit readout (global pool + linear folded into one dense matrix) with its integer bias."""

    def readout_forward(self, model: XOResNet, features: torch.Tensor) -> torch.Tensor:
        """Per-timestep logits ``[T, B, K]`` in float units (integer logits / readout scale)."""
        T, B, C, H, W = features.shape
        weight = global_pool_readout(model.head.weight.double(), (H, W))  # [K, C*H*W]
        scale = readout_scale(weight.detach())
        w_scaled = weight * scale
        q = _ste(round_weight(w_scaled.detach(), fx.sign_mode(w_scaled.detach())), w_scaled)
        b_scaled = model.head.bias.double() * scale
        b = _ste(torch.round(b_scaled.detach()), b_scaled)
        logits = features.flatten(2).double() @ q.T + b
        return (logits / scale).to(features.dtype)


def synapse_targets(model: XOResNet) -> dict[str, tuple[ConvBN, CubaLIF]]:
    """Every conv + BN synapse with the neuron population it feeds."""
    out = {"stem.cb": (model.stem.cb, model.stem.sn)}
    for stage in model.stages():
        for blk in stage:
            blk: XORResidualBlock
            for i, cb in enumerate(blk.convs):
                out[f"{blk.name}.convs.{i}"] = (cb, blk.neurons[i])
            if blk.shortcut is not None:
                target = blk.shortcut_neuron if blk.shortcut_neuron is not None else blk.neurons[-1]
                out[f"{blk.name}.shortcut"] = (blk.shortcut, target)
    return out


def enable_qat(model: XOResNet, spec: QuantSpec) -> XOResNet:
    """Switch ``model`` to the integer forward of ``spec`` (in place; returns the model)."""
    neurons = model.neurons()
    missing = sorted(set(neurons) - set(spec.vth_mant))
    if missing:
        raise ValueError(f"the quantization spec has no threshold for {missing[0]}")
    for name, module in neurons.items():
        module.quant = QuantNeuron(spec.vth_mant[name])
    levels = model.config.input_levels
    for name, (cb, neuron) in synapse_targets(model).items():
        cb.quant = QuantSynapse(neuron.quant.scale(neuron), graded_levels=levels if cb is model.stem.cb else None)
    for stage in model.stages():
        for blk in stage:
            if blk.shortcut_current is not None:
                blk.shortcut_current.quant = QuantSpikeCurrent(blk.neurons[-1].quant.scale(blk.neurons[-1]))
    model.quant = QuantReadout()
    return model


def disable_qat(model: XOResNet) -> XOResNet:
    for m in model.modules():
        if hasattr(m, "quant"):
            m.quant = None
    return model


@torch.no_grad()
def project_to_ranges(model: XOResNet) -> None:
    """Clamp conv weights so their integers stay inside Loihi's ranges at the fixed scales.

    Called after each optimiser step: the export then finds exactly the weights QAT used.
    """
    for cb, neuron in synapse_targets(model).values():
        q: QuantSynapse = cb.quant
        scale_c, _ = cb.bn_affine()
        factor = (scale_c.double() * q.scale / (q.graded_levels or 1)).view(-1, 1, 1, 1)
        w = cb.conv.weight.double()
        lo, hi = fx.weight_range(fx.sign_mode(w * factor))
        bound_hi = torch.where(factor > 0, (hi + 0.5) / factor, (lo - 0.5) / factor) * (1 - 1e-9)
        bound_lo = torch.where(factor > 0, (lo - 0.5) / factor, (hi + 0.5) / factor) * (1 - 1e-9)
        # a channel whose batch-norm scale is 0 (zero-init) maps every weight to integer 0: no bound
        clamped = torch.where(factor == 0, w, torch.minimum(torch.maximum(w, bound_lo), bound_hi))
        cb.conv.weight.copy_(clamped.to(cb.conv.weight.dtype))


class Loihi2QAT:
    """Loihi 2's quantization-aware training (:class:`xoresnet.training.QuantizationAwareTraining`): the
    calibration of :func:`~calibration.quantize.calibrate_nir` fixes the scales, :func:`enable_qat` attaches the
    exact integer forward, :func:`project_to_ranges` keeps the weights inside Loihi's ranges."""

    def calibrate(self, model: XOResNet, pixels: torch.Tensor) -> dict:
        calibration = calibrate_nir(export_nir(model), pixels)
        enable_qat(model, calibration.spec)
        return calibration.spec.to_dict()

    def attach(self, model: XOResNet, spec: dict) -> None:
        enable_qat(model, QuantSpec.from_dict(spec))

    def project(self, model: XOResNet) -> None:
        project_to_ranges(model)


#: The hooks ``xoresnet-train --qat`` passes to :func:`xoresnet.training.train`.
LOIHI2_QAT = Loihi2QAT()
