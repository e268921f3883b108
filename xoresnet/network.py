"""XOResNet: stem, stages of XOR residual blocks, and a rate-coded linear head.

Input ``x``: ``[B, C, H, W]``, values ``pixel / input_levels`` in [0, 1]. Direct encoding: the
analog image feeds the stem conv at every one of ``T`` timesteps (computed once and repeated,
since it does not change). Head: global average pool over space -> linear -> logits averaged
over ``T``. Module paths (``stem.cb``, ``layer2.0.neurons.1``, ...) name the NIR nodes, the
integer-graph populations and every report row.
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch
from torch import nn

from .blocks import ConvBN, XORResidualBlock, or_pool2x2
from .config import NetworkConfig
from .neuron import CubaLIF, Current


class Stem(nn.Module):
    """conv3x3 (stride 1, or stride 2 followed by 2x2 OR pooling of the spikes) -> BN -> SN."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.or_pool = config.stem == "conv_s2_orpool"
        self.cb = ConvBN(config.in_channels, config.stem_width(), 3, 2 if self.or_pool else 1)
        self.sn = CubaLIF(config.neuron)

    def forward(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        current = self.cb(x.unsqueeze(0))  # the analog input is constant over time: convolve once
        s = self.sn(Current(current.x.expand(timesteps, *current.x.shape[1:]), current.bias))
        return or_pool2x2(s) if self.or_pool else s


class ReadoutQuant(Protocol):
    """The integer readout that quantization-aware training attaches as :attr:`XOResNet.quant`
    (:class:`calibration.qat.QuantReadout`)."""

    def readout_forward(self, model: "XOResNet", features: torch.Tensor) -> torch.Tensor:
        """Per-timestep logits ``[T, B, K]`` of the 8-bit readout weights and integer bias, for the last
        block's spikes ``features [T, B, C, H, W]``."""


class XOResNet(nn.Module):
    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.stem = Stem(config)
        cin = config.stem_width()
        expansion = config.expansion
        self.stage_names: list[str] = []
        for i, (n_blocks, planes) in enumerate(zip(config.blocks_per_stage, config.stage_widths())):
            blocks = nn.ModuleList()
            prev_identity_shape = False  # block j selects against P iff block j-1 kept its input shape
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                block = XORResidualBlock(
                    config.block_type, cin, planes, stride, config.block, config.neuron,
                    use_prev=j > 0 and prev_identity_shape,
                )
                blocks.append(block)
                prev_identity_shape = block.identity
                cin = planes * expansion
            name = f"layer{i + 1}"
            self.add_module(name, blocks)
            self.stage_names.append(name)
        self.head = nn.Linear(cin, config.num_classes)
        self.recorder = None
        self.quant: Optional[ReadoutQuant] = None  # set by quantization-aware training
        for name, module in self.named_modules():
            if isinstance(module, (CubaLIF, XORResidualBlock)):
                module.name = name

    def stages(self) -> list[nn.ModuleList]:
        return [getattr(self, n) for n in self.stage_names]

    def features(self, x: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        """Spikes (or SEW-ADD spike counts) of the last block, ``[T, B, C, H, W]``."""
        S = self.stem(x, timesteps or self.config.timesteps)
        for blocks in self.stages():
            P = None
            for block in blocks:
                S, P = block(S, P), S
        return S

    def forward_timesteps(self, x: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        """Per-timestep logits ``[T, B, num_classes]``."""
        if self.recorder is not None:
            self.recorder.samples += x.shape[0]
        features = self.features(x, timesteps)
        if self.quant is not None:
            return self.quant.readout_forward(self, features)
        return self.head(features.mean(dim=(3, 4)))

    def forward(self, x: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        """Logits ``[B, num_classes]``: the head's output averaged over time."""
        return self.forward_timesteps(x, timesteps).mean(0)

    def neurons(self) -> dict[str, CubaLIF]:
        return {n: m for n, m in self.named_modules() if isinstance(m, CubaLIF)}

    def synapses(self) -> dict[str, ConvBN]:
        return {n: m for n, m in self.named_modules() if isinstance(m, ConvBN)}


def build_network(config: NetworkConfig) -> XOResNet:
    return XOResNet(config)


def weight_layer_count(model: XOResNet) -> int:
    """Layers in the ResNet-N sense: stem conv + backbone convs + the linear head (no shortcuts)."""
    backbone = sum(len(b.convs) for blocks in model.stages() for b in blocks)
    return 1 + backbone + 1
