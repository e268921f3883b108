"""Read a float NIR graph as Loihi populations and synapses (before quantization).

Every neuron node (IF, LIF, CubaLIF) and every Threshold node becomes a population; what feeds a
population becomes synapses, one per (source population, target population) pair:

* a direct edge (spikes as a current of weight 1), or through ``Scale`` -> identity synapse;
* through ``Conv2d`` -> conv synapse (its bias joins the target's bias);
* through ``SumPool2d``/``AvgPool2d`` -> depthwise conv synapse with a constant kernel;
* the ``Output`` chain ``Affine <- [Flatten] <- [pooling] <- populations`` -> the readout, one
  dense synapse per source population (the pooling folded into the weights).

Neuron parameters map onto Loihi's ``v = v(1 - dv) + u + bias``, ``u = u(1 - du) + gain * x``
(our discretization, :mod:`deploy.nir_interpreter`): IF ``gain = dt r``; LIF ``dv = dt/tau``,
``gain = dv r``, ``bias = dv v_leak``; CubaLIF ``du = dt/tau_syn``, ``dv = dt/tau_mem``,
``gain = du w_in dv r``, ``bias = dv v_leak``. ``du``/``dv``/``vth``/``gain`` must be uniform over a
population (Loihi holds them per population) and on the 12-bit decay grid; ``v_reset`` must be 0.
The gain is folded into the incoming weights. Anything else raises
:class:`~xoresnet.errors.UnsupportedModelError` naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import nir
import numpy as np
import torch
import torch.nn.functional as F

from deploy.nir_export import read_meta
from deploy.nir_interpreter import NEURON_TYPES, pair, predecessors, topological_order
from xoresnet.errors import UnsupportedModelError

from .integer_graph import INPUT, READOUT
from .loihi2_limits import DECAY_UNITY


@dataclass
class FloatPopulation:
    name: str
    shape: tuple[int, ...]
    kind: str  # "neuron" | "gate"
    du: float = 1.0
    dv: float = 1.0
    vth: float = 0.5  # float units (gates: the Threshold value on integer input sums)
    bias: Optional[np.ndarray] = None  # float64 [shape], added to v every step (neurons)
    op: Optional[str] = None
    block: Optional[str] = None


@dataclass
class FloatSynapse:
    name: str
    src: str
    dst: str
    kind: str  # "conv" | "dense" | "identity"
    weight: np.ndarray  # float64; graded input synapses: per pixel unit (model input = pixel / levels)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    graded: bool = False


@dataclass
class FloatGraph:
    input_shape: tuple[int, int, int]
    input_levels: int
    timesteps: int
    populations: dict[str, FloatPopulation]
    synapses: list[FloatSynapse]
    readout_bias: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def incoming(self, dst: str) -> list[FloatSynapse]:
        return [s for s in self.synapses if s.dst == dst]


def _uniform(name: str, what: str, value) -> float:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size and not np.allclose(arr, arr.flat[0], rtol=1e-6, atol=0):
        raise UnsupportedModelError(f"NIR node {name}: {what} varies across neurons; Loihi holds one per population")
    return float(arr.flat[0]) if arr.size else 0.0


def _decay(name: str, what: str, value: float, offset: int) -> float:
    code = value * DECAY_UNITY - offset
    if abs(code - round(code)) > 1e-3 or not 0 <= round(code) <= DECAY_UNITY - 1:
        raise UnsupportedModelError(
            f"NIR node {name}: {what} = {value:.8g} is not on Loihi's 12-bit decay grid "
            f"({'(k+1)/4096' if offset else 'k/4096'}, k in 0..4095)")
    return (round(code) + offset) / DECAY_UNITY


def _snap_unity(x: float) -> float:
    return 1.0 if abs(x - 1.0) < 1e-6 else x


def _neuron_params(name: str, node: nir.NIRNode, dt: float) -> tuple[float, float, float, float, np.ndarray]:
    """(du, dv, vth, gain, bias [shape]) in Loihi's discrete form."""
    vth = _uniform(name, "v_threshold", node.v_threshold)
    if np.any(np.asarray(node.v_reset) != 0):
        raise UnsupportedModelError(f"NIR node {name} resets to v_reset != 0; Loihi 2's LIF resets v to 0")
    shape = np.asarray(node.v_threshold).shape
    if isinstance(node, nir.IF):
        return 1.0, 0.0, vth, _snap_unity(dt * _uniform(name, "r", node.r)), np.zeros(shape)
    if isinstance(node, nir.LIF):
        dv = _decay(name, "dt/tau", dt / _uniform(name, "tau", node.tau), 0)
        return 1.0, dv, vth, _snap_unity(dv * _uniform(name, "r", node.r)), dv * np.asarray(node.v_leak, np.float64)
    du = _decay(name, "dt/tau_syn", dt / _uniform(name, "tau_syn", node.tau_syn), 1)
    dv = _decay(name, "dt/tau_mem", dt / _uniform(name, "tau_mem", node.tau_mem), 0)
    gain = _snap_unity(du * _uniform(name, "w_in", node.w_in) * dv * _uniform(name, "r", node.r))
    return du, dv, vth, gain, dv * np.asarray(node.v_leak, np.float64)


