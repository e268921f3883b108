"""Synapses (conv + batch norm) and the XOR residual block, multi-step over ``[T, B, C, H, W]``.

See ``xoresnet-block.md``. Backbone of a BasicBlock: conv3x3 (stride) -> SN -> conv3x3; of a
Bottleneck: conv1x1 -> SN -> conv3x3 (stride) -> SN -> conv1x1 (x4 channels). The block output::

    M = S XOR P                 (selection 'prev_input', where P, the previous block's input, fits)
    A = SN(U_A),  U_A = BN(conv(... backbone(M) ...))
    O = A OR S                  (identity shortcut; merge 'or' | 'xor' | 'add' | 'iand')
    O = SN(U_A + U_S)           (non-identity; U_S = BN(conv1x1_stride(S)), shortcut 'add_current')
    O = SN(U_A + S)             (merge 'add_current': the shortcut spikes as a current, Spiking ResNet)
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .config import BlockSpec, check_block
from .neuron import CubaLIF, Current, NeuronSpec
from .spike_logic import SPIKE_OPS, spike_xor
from .stats import block_counts


class SynapseQuant(Protocol):
    """The integer forward of a synapse that quantization-aware training attaches as ``quant``
    (:class:`calibration.qat.QuantSynapse`, :class:`calibration.qat.QuantSpikeCurrent`)."""

    def synapse_forward(self, module: "ConvBN", s: torch.Tensor) -> Current:
        """The integer current of ``module`` (integer weights, integer bias) for spikes ``s [T, B, C, H, W]``."""

    def spike_current_forward(self, module: "SpikeCurrent", s: torch.Tensor) -> Current:
        """The integer current of an identity spike synapse (weight ``w << exp``)."""


class ConvBN(nn.Module):
    """A synapse: conv2d (no bias) followed by batch norm, split into a :class:`Current`.

    Input ``[T, B, C_in, H, W]`` (spikes, or the analog image for the stem); output
    ``Current(x = conv(s) * gamma / sigma, bias = beta - gamma * mu / sigma)``: batch norm's
    scale multiplies the synaptic current and its shift becomes the target neuron's bias (added
    to ``v`` every step, as Loihi's ``bias_mant``), so the deployed neuron computes exactly this.
    Training uses batch statistics over ``T * B * H * W`` (and updates the running ones).

    ``quant``: a :class:`SynapseQuant`, set by quantization-aware training (integer weights, integer current).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *, zero_init: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if zero_init:
            nn.init.zeros_(self.bn.weight)
        self.quant: Optional[SynapseQuant] = None

    def bn_affine(self, z: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(scale, shift)`` of batch norm: batch statistics of ``z`` when training."""
        bn = self.bn
        if self.training and z is not None:
            mean = z.mean(dim=(0, 2, 3))
            var = z.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                n = z.numel() / z.shape[1]
                bn.num_batches_tracked += 1
                bn.running_mean.lerp_(mean.detach(), bn.momentum)
                bn.running_var.lerp_(var.detach() * n / max(n - 1, 1), bn.momentum)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = bn.weight / torch.sqrt(var + bn.eps)
        return scale, bn.bias - mean * scale

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch norm folded with running statistics: ``(weight [C_out, C_in, k, k], bias [C_out])``."""
        scale, shift = self.bn_affine()
        return self.conv.weight * scale.view(-1, 1, 1, 1), shift

    def forward(self, s: torch.Tensor) -> Current:
        if self.quant is not None:
            return self.quant.synapse_forward(self, s)
        T, B = s.shape[:2]
        z = self.conv(s.flatten(0, 1))
        scale, shift = self.bn_affine(z)
        return Current((z * scale.view(1, -1, 1, 1)).unflatten(0, (T, B)), shift)


class SpikeCurrent(nn.Module):
    """A synapse carrying spikes as a current of weight 1 (Spiking ResNet's identity shortcut).

    ``quant``: a :class:`SynapseQuant`, set by quantization-aware training (the weight becomes ``w << exp``).
    """

    def __init__(self):
        super().__init__()
        self.quant: Optional[SynapseQuant] = None

    def forward(self, s: torch.Tensor) -> Current:
        if self.quant is not None:
            return self.quant.spike_current_forward(self, s)
        return Current(s)


class XORResidualBlock(nn.Module):
    """One XOR residual block (BasicBlock or Bottleneck) with every switch of :class:`BlockSpec`.

    ``use_prev``: this block selects against the previous block's input ``P`` (decided by the
    network: previous block in the same stage with an input of this block's input shape).
    Switches the reference leaves undefined for ``kind`` raise :class:`~xoresnet.errors.ConfigError`.
    """

    def __init__(
        self, kind: str, cin: int, planes: int, stride: int, spec: BlockSpec, neuron: NeuronSpec, *, use_prev: bool
    ):
        super().__init__()
        check_block(kind, spec, "XORResidualBlock")
        expansion = 4 if kind == "bottleneck" else 1
        cout = planes * expansion
        self.kind, self.spec = kind, spec
        self.identity = stride == 1 and cin == cout
        self.use_prev = use_prev and spec.selection == "prev_input"
        if kind == "basic":
            shapes = [(cin, planes, 3, stride), (planes, cout, 3, 1)]
        else:
            shapes = [(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, cout, 1, 1)]
        # 'mid' needs the first backbone layer's spikes to have S's shape: identity BasicBlocks
        # (check_block refuses it for Bottlenecks, whose first layer is 4x narrower than S).
        self.use_mid = spec.selection == "mid" and self.identity
        last = len(shapes) - 1
        self.convs = nn.ModuleList(
            ConvBN(ci, co, k, st, zero_init=self.identity and i == last) for i, (ci, co, k, st) in enumerate(shapes)
        )
        self.neurons = nn.ModuleList(CubaLIF(neuron) for _ in shapes)
        self.shortcut: Optional[ConvBN] = None
        self.shortcut_neuron: Optional[CubaLIF] = None
        self.shortcut_current: Optional[SpikeCurrent] = SpikeCurrent() if spec.merge == "add_current" else None
        if not self.identity:
            self.shortcut = ConvBN(cin, cout, 1, stride)
            if spec.shortcut == "spike":
                self.shortcut_neuron = CubaLIF(neuron)
        self.recorder = None
        self.name = ""

    @property
    def merges_currents(self) -> bool:
        """True when the block output is one neuron fed by both branches' currents (no spike gate)."""
        return (not self.identity and self.spec.shortcut == "add_current") or self.spec.merge == "add_current"

    def forward(self, S: torch.Tensor, P: Optional[torch.Tensor] = None) -> torch.Tensor:
        M = spike_xor(S, P) if self.use_prev and P is not None else S
        h = M
        for i, (cb, sn) in enumerate(zip(self.convs[:-1], self.neurons[:-1])):
            h = sn(cb(h))
            if i == 0 and self.use_mid:
                h = spike_xor(h, S)
        u_a = self.convs[-1](h)
        last = self.neurons[-1]
        if self.identity:
            shortcut = S
        else:
            u_s = self.shortcut(S)
            if self.spec.shortcut == "add_current":
                shortcut = None
            else:
                shortcut = self.shortcut_neuron(u_s)
        A = None
        if shortcut is None:
            O = last(u_a + u_s)
        elif self.spec.merge == "add_current":
            O = last(u_a + self.shortcut_current(shortcut))
        else:
            A = last(u_a)
            O = SPIKE_OPS[self.spec.merge](A, shortcut)
        if self.recorder is not None:
            with torch.no_grad():
                self.recorder.observe_block(
                    self.name,
                    block_counts(
                        block_input=S, shortcut=shortcut, output=O, backbone=A,
                        prev_input=P if self.use_prev else None,
                    ),
                )
        return O


def or_pool2x2(s: torch.Tensor) -> torch.Tensor:
    """2x2 stride-2 OR pooling of binary spikes ``[T, B, C, H, W]`` (= max pooling on {0, 1})."""
    T, B = s.shape[:2]
    return F.max_pool2d(s.flatten(0, 1), 2).unflatten(0, (T, B))
