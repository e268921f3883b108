"""A network is fully described by a JSON-able :class:`NetworkConfig`.

The block switches follow ``xoresnet-block.md`` (our reconstruction of Wu & Wang, arXiv
2605.30362, from its abstract): defaults are the XOR residual block; the other values give the
ablations and the SEW-ResNet / Spiking-ResNet baselines as configurations of the same block.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, ConfigFormatError
from .decay_grid import on_decay_grid
from .neuron import NeuronSpec

BLOCK_TYPES = ("basic", "bottleneck")
SELECTIONS = ("prev_input", "mid", "none")
MERGES = ("or", "xor", "add", "iand", "add_current")
SHORTCUTS = ("add_current", "spike")
STEMS = ("conv", "conv_s2_orpool")
BOTTLENECK_EXPANSION = 4

# The ranges of a config's sizes and numbers (:meth:`NetworkConfig.validate`). A checkpoint's config is
# untrusted input: these keep a few bytes of JSON from asking for a network that takes hours to build or
# more memory than any machine has. ResNet-101 has 4 stages of at most 23 blocks and 2048 channels.
MAX_STAGES = 8
MAX_BLOCKS_PER_STAGE = 64
MAX_CHANNELS = 16384
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 4, 1024
MAX_IN_CHANNELS = 16
MAX_CLASSES = 10000
MAX_TIMESTEPS = 4096


@dataclass(frozen=True)
class BlockSpec:
    """The switches of the XOR residual block.

    ``selection``: input of the backbone. ``prev_input`` (default): ``M_l = S_l XOR S_{l-1}``
    where the previous block is in the same stage with an input of the same shape, else
    ``M_l = S_l``; ``mid``: XOR of the first backbone layer's spikes with ``S_l`` before the second
    conv, in the BasicBlocks where their shapes match (stride 1, same channels; the others use
    ``M_l = S_l``), refused for Bottleneck blocks (see :func:`check_block`); ``none``: ``M_l = S_l``.
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
        """Refuse what this xoresnet cannot build. Sizes and numbers are checked against their ranges
        (:data:`LIMITS`) first, before anything is computed from them, and raise :class:`ConfigFormatError`
        (a malformed config, exit 3); unsupported choices raise :class:`ConfigError` (exit 4)."""
        _in_range(1 <= len(self.blocks_per_stage) <= MAX_STAGES,
                  f"blocks_per_stage must list 1..{MAX_STAGES} stages, got {len(self.blocks_per_stage)}")
        _in_range(all(1 <= b <= MAX_BLOCKS_PER_STAGE for b in self.blocks_per_stage),
                  f"blocks_per_stage must hold integers in 1..{MAX_BLOCKS_PER_STAGE}, got "
                  f"{shown(list(self.blocks_per_stage))}")
        _in_range(1 <= self.base_width <= MAX_CHANNELS and 0 < self.width_factor <= MAX_CHANNELS,
                  f"base_width must be in 1..{MAX_CHANNELS} and width_factor in (0, {MAX_CHANNELS}], got "
                  f"{shown(self.base_width)} and {shown(self.width_factor)}")
        _in_range(self.feature_width() <= MAX_CHANNELS,
                  f"the widest layer would have {self.feature_width()} channels; at most {MAX_CHANNELS} are supported "
                  f"(base_width x 2^(stages-1) x width_factor x {self.expansion})")
        _in_range(MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE,
                  f"input_size must be in {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}, got {shown(self.input_size)}")
        _in_range(1 <= self.in_channels <= MAX_IN_CHANNELS and 2 <= self.num_classes <= MAX_CLASSES,
                  f"in_channels must be in 1..{MAX_IN_CHANNELS} and num_classes in 2..{MAX_CLASSES}, got "
                  f"{shown(self.in_channels)} and {shown(self.num_classes)}")
        _in_range(1 <= self.timesteps <= MAX_TIMESTEPS,
                  f"timesteps must be in 1..{MAX_TIMESTEPS}, got {shown(self.timesteps)}")
        _need(1 <= self.input_levels <= 255,
              f"input_levels must be in 1..255 (8-bit graded input spikes), got {shown(self.input_levels)}")
        _need(self.block_type in BLOCK_TYPES, f"block_type {self.block_type!r} is not one of {BLOCK_TYPES}")
        _need(self.stem in STEMS, f"stem {self.stem!r} is not one of {STEMS}")
        check_block(self.block_type, self.block, f"architecture {self.arch!r}")
        n = self.neuron
        _in_range(0 < n.vth < math.inf, f"neuron vth must be positive and finite, got {n.vth}")
        _in_range(0 < n.surrogate_alpha < math.inf,
                  f"surrogate_alpha must be positive and finite, got {n.surrogate_alpha}")
        _need(n.reset in ("hard", "soft"), f"neuron reset {n.reset!r} is not 'hard' or 'soft'")
        _need(math.isfinite(n.du) and on_decay_grid(n.du, offset=1),
              f"neuron du={n.du} is not on Loihi's 12-bit grid: du must be (k + 1) / 4096 for k in 0..4095")
        _need(math.isfinite(n.dv) and on_decay_grid(n.dv, offset=0),
              f"neuron dv={n.dv} is not on Loihi's 12-bit grid: dv must be k / 4096 for k in 0..4095")

    # ----------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocks_per_stage"] = list(self.blocks_per_stage)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkConfig":
        """The config of a JSON object (missing keys take their defaults).

        Raises :class:`ConfigFormatError` for a malformed object (not an object, unknown keys, a
        value of the wrong JSON kind) and :class:`ConfigError` for a well-formed unsupported one.
        """
        return _from_json_object(cls, d, "network config")

    @classmethod
    def from_json(cls, text: str) -> "NetworkConfig":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigFormatError(f"network config is not valid JSON: {e}") from None
        except RecursionError:
            raise ConfigFormatError("network config is nested too deeply to be a network config") from None
        return cls.from_dict(value)

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


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _in_range(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigFormatError(msg)


def check_block(block_type: str, spec: BlockSpec, where: str) -> None:
    """Raise :class:`ConfigError` for block switches that ``xoresnet-block.md`` leaves undefined.

    ``where``: what the blocks belong to (``architecture 'xoresnet50'``), named in the message.
    """
    _need(spec.selection in SELECTIONS, f"selection {spec.selection!r} is not one of {SELECTIONS}")
    _need(spec.merge in MERGES, f"merge {spec.merge!r} is not one of {MERGES}")
    _need(spec.shortcut in SHORTCUTS, f"shortcut {spec.shortcut!r} is not one of {SHORTCUTS}")
    _need(not (spec.merge == "add" and spec.selection != "none"),
          "merge 'add' makes block inputs spike counts, on which XOR selection is undefined: use selection 'none'")
    _need(not (spec.selection == "mid" and block_type == "bottleneck"),
          f"selection 'mid' is not defined for Bottleneck blocks ({where}): it XORs the first backbone "
          f"layer's spikes with the block input S_l, but a Bottleneck's first layer has 'planes' channels and S_l "
          f"{BOTTLENECK_EXPANSION} x planes; use selection 'prev_input' or 'none'")


# JSON kinds of the field types of the config dataclasses and checkpoint entries, as named in errors.
_KIND_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
               list: "an array", dict: "an object"}