def _shape_of(node: nir.NIRNode) -> tuple[int, ...]:
    for attr in ("v_threshold", "threshold"):
        if hasattr(node, attr):
            return tuple(np.asarray(getattr(node, attr)).shape)
    raise AssertionError(type(node))


def nir_to_float_graph(graph: nir.NIRGraph) -> FloatGraph:
    """Populations, synapses and readout of ``graph`` (see the module docstring for the rules)."""
    meta = read_meta(graph)
    dt = float(np.asarray(graph.metadata.get("dt", 1.0)))
    order = topological_order(graph.nodes, graph.edges)
    preds = predecessors(graph)
    nodes = graph.nodes
    inputs = [n for n in order if isinstance(nodes[n], nir.Input)]
    if len(inputs) != 1 or "output" not in nodes:
        raise UnsupportedModelError("the NIR graph needs exactly one Input node and an Output node named 'output'")
    input_name = inputs[0]
    input_shape = tuple(int(x) for x in np.asarray(nodes[input_name].input_type["input"]))
    if len(input_shape) != 3:
        raise UnsupportedModelError(f"input shape {input_shape} is not (C, H, W)")
    levels = int(meta.get("input_levels", 255))
    timesteps = int(meta.get("timesteps", 0))
    if timesteps < 1:
        raise UnsupportedModelError("the NIR graph's metadata does not give the number of timesteps")

    def is_pop(n: str) -> bool:
        return isinstance(nodes[n], NEURON_TYPES + (nir.Threshold,))

    def source(n: str) -> str:
        if n == input_name:
            return INPUT
        if is_pop(n):
            return n
        raise UnsupportedModelError(
            f"NIR node {n} ({type(nodes[n]).__name__}) feeds a synapse; xoresnet maps synapses whose inputs are "
            "neuron/threshold populations or the input")

    pops: dict[str, FloatPopulation] = {}
    syns: list[FloatSynapse] = []
    for name in order:
        node = nodes[name]
        if not is_pop(name):
            continue
        ann = read_meta(node)
        shape = _shape_of(node)
        if isinstance(node, nir.Threshold):
            op = ann.get("op")
            if op and ann.get("part"):
                op = f"{op}.{ann['part']}"
            pop = FloatPopulation(name, shape, "gate", du=1.0, dv=1.0, vth=_uniform(name, "threshold", node.threshold),
                                  op=op, block=ann.get("block"))
            gain, bias = 1.0, None
        else:
            du, dv, vth, gain, bias = _neuron_params(name, node, dt)
            pop = FloatPopulation(name, shape, "neuron", du=du, dv=dv, vth=vth, bias=np.array(bias, np.float64),
                                  block=ann.get("block"))
        for q in preds[name]:
            qn = nodes[q]
            if q == input_name or is_pop(q):
                if q == input_name:
                    raise UnsupportedModelError(f"the input feeds population {name} without a conv")
                if _shape_of(qn) != shape:
                    raise UnsupportedModelError(f"NIR edge {q} -> {name} joins shapes {_shape_of(qn)} and {shape}")
                syns.append(FloatSynapse(f"{q}->{name}", q, name, "identity", np.full(shape, gain, np.float64)))
            elif isinstance(qn, nir.Scale):
                for r in preds[q]:
                    syns.append(FloatSynapse(f"{q}:{r}->{name}", source(r), name, "identity",
                                             np.broadcast_to(np.asarray(qn.scale, np.float64) * gain, shape).copy()))
            elif isinstance(qn, nir.Conv2d):
                if isinstance(qn.padding, str) or int(qn.groups) < 1 or pair(qn.dilation) != (1, 1):
                    raise UnsupportedModelError(f"NIR conv {q}: only numeric padding and dilation 1 are supported")
                conv_bias = np.asarray(qn.bias, np.float64)
                if np.any(conv_bias != 0):
                    if pop.kind == "gate" or pop.du != 1.0:
                        raise UnsupportedModelError(
                            f"NIR conv {q} has a bias but feeds {name}, whose current decays (or is a gate); Loihi "
                            "adds biases to v: put it in the neuron's v_leak")
                    pop.bias = pop.bias + gain * conv_bias.reshape((-1,) + (1,) * (len(shape) - 1))
                for r in preds[q]:
                    src = source(r)
                    w = np.asarray(qn.weight, np.float64) * gain
                    if src == INPUT:
                        w = w / levels
                    syns.append(FloatSynapse(f"{q}:{r}->{name}" if len(preds[q]) > 1 else q, src, name, "conv", w,
                                             stride=pair(qn.stride), padding=pair(qn.padding), groups=int(qn.groups),
                                             graded=src == INPUT))
            elif isinstance(qn, (nir.SumPool2d, nir.AvgPool2d)):
                k = pair(qn.kernel_size)
                value = 1.0 if isinstance(qn, nir.SumPool2d) else 1.0 / (k[0] * k[1])
                for r in preds[q]:
                    c = shape[0]
                    syns.append(FloatSynapse(f"{q}:{r}->{name}" if len(preds[q]) > 1 else q, source(r), name, "conv",
                                             np.full((c, 1) + k, value * gain), stride=pair(qn.stride),
                                             padding=pair(qn.padding), groups=c))
            else:
                raise UnsupportedModelError(
                    f"NIR node {q} ({type(qn).__name__}) feeds population {name}; xoresnet maps Conv2d, Scale, "
                    "SumPool2d, AvgPool2d or direct edges into neurons")
        if pop.kind == "neuron" and pop.bias is not None:
            pop.bias = np.broadcast_to(pop.bias, shape).astype(np.float64).copy()
        pops[name] = pop
    readout_syns, readout_bias = _readout(graph, preds, is_pop)
    return FloatGraph(input_shape, levels, timesteps, pops, syns + readout_syns, readout_bias, meta)


