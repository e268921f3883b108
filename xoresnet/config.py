"""A network is fully described by a JSON-able :class:`NetworkConfig`.

The block switches follow ``xoresnet-block.md`` (our reconstruction of Wu & Wang, arXiv
2605.30362, from its abstract): defaults are the XOR residual block; the other values give the
ablations and the SEW-ResNet / Spiking-ResNet baselines as configurations of the same block.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .neuron import NeuronSpec, on_decay_grid

BLOCK_TYPES = ("basic", "bottleneck")
SELECTIONS = ("prev_input", "mid", "none")
MERGES = ("or", "xor", "add", "iand", "add_current")
SHORTCUTS = ("add_current", "spike")
STEMS = ("conv", "conv_s2_orpool")
BOTTLENECK_EXPANSION = 4


@dataclass(frozen=True)
class BlockSpec:
    """The switches of the XOR residual block.

    ``selection``: input of the backbone. ``prev_input`` (default): ``M_l = S_l XOR S_{l-1}``
    where the previous block is in the same stage with an input of the same shape, else
    ``M_l = S_l``; ``mid``: XOR of the first backbone layer's spikes with ``S_l`` before the second
    conv, where their shapes match (stride-1 BasicBlocks); ``none``: ``M_l = S_l``.
    ``merge``: how the backbone meets the shortcut. ``or`` (default), ``xor``, ``add`` (SEW-ADD,
    spike counts), ``iand`` (SEW-IAND, ``NOT A AND S``) merge spikes; ``add_current`` adds the
    shortcut's spikes as a current (weight 1) into the backbone's last neuron (Spiking ResNet).
    ``shortcut``: the non-identity shortcut. ``add_current`` (default): ``O = SN(U_A + U_S)``
    with ``U_S = BN(conv1x1(S))``; ``spike``: ``SN(BN(conv1x1(S)))`` merged with ``merge``.
    """

    selection: str = "prev_input"
    merge: str = "or"
    shortcut: str = "add_current"


BLOCK_PRESETS: dict[str, BlockSpec] = {
    "xor-or": BlockSpec(),
    "xor-xor": BlockSpec(merge="xor"),
    "or-only": BlockSpec(selection="none"),
    "sew-add": BlockSpec(selection="none", merge="add", shortcut="spike"),
    "sew-iand": BlockSpec(selection="none", merge="iand", shortcut="spike"),
    "spiking-resnet": BlockSpec(selection="none", merge="add_current", shortcut="add_current"),
}

ARCH_PRESETS: dict[str, dict[str, Any]] = {
    "xoresnet18": dict(block_type="basic", blocks_per_stage=[2, 2, 2, 2]),
    "xoresnet34": dict(block_type="basic", blocks_per_stage=[3, 4, 6, 3]),
    "xoresnet50": dict(block_type="bottleneck", blocks_per_stage=[3, 4, 6, 3]),
    "xoresnet101": dict(block_type="bottleneck", blocks_per_stage=[3, 4, 23, 3]),
    # The small variant for 8x8 inputs (scikit-learn digits): same blocks, two stages, width 1/4.
    "xoresnet-digits": dict(block_type="basic", blocks_per_stage=[2, 2], width_factor=0.25),
}


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture, input, neuron and block switches of one XOResNet.

    ``input_levels``: the input image is integer pixel values ``0..input_levels`` (255 for 8-bit
    images, 16 for scikit-learn digits); the model sees ``pixel / input_levels`` and Loihi gets
    the pixel itself as an 8-bit graded spike. ``stem``: ``conv`` (conv3x3 stride 1, for inputs
    up to 64 px) or ``conv_s2_orpool`` (conv3x3 stride 2, then 2x2 OR pooling of the spikes,
    i.e. spike max-pooling, for 84x84 miniImageNet); ``None`` picks by ``input_size``.
    """

    arch: str = "xoresnet18"
    block_type: str = "basic"
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2)
    base_width: int = 64
    width_factor: float = 1.0
    input_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    timesteps: int = 4
    input_levels: int = 255
    stem: str | None = None
    neuron: NeuronSpec = field(default_factory=NeuronSpec)
    block: BlockSpec = field(default_factory=BlockSpec)

    def __post_init__(self):
        object.__setattr__(self, "blocks_per_stage", tuple(int(b) for b in self.blocks_per_stage))
        if self.stem is None:
            object.__setattr__(self, "stem", "conv_s2_orpool" if self.input_size > 64 else "conv")
        self.validate()

    # ----------------------------------------------------------------- derived quantities
    def stage_widths(self) -> list[int]:
        """Planes per stage: ``base_width * 2**i * width_factor``, at least 1."""
        return [max(1, round(self.base_width * 2**i * self.width_factor)) for i in range(len(self.blocks_per_stage))]

    @property
    def expansion(self) -> int:
        return BOTTLENECK_EXPANSION if self.block_type == "bottleneck" else 1

    def stem_width(self) -> int:
        return self.stage_widths()[0]

    def feature_width(self) -> int:
        return self.stage_widths()[-1] * self.expansion

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.block_type in BLOCK_TYPES, f"block_type {self.block_type!r} is not one of {BLOCK_TYPES}")
        need(len(self.blocks_per_stage) >= 1 and all(b >= 1 for b in self.blocks_per_stage),
             f"blocks_per_stage must be positive integers, got {list(self.blocks_per_stage)}")
        need(self.base_width >= 1 and self.width_factor > 0, "base_width and width_factor must be positive")
        need(self.input_size >= 4, f"input_size {self.input_size} is too small (>= 4)")
        need(self.in_channels >= 1 and self.num_classes >= 2, "in_channels >= 1 and num_classes >= 2 are required")
        need(self.timesteps >= 1, f"timesteps must be >= 1, got {self.timesteps}")
        need(1 <= self.input_levels <= 255,
             f"input_levels must be in 1..255 (8-bit graded input spikes), got {self.input_levels}")
        need(self.stem in STEMS, f"stem {self.stem!r} is not one of {STEMS}")
        b, n = self.block, self.neuron
        need(b.selection in SELECTIONS, f"selection {b.selection!r} is not one of {SELECTIONS}")
        need(b.merge in MERGES, f"merge {b.merge!r} is not one of {MERGES}")
        need(b.shortcut in SHORTCUTS, f"shortcut {b.shortcut!r} is not one of {SHORTCUTS}")
        need(not (b.merge == "add" and b.selection != "none"),
             "merge 'add' makes block inputs spike counts, on which XOR selection is undefined: use selection 'none'")
        need(n.vth > 0, f"neuron vth must be positive, got {n.vth}")
        need(n.reset in ("hard", "soft"), f"neuron reset {n.reset!r} is not 'hard' or 'soft'")
        need(on_decay_grid(n.du, offset=1),
             f"neuron du={n.du} is not on Loihi's 12-bit grid: du must be (k + 1) / 4096 for k in 0..4095")
        need(on_decay_grid(n.dv, offset=0),
             f"neuron dv={n.dv} is not on Loihi's 12-bit grid: dv must be k / 4096 for k in 0..4095")
        need(n.surrogate_alpha > 0, "surrogate_alpha must be positive")

    # ----------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocks_per_stage"] = list(self.blocks_per_stage)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkConfig":
        if not isinstance(d, dict):
            raise ConfigError("network config must be a JSON object")
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown network config key(s): {', '.join(unknown)}")
        try:
            if "neuron" in d:
                d["neuron"] = _sub(NeuronSpec, d["neuron"], "neuron")
            if "block" in d:
                d["block"] = _sub(BlockSpec, d["block"], "block")
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"invalid network config: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "NetworkConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"network config is not valid JSON: {e}") from None

    @classmethod
    def preset(cls, arch: str, *, block: str | BlockSpec = "xor-or", **overrides: Any) -> "NetworkConfig":
        """An architecture preset (``xoresnet18`` ... ``xoresnet101``, ``xoresnet-digits``) with overrides."""
        if arch not in ARCH_PRESETS:
            raise ConfigError(f"unknown architecture {arch!r}; choose from {', '.join(ARCH_PRESETS)}")
        if isinstance(block, str):
            if block not in BLOCK_PRESETS:
                raise ConfigError(f"unknown block variant {block!r}; choose from {', '.join(BLOCK_PRESETS)}")
            block = BLOCK_PRESETS[block]
        return cls(**{"arch": arch, **ARCH_PRESETS[arch], "block": block, **overrides})

    def replace(self, **changes: Any) -> "NetworkConfig":
        return dataclasses.replace(self, **changes)


def _sub(kind, value, name):
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"network config '{name}' must be an object")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown '{name}' config key(s): {', '.join(unknown)}")
    return kind(**value)
