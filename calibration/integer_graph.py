"""The Loihi integer graph: the artifact between calibration and deployment.

A graph of LIF **populations** (one Lava ``LIFReset`` process each) joined by integer
**synapses** (one Lava ``Conv``, ``Dense`` or ``Sparse``/``DelaySparse`` process each), fed by
an 8-bit graded **input** and read out on the host. Every number is a Loihi register value:

* population: ``du_code``, ``dv_code`` (12-bit registers, effective current decay ``du_code + 1``),
  ``vth_mant`` (17-bit mantissa, compared as ``vth_mant << 6``), stored in the file under Lava's register
  names ``du``, ``dv``, ``vth``; per-neuron ``bias_mant`` (13-bit) and ``bias_exp`` (0..7);
  ``kind`` is ``neuron`` (a trained CUBA LIF), ``gate`` (memoryless spike logic: du = dv = 4095,
  no bias), ``relay`` (a gate that copies its single input, inserted to delay a branch) or
  ``partial_sum`` (a fan-in split part, Lava's ``GradedVec`` with ``vth = 0``: it sends its summed
  integer input, unchanged, as a graded spike in the step it arrives; no state, registers unused);
  ``role`` is what the population is in the model (:data:`POPULATION_ROLES`), read by block detection
  and the report, ignored by the simulators and the Lava lowering;
* synapse: integer ``weight`` (conv: ``[C_out, C_in / groups, kH, kW]`` in PyTorch layout;
  dense: ``[N_out, N_in]`` over the source flattened in PyTorch ``(C, H, W)`` order; identity:
  one weight per element, shaped like the population), ``weight_exp`` (dense/identity only: the
  summed input is shifted by it), ``graded`` (payloads instead of binary spikes: the 8-bit
  pixels from the input, the 24-bit partial sums from a ``partial_sum`` population), ``delay``
  (extra steps on top of the one-step synapse hop), ``model_delay`` (steps the model itself
  delays the synapse, a NIR ``Delay``: part of its meaning, also in zero-delay timing; ``delay``
  includes it once scheduled) and ``src_channels`` (``(start, stop)``: the synapse reads only
  that range of its source's first axis, channels of a ``(C, H, W)`` source, and its weight is
  shaped for that range; a fan-in split part);
* readout: synapses with ``dst == "readout"`` produce per-step integer logits on the host, to which
  ``readout_bias`` is added; the prediction is the argmax of their sum over the timesteps;
* ``core_plan``: how each population is cut into Lava processes (:mod:`calibration.core_plan`;
  set by the packer, read by the Lava lowering, ignored by the reference).

Shapes use PyTorch's ``(C, H, W)`` order; the Lava lowering converts to Lava's ``(X, Y, C)``.
Timing fields (``latency``, ``delay``, ``reset_interval``) are set by
:func:`calibration.schedule.schedule` and are ignored by zero-delay simulation.

Files: :func:`save_integer_graph` / :func:`load_integer_graph` (HDF5, documented in
``docs/formats.md``); :meth:`IntegerGraph.validate` checks every value against Loihi's ranges
(:mod:`calibration.loihi2_limits`, the one home of every Loihi 2 limit).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import h5py
import numpy as np

from xoresnet.errors import RangeError, UnsupportedModelError

from . import loihi2_limits as lim
from .core_plan import CorePlan, check_plan

GRAPH_FORMAT = "xoresnet-loihi-integer-graph"
GRAPH_VERSION = 2  # 2: partial_sum populations, src_channels, core_plan
INPUT = "input"
READOUT = "readout"
POPULATION_KINDS = ("neuron", "gate", "relay", "partial_sum")
SYNAPSE_KINDS = ("conv", "dense", "identity")
#: What a population is in the model (``Population.role``): set from the NIR node metadata of
#: :mod:`xoresnet.nir.export` by :mod:`calibration.float_graph`, by the scheduler for relays and by the
#: fan-in split for partial sums; it never changes a register or a spike.
POPULATION_ROLES = {
    "stem": "a population of the stem (before the first residual block)",
    "neuron": "a backbone neuron of a residual block (the block's neurons in order; the last one feeds the merge)",
    "shortcut_neuron": "the neuron of a block's spike shortcut",
    "sel": "a block's XOR selection gate (block input with the previous block's input)",
    "mid": "a block's mid XOR gate (after its first neuron)",
    "merge": "a block's merge gate (backbone with shortcut: or, xor, iand)",
    "gate_part": "an inner part of a gate (the AND of an XOR)",
    "relay": "a copy of another population, delayed (calibration.schedule); it copies its single input",
    "partial_sum": "a fan-in split part of a layer (calibration.fan_in)",
    "other": "anything else: populations of NIR graphs made by other tools (no block metadata)",
}


@dataclass
class Population:
    name: str
    shape: tuple[int, ...]
    du_code: int  # Lava's ``du`` register: the current decays by (du_code + 1) / 4096 per step
    dv_code: int  # Lava's ``dv`` register: the voltage decays by dv_code / 4096 per step
    vth_mant: int  # Lava's ``vth`` register: the threshold mantissa, compared as vth_mant << 6
    bias_mant: np.ndarray  # int, shape ``shape``
    bias_exp: np.ndarray  # int, shape ``shape``
    kind: str = "neuron"
    op: Optional[str] = None  # gates: "or", "and", "iand", "xor", "or_pool"; relays: "relay"
    block: Optional[str] = None
    role: str = "other"  # one of POPULATION_ROLES
    scale: float = 1.0  # a-units per float unit of current (1 for gates and relays)
    latency: int = 0  # Loihi timing: timestep k of sample n leaves at stream step n*P + k + 1 + latency

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def has_bias(self) -> bool:
        return bool(np.any(self.bias_mant != 0))


@dataclass
class Synapse:
    name: str
    src: str
    dst: str
    kind: str
    weight: np.ndarray
    weight_exp: int = 0
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    graded: bool = False
    delay: int = 0
    model_delay: int = 0
    src_channels: Optional[tuple[int, int]] = None

    @property
    def sign_mode(self) -> str:
        """``mixed``, ``excitatory`` or ``inhibitory`` (Lava's rule: over the whole matrix)."""
        return lim.sign_mode(self.weight)


@dataclass
class IntegerGraph:
    input_shape: tuple[int, int, int]
    input_levels: int
    timesteps: int
    populations: dict[str, Population]  # topological order
    synapses: list[Synapse]
    readout_bias: np.ndarray  # int64 [num_classes]
    readout_scale: float  # readout integer units per float logit unit
    reset_interval: int = 0  # P: stream steps per sample (0 until scheduled)
    meta: dict[str, Any] = field(default_factory=dict)
    core_plan: Optional[CorePlan] = None

    # ------------------------------------------------------------------ structure
    def incoming(self, dst: str) -> list[Synapse]:
        return [s for s in self.synapses if s.dst == dst]

    def outgoing(self, src: str) -> list[Synapse]:
        return [s for s in self.synapses if s.src == src]

    @property
    def readout(self) -> list[Synapse]:
        return self.incoming(READOUT)

    @property
    def num_classes(self) -> int:
        return int(self.readout_bias.shape[0])

    @property
    def scheduled(self) -> bool:
        return self.reset_interval > 0

    def source_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.input_shape) if name == INPUT else self.populations[name].shape

    def read_shape(self, s: Synapse) -> tuple[int, ...]:
        """The shape synapse ``s`` reads: its source's, cut to ``src_channels`` along the first axis."""
        shape = tuple(self.source_shape(s.src))
        if s.src_channels is None:
            return shape
        a, b = s.src_channels
        return (int(b) - int(a),) + shape[1:]

    def message_bits(self, s: Synapse) -> int:
        """``num_message_bits`` of synapse ``s``: 0 (binary spikes), the 8-bit pixels from the input,
        or the 24-bit graded payload from a ``partial_sum`` population."""
        if not s.graded:
            return 0
        return lim.MESSAGE_BITS_GRADED if s.src == INPUT else lim.GRADED_PAYLOAD.value

    def delays(self) -> list[dict[str, Any]]:
        """The inserted synaptic delays and relay populations (for the artifacts)."""
        out = [{"synapse": s.name, "src": s.src, "dst": s.dst, "delay": s.delay} for s in self.synapses if s.delay]
        out += [{"relay": p.name, "latency": p.latency} for p in self.populations.values() if p.kind == "relay"]
        return out

    # ------------------------------------------------------------------ stream timing (after scheduling)
    def readout_latency(self) -> int:
        """Steps from a sample's first input step to its first readout value (a scheduled graph: every
        readout synapse arrives at the same latency, else ``ValueError``)."""
        lat = {self.populations[s.src].latency + 1 + s.delay for s in self.readout}
        if len(lat) != 1:
            raise ValueError(f"readout synapses arrive at different latencies {sorted(lat)}: graph not scheduled")
        return lat.pop()

    def stream_steps(self, samples: int) -> int:
        """Stream steps until the last timestep of the last of ``samples`` samples reaches the readout (one
        sample every :attr:`reset_interval` steps)."""
        return (samples - 1) * self.reset_interval + self.timesteps + self.readout_latency()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`RangeError` naming the first value outside Loihi 2's ranges
        (:mod:`calibration.loihi2_limits`). Capacity (cores, synaptic memory) is the design rules'
        business (:mod:`hw_targets.design_rules`)."""
        def in_range(what: str, value, lo: int, hi: int) -> None:
            arr = np.asarray(value)
            if arr.size and (arr.min() < lo or arr.max() > hi):
                bad = arr.min() if arr.min() < lo else arr.max()
                raise RangeError(f"{what} = {int(bad)} is outside Loihi 2's range [{lo}, {hi}]")

        in_range("input_levels (8-bit graded input)", self.input_levels, 1, (1 << lim.MESSAGE_BITS_GRADED) - 1)
        for p in self.populations.values():
            if p.kind not in POPULATION_KINDS:
                raise UnsupportedModelError(f"population {p.name}: unknown kind {p.kind!r}")
            if p.role not in POPULATION_ROLES:
                raise UnsupportedModelError(f"population {p.name}: unknown role {p.role!r}")
            for what, arr in (("bias_mant", p.bias_mant), ("bias_exp", p.bias_exp)):
                if tuple(np.shape(arr)) != tuple(p.shape):
                    raise UnsupportedModelError(f"population {p.name}: {what} has shape {np.shape(arr)}, "
                                                f"not the population's {p.shape}")
            in_range(f"population {p.name}: du", p.du_code, *lim.DU_RANGE)
            in_range(f"population {p.name}: dv", p.dv_code, *lim.DV_RANGE)
            in_range(f"population {p.name}: vth", p.vth_mant, *lim.VTH_RANGE)
            in_range(f"population {p.name}: bias_mant", p.bias_mant, *lim.BIAS_MANT_RANGE)
            in_range(f"population {p.name}: bias_exp", p.bias_exp, *lim.BIAS_EXP_RANGE)
            if p.kind == "partial_sum" and p.has_bias:
                raise UnsupportedModelError(f"population {p.name}: a partial sum (GradedVec) has no bias")
        for s in self.synapses:
            if s.kind not in SYNAPSE_KINDS:
                raise UnsupportedModelError(f"synapse {s.name}: unknown kind {s.kind!r}")
            for end in (s.src, s.dst):
                if end not in self.populations and end not in (INPUT, READOUT):
                    raise UnsupportedModelError(f"synapse {s.name} refers to unknown population {end}")
            w = s.weight
            mode = s.sign_mode
            in_range(f"synapse {s.name}: weight", w, *lim.weight_range(mode))
            if mode == "mixed" and np.any(w % 2):
                raise RangeError(f"synapse {s.name}: mixed-sign weight {int(w[w % 2 != 0].flat[0])} is odd; "
                                 "Loihi keeps 7 magnitude bits plus sign, so mixed weights must be even")
            if s.kind == "conv" and (w.ndim != 4 or min(s.stride) < 1 or s.groups < 1):
                raise UnsupportedModelError(f"synapse {s.name}: conv weight must be 4-D with stride and groups >= 1")
            if s.kind == "conv" and s.weight_exp != 0:
                raise RangeError(f"synapse {s.name}: Lava's Conv ignores weight_exp, but it is {s.weight_exp}")
            in_range(f"synapse {s.name}: weight_exp", s.weight_exp, *lim.WEIGHT_EXP_RANGE)
            in_range(f"synapse {s.name}: delay", s.delay, 0, lim.DELAY_MAX)
            in_range(f"synapse {s.name}: model_delay", s.model_delay, 0, 1 << 16)
            if s.delay and s.kind == "conv":
                raise RangeError(f"synapse {s.name}: Lava's Conv has no synaptic delay (delay {s.delay})")
            if s.src_channels is not None:
                a, b = (int(x) for x in s.src_channels)
                if not 0 <= a < b <= self.source_shape(s.src)[0]:
                    raise UnsupportedModelError(f"synapse {s.name}: src_channels {(a, b)} is not a range of "
                                                f"{s.src}'s first axis")
            partial = s.src != INPUT and self.populations[s.src].kind == "partial_sum"
            if partial != (s.graded and s.src != INPUT):
                raise UnsupportedModelError(f"synapse {s.name}: " + (
                    "a synapse from a partial sum must be graded (24-bit payloads)" if partial else
                    "a graded synapse must come from the input or a partial sum, not from a spiking population"))
        check_plan(self, self.core_plan)

    # ------------------------------------------------------------------ summary
    def describe(self) -> dict[str, Any]:
        return {
            "populations": len(self.populations),
            "neurons": int(sum(p.size for p in self.populations.values())),
            "synapses": len(self.synapses),
            "relays": sum(p.kind == "relay" for p in self.populations.values()),
            "partial_sums": sum(p.kind == "partial_sum" for p in self.populations.values()),
            "delayed_synapses": sum(1 for s in self.synapses if s.delay),
            "reset_interval": self.reset_interval,
            "timesteps": self.timesteps,
        }


# ---------------------------------------------------------------------- HDF5 files

class StreamWindows:
    """Where a sample's timesteps sit in a stream (Loihi timing); shared by the reference's and Lava's
    results. Needs ``reset_interval``, ``timesteps``, ``readout_latency``, ``readout`` (steps first)
    and ``readout_bias``, and ``time_weights`` (the readout rule: :mod:`calibration.readout`)."""

    def step_index(self, sample: int, timestep: int, latency: int) -> int:
        """0-based index into the step axis where ``timestep`` of ``sample`` leaves a population."""
        return sample * self.reset_interval + timestep + latency

    def logits(self, sample: int):
        """Per-timestep logits of ``sample``, ``[T, ..., K]`` (readout bias included)."""
        start = self.step_index(sample, 0, self.readout_latency)
        return self.readout[start:start + self.timesteps] + self.readout_bias

    def window_spike_counts(self, graph: "IntegerGraph") -> dict[str, list[int]]:
        """Spikes of every population of ``graph`` in each sample's window: ``{p: [samples]}``. Needs
        ``spikes[p]`` with steps first (the reference's ``[S, 1, *shape]``, Lava's ``[S, *shape]``) and
        ``samples``. Sample ``n``'s window of population ``p`` is its ``T`` steps from ``step_index(n, 0,
        p.latency)``: the spikes that sample caused in ``p``."""
        out = {}
        for p in graph.populations.values():
            s = self.spikes[p.name]
            s = s != 0 if p.kind == "partial_sum" else s  # messages: nonzero payloads
            out[p.name] = [int(s[start:start + self.timesteps].sum())
                           for start in (self.step_index(n, 0, p.latency) for n in range(self.samples))]
        return out


def _compact(values: np.ndarray) -> np.ndarray:
    """int16 when every value fits (weights, biases of valid graphs), else int64: never a silent wrap."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0 or (values.min() >= np.iinfo(np.int16).min and values.max() <= np.iinfo(np.int16).max):
        return values.astype(np.int16)
    return values