def has_json_kind(value: Any, hint: Any) -> bool:
    """True when the JSON ``value`` fits the type ``hint``: ``int``, ``float`` (finite; no bool for
    numbers), ``str``, ``bool``, ``list``, ``dict``, ``tuple[X, ...]`` or ``list[X]`` (an array),
    ``dict[str, X]`` (an object) or a union with ``None`` (null)."""
    if hint in (bool, str, list, dict):
        return isinstance(value, hint)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list):
        return isinstance(value, (list, tuple)) and all(has_json_kind(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(has_json_kind(k, args[0]) and has_json_kind(v, args[1])
                                               for k, v in value.items())
    if origin in (typing.Union, types.UnionType):
        return any(value is None if a is type(None) else has_json_kind(value, a) for a in args)
    raise TypeError(f"no JSON kind for type {hint!r}")  # a new field type: teach has_json_kind


def json_kind_name(hint: Any) -> str:
    """How error messages name the JSON kind of ``hint`` (see :func:`has_json_kind`)."""
    if hint in _KIND_NAMES:
        return _KIND_NAMES[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list):
        return f"an array of items each {json_kind_name(args[0])}"
    if origin is dict:
        return f"an object of values each {json_kind_name(args[1])}"
    return " or ".join("null" if a is type(None) else json_kind_name(a) for a in args)


def shown(value: Any, limit: int = 40) -> str:
    """``value`` as JSON for an error message, cut to about ``limit`` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_json_object(kind: type, value: Any, name: str) -> Any:
    """The dataclass ``kind`` (a config or one of its nested specs) of the JSON object ``value``."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise ConfigFormatError(f"{name} must be a JSON object, got {shown(value)}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigFormatError(f"unknown {name} key(s): {', '.join(map(str, unknown))}")
    fields = {}
    for key, hint in typing.get_type_hints(kind).items():
        if key not in value:
            continue
        if dataclasses.is_dataclass(hint):
            fields[key] = _from_json_object(hint, value[key], f"{name} '{key}'")
        elif has_json_kind(value[key], hint):
            fields[key] = value[key]
        else:
            raise ConfigFormatError(f"{name} field '{key}' must be {json_kind_name(hint)}, got {shown(value[key])}")
    return kind(**fields)