def _readout(graph: nir.NIRGraph, preds, is_pop) -> tuple[list[FloatSynapse], np.ndarray]:
    """Fold ``Output <- Affine <- [Flatten] <- [pooling] <- populations`` into dense readout synapses."""
    nodes = graph.nodes
    chain = []
    cur = "output"
    while True:
        ps = preds[cur]
        if len(ps) != 1 and not all(is_pop(p) for p in ps):
            raise UnsupportedModelError(f"the readout node {cur} has several inputs that are not populations")
        if all(is_pop(p) for p in ps):
            sources = ps
            break
        cur = ps[0]
        if not isinstance(nodes[cur], (nir.Affine, nir.Linear, nir.Flatten, nir.AvgPool2d, nir.SumPool2d)):
            raise UnsupportedModelError(
                f"NIR node {cur} ({type(nodes[cur]).__name__}) is in the readout; xoresnet reads out through "
                "Affine/Linear, Flatten and pooling")
        chain.append(nodes[cur])
    affine = chain[0] if chain and isinstance(chain[0], (nir.Affine, nir.Linear)) else None
    if affine is None:
        raise UnsupportedModelError("the Output node must be fed by an Affine or Linear node")
    bias = np.asarray(getattr(affine, "bias", np.zeros(np.asarray(affine.weight).shape[0])), np.float64)
    shapes = {_shape_of(nodes[s]) for s in sources}
    if len(shapes) != 1:
        raise UnsupportedModelError(f"readout sources have different shapes {sorted(shapes)}")
    shape = shapes.pop()
    n = int(np.prod(shape))

    def apply(x: torch.Tensor) -> torch.Tensor:  # the chain as a linear map on [N, *shape]
        for node in reversed(chain):
            if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
                k = pair(node.kernel_size)
                x = F.avg_pool2d(x, k, stride=pair(node.stride), padding=pair(node.padding))
                if isinstance(node, nir.SumPool2d):
                    x = x * (k[0] * k[1])
            elif isinstance(node, nir.Flatten):
                x = x.flatten(1)
            else:
                x = x.flatten(1) @ torch.as_tensor(np.asarray(node.weight), dtype=torch.float64).T
        return x

    if _is_global_pool_affine(chain, shape):
        weight = global_pool_readout(np.asarray(affine.weight, np.float64), shape[1:])
    else:
        eye = torch.eye(n, dtype=torch.float64).view((n,) + shape)
        weight = apply(eye).T.numpy()  # [K, N]
    syns = [FloatSynapse(f"readout:{s}", s, READOUT, "dense", weight.copy()) for s in sources]
    return syns, bias


def _is_global_pool_affine(chain: list, shape: tuple[int, ...]) -> bool:
    """``Affine <- Flatten <- AvgPool2d`` pooling the whole (H, W) of a (C, H, W) source."""
    return (len(chain) == 3 and isinstance(chain[0], (nir.Affine, nir.Linear)) and isinstance(chain[1], nir.Flatten)
            and isinstance(chain[2], nir.AvgPool2d) and len(shape) == 3
            and pair(chain[2].kernel_size) == tuple(shape[1:]) and pair(chain[2].stride) == tuple(shape[1:])
            and pair(chain[2].padding) == (0, 0))


def global_pool_readout(weight, spatial: tuple[int, int]):
    """``Affine(Flatten(AvgPool over all of H x W))`` as one dense matrix over the ``(C, H, W)``-flattened
    source: ``W[k, c] / (H * W)`` repeated over the positions. Works on numpy arrays and torch tensors
    (the same float64 arithmetic in both, so quantization-aware training reproduces it exactly)."""
    hw = int(spatial[0]) * int(spatial[1])
    scaled = weight / hw
    if isinstance(scaled, torch.Tensor):
        return scaled.repeat_interleave(hw, dim=1)
    return np.repeat(scaled, hw, axis=1)