def save_integer_graph(graph: IntegerGraph, path: str | os.PathLike) -> None:
    """Write ``graph`` as HDF5 (layout in ``docs/formats.md``)."""
    with h5py.File(path, "w") as f:
        f.attrs.update(format=GRAPH_FORMAT, version=GRAPH_VERSION, input_shape=np.array(graph.input_shape),
                       input_levels=graph.input_levels, timesteps=graph.timesteps,
                       reset_interval=graph.reset_interval, readout_scale=graph.readout_scale,
                       meta=json.dumps(graph.meta, sort_keys=True), order=json.dumps(list(graph.populations)),
                       core_plan=json.dumps(graph.core_plan.to_dict() if graph.core_plan else None))
        f.create_dataset("readout_bias", data=graph.readout_bias.astype(np.int64))
        pops = f.create_group("populations")
        for p in graph.populations.values():
            g = pops.create_group(p.name)
            g.attrs.update(shape=np.array(p.shape), du=p.du_code, dv=p.dv_code, vth=p.vth_mant, kind=p.kind, op=p.op or "",
                           block=p.block or "", role=p.role, scale=p.scale, latency=p.latency)
            g.create_dataset("bias_mant", data=_compact(p.bias_mant), compression="gzip")
            g.create_dataset("bias_exp", data=_compact(p.bias_exp), compression="gzip")
        syns = f.create_group("synapses")
        for i, s in enumerate(graph.synapses):
            g = syns.create_group(f"{i:05d}")
            g.attrs.update(name=s.name, src=s.src, dst=s.dst, kind=s.kind, weight_exp=s.weight_exp,
                           stride=np.array(s.stride), padding=np.array(s.padding), groups=s.groups,
                           graded=s.graded, delay=s.delay, model_delay=s.model_delay,
                           src_channels=np.array(s.src_channels if s.src_channels is not None else (-1, -1)))
            g.create_dataset("weight", data=_compact(s.weight), compression="gzip")


def role_from_name(p: Population) -> str:
    """The role of a population loaded from a file written before populations carried one: the
    compatibility path, the only place a role is read from a name (``{block}.neurons.{i}``,
    ``{block}.shortcut_neuron``, ``{block}.sel|mid|merge``, ``{merge}.and`` and ``stem.*`` as
    :mod:`xoresnet.nir.export` names them); everything else reads ``Population.role``."""
    if p.kind in ("relay", "partial_sum"):
        return p.kind
    if p.block is None:
        return "stem" if p.name.startswith("stem.") else "other"
    local = p.name[len(p.block) + 1:] if p.name.startswith(p.block + ".") else ""
    if local in ("shortcut_neuron", "sel", "mid", "merge"):
        return local
    if re.fullmatch(r"neurons\.\d+", local):
        return "neuron"
    return "gate_part" if p.kind == "gate" and local.endswith(".and") else "other"


def load_integer_graph(path: str | os.PathLike) -> IntegerGraph:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UnsupportedModelError(f"{path} is not a readable integer graph ({e})") from None
    with f:
        if f.attrs.get("format") != GRAPH_FORMAT:
            raise UnsupportedModelError(f"{path} is not an xoresnet integer graph")
        if int(f.attrs["version"]) > GRAPH_VERSION:
            raise UnsupportedModelError(f"{path} has integer-graph version {int(f.attrs['version'])}")
        order = json.loads(f.attrs["order"])
        populations = {}
        for name in order:
            g = f["populations"][name]
            a = g.attrs
            populations[name] = Population(
                name=name, shape=tuple(int(x) for x in a["shape"]), du_code=int(a["du"]), dv_code=int(a["dv"]),
                vth_mant=int(a["vth"]), bias_mant=g["bias_mant"][()].astype(np.int64),
                bias_exp=g["bias_exp"][()].astype(np.int64), kind=str(a["kind"]), op=str(a["op"]) or None,
                block=str(a["block"]) or None, scale=float(a["scale"]), latency=int(a["latency"]))
            populations[name].role = str(a["role"]) if "role" in a else role_from_name(populations[name])
        synapses = []
        for key in sorted(f["synapses"]):
            g = f["synapses"][key]
            a = g.attrs
            channels = tuple(int(x) for x in a["src_channels"]) if "src_channels" in a else (-1, -1)
            synapses.append(Synapse(
                name=str(a["name"]), src=str(a["src"]), dst=str(a["dst"]), kind=str(a["kind"]),
                weight=g["weight"][()].astype(np.int64), weight_exp=int(a["weight_exp"]),
                stride=tuple(int(x) for x in a["stride"]), padding=tuple(int(x) for x in a["padding"]),
                groups=int(a["groups"]), graded=bool(a["graded"]), delay=int(a["delay"]),
                model_delay=int(a.get("model_delay", 0)),
                src_channels=None if channels == (-1, -1) else channels))
        plan = json.loads(f.attrs["core_plan"]) if "core_plan" in f.attrs else None
        return IntegerGraph(
            input_shape=tuple(int(x) for x in f.attrs["input_shape"]), input_levels=int(f.attrs["input_levels"]),
            timesteps=int(f.attrs["timesteps"]), populations=populations, synapses=synapses,
            readout_bias=f["readout_bias"][()].astype(np.int64), readout_scale=float(f.attrs["readout_scale"]),
            reset_interval=int(f.attrs["reset_interval"]), meta=json.loads(f.attrs["meta"]),
            core_plan=CorePlan.from_dict(plan) if plan is not None else None)
