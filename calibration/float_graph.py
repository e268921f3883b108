"""Read a float NIR graph as Loihi populations and synapses (before quantization).

Every neuron node (IF, LIF, CubaLIF) and every Threshold node becomes a population. What feeds a
population is a *linear region*: the nodes between it and its sources (the Input or other
populations) that are Conv2d, Affine, Linear, Flatten, SumPool2d, AvgPool2d, Scale or Delay.
Every path from a source through the region becomes one synapse:

* no node, or only Scale/Flatten/Delay -> identity synapse (spikes as a current of their weight);
* one Conv2d -> conv synapse (dilation written into a zero-filled kernel, stride, padding, groups);
* one SumPool2d/AvgPool2d -> depthwise conv synapse with a constant kernel;
* one Affine/Linear (after a Flatten) -> dense synapse over the source flattened in (C, H, W) order;
* any other chain -> one dense synapse, the chain's matrix computed on the source's unit vectors
  (at most :data:`MAX_COMPOSED_WEIGHTS` weights);

uniform Scales fold into the weights, Delays into ``model_delay`` (whole steps the model itself
delays: part of its meaning, kept by :func:`calibration.schedule.schedule`). The region's biases (conv
and Affine biases, carried through what follows them) join the population's bias.

The Output's region is the readout (:mod:`calibration.readout`): ``spike-count`` reads a spiking
population (one dense identity synapse per spike); ``membrane`` reads an LI layer or a synapse
chain (one dense synapse per source population, the chain folded in; an LI's ``r`` and ``v_leak``
fold into the weights and the bias, its leak into the time weights of the mean).

Neuron parameters map onto Loihi's ``v = v(1 - dv) + u + bias``, ``u = u(1 - du) + gain * x``
(our discretization, :mod:`xoresnet.nir.interpreter`): IF ``gain = dt r``; LIF ``dv = dt/tau``,
``gain = dv r``, ``bias = dv v_leak``; CubaLIF ``du = dt/tau_syn``, ``dv = dt/tau_mem``,
``gain = du w_in dv r``, ``bias = dv v_leak``; a Threshold on integer weights is a gate (memoryless
spike logic), on other weights a neuron with ``du = dv = 1``. ``du``/``dv``/``vth``/``gain`` must
be uniform over a population (Loihi holds them per population) and ``v_reset`` 0. Decays must lie
on Loihi's 12-bit grid (``du`` in ``(k+1)/4096``, ``dv`` in ``k/4096``) within the graph's
``decay_grid`` tolerance (metadata; default :data:`DEFAULT_DECAY_TOLERANCE`), or are snapped to
the nearest grid point when the metadata asks for it, recorded with their error under
``meta["decay_grid"]``; gains use the exact decays. Anything else raises
:class:`~xoresnet.errors.UnsupportedModelError` naming the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import nir
import numpy as np
import torch
import torch.nn.functional as F

from xoresnet.nir.export import read_meta
from xoresnet.nir.interpreter import NEURON_TYPES, delay_steps, input_node, pair, predecessors, topological_order
from xoresnet.decay_grid import DECAY_UNITY, bracketing_decay_codes, decay_fraction, nearest_decay_code
from xoresnet.errors import UnsupportedModelError

from .integer_graph import INPUT, READOUT
from .readout import READOUT_KEY

DEFAULT_DECAY_TOLERANCE = 1e-6
#: The largest dense matrix a composed chain (or an identity across a reshape) may become.
MAX_COMPOSED_WEIGHTS = 1 << 24
#: Nodes a linear region may hold.
LINEAR_TYPES = (nir.Conv2d, nir.Affine, nir.Linear, nir.Flatten, nir.SumPool2d, nir.AvgPool2d, nir.Scale, nir.Delay)


@dataclass
class FloatPopulation:
    name: str
    shape: tuple[int, ...]
    kind: str  # "neuron" | "gate"
    du_fraction: float = 1.0  # the current's decay per step, on Loihi's grid (xoresnet.decay_grid)
    dv_fraction: float = 1.0  # the voltage's decay per step, on Loihi's grid
    vth: float = 0.5  # float units (gates: the Threshold value on integer input sums)
    bias: Optional[np.ndarray] = None  # float64 [shape], added to v every step (neurons)
    op: Optional[str] = None
    block: Optional[str] = None
    role: str = "other"  # calibration.integer_graph.POPULATION_ROLES, from the node metadata (population_role)


def population_role(ann: dict[str, Any]) -> str:
    """What a population node is in the model (:data:`calibration.integer_graph.POPULATION_ROLES`), from
    its metadata (:func:`xoresnet.nir.export.read_meta`): its ``block_role`` in a residual block, a
    ``gate_part``, ``stem`` for our nodes outside any block; ``other`` for nodes without our metadata
    (NIR graphs of other tools) or without a block role."""
    if not ann:
        return "other"
    if ann.get("block_role"):
        return str(ann["block_role"])
    if ann.get("role") == "gate_part":
        return "gate_part"
    return "stem" if not ann.get("block") else "other"


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
    model_delay: int = 0  # whole steps the model delays this synapse (NIR Delay nodes)


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


@dataclass
class DecayGrid:
    """How decays meet Loihi's 12-bit grid: within ``tolerance`` (absolute, on the decay fraction) they
    take the grid value; beyond it they are refused, or with ``snap`` take the nearest grid value and
    are listed in ``snapped``."""

    tolerance: float = DEFAULT_DECAY_TOLERANCE
    snap: bool = False
    snapped: list[dict[str, Any]] = field(default_factory=list)

    def decay(self, name: str, what: str, value: float, offset: int) -> float:
        """``value`` on the grid ``(k + offset) / 4096``, ``k`` in 0..4095 (``offset`` 1: the current decay
        ``du + 1``; 0: the voltage decay)."""
        k, _ = nearest_decay_code(value, offset=offset)
        grid = decay_fraction(k, offset=offset)
        error = value - grid
        if abs(error) <= self.tolerance:
            return grid
        if self.snap:
            self.snapped.append({"node": name, "what": what, "value": value, "grid": grid, "code": k,
                                 "grid_fraction": f"{k + offset}/{DECAY_UNITY}", "error": error})
            return grid
        legal = " and ".join(f"{c + offset}/{DECAY_UNITY} = {decay_fraction(c, offset=offset):.8g}"
                             for c in bracketing_decay_codes(value, offset=offset))
        raise UnsupportedModelError(
            f"NIR node {name}: {what} = {value:.8g} is not on Loihi's 12-bit decay grid (off by {abs(error):.3g}, "
            f"tolerance {self.tolerance:g}); nearest legal values {legal}: pass --snap-decays to use the nearest "
            "(the report shows the error), or a larger --decay-tolerance")


def _snap_unity(x: float) -> float:
    return 1.0 if abs(x - 1.0) < 1e-6 else x


def _neuron_params(name: str, node: nir.NIRNode, dt: float, grid: DecayGrid
                   ) -> tuple[float, float, float, float, np.ndarray]:
    """(du, dv, vth, gain, bias [shape]) in Loihi's discrete form."""
    vth = _uniform(name, "v_threshold", node.v_threshold)
    if np.any(np.asarray(node.v_reset) != 0):
        raise UnsupportedModelError(f"NIR node {name} resets to v_reset != 0; Loihi 2's LIF resets v to 0")
    shape = np.asarray(node.v_threshold).shape
    if isinstance(node, nir.IF):
        return 1.0, 0.0, vth, _snap_unity(dt * _uniform(name, "r", node.r)), np.zeros(shape)
    if isinstance(node, nir.LIF):
        exact = dt / _uniform(name, "tau", node.tau)
        dv = grid.decay(name, "dt/tau", exact, 0)
        return 1.0, dv, vth, _snap_unity(exact * _uniform(name, "r", node.r)), \
            exact * np.asarray(node.v_leak, np.float64)
    du_exact = dt / _uniform(name, "tau_syn", node.tau_syn)
    dv_exact = dt / _uniform(name, "tau_mem", node.tau_mem)
    du = grid.decay(name, "dt/tau_syn", du_exact, 1)
    dv = grid.decay(name, "dt/tau_mem", dv_exact, 0)
    gain = _snap_unity(du_exact * _uniform(name, "w_in", node.w_in) * dv_exact * _uniform(name, "r", node.r))
    return du, dv, vth, gain, dv_exact * np.asarray(node.v_leak, np.float64)


def _shape_of(node: nir.NIRNode) -> tuple[int, ...]:
    for attr in ("v_threshold", "threshold", "tau"):
        if hasattr(node, attr):
            return tuple(np.asarray(getattr(node, attr)).shape)
    raise AssertionError(type(node))


# ---------------------------------------------------------------------- linear regions

def _dilated(w: np.ndarray, dilation: tuple[int, int]) -> np.ndarray:
    """A ``[C_out, C_in/g, kH, kW]`` kernel with dilation written out as zeros (the same convolution)."""
    if dilation == (1, 1):
        return w
    dh, dw = dilation
    kh, kw = w.shape[2:]
    out = np.zeros(w.shape[:2] + ((kh - 1) * dh + 1, (kw - 1) * dw + 1), w.dtype)
    out[:, :, ::dh, ::dw] = w
    return out


def _apply(node: nir.NIRNode, x: torch.Tensor, dt: float) -> torch.Tensor:
    """The linear part of ``node`` (no bias) on a batch ``x [N, *shape]`` (float64)."""
    if isinstance(node, nir.Conv2d):
        return F.conv2d(x, torch.as_tensor(np.asarray(node.weight), dtype=x.dtype), stride=pair(node.stride),
                        padding=pair(node.padding), dilation=pair(node.dilation), groups=int(node.groups))
    if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
        k = pair(node.kernel_size)
        y = F.avg_pool2d(x, k, stride=pair(node.stride), padding=pair(node.padding))
        return y * (k[0] * k[1]) if isinstance(node, nir.SumPool2d) else y
    if isinstance(node, nir.Flatten):
        start, end = (int(d) + 1 if int(d) >= 0 else int(d) for d in (node.start_dim, node.end_dim))
        return x.flatten(start, end)
    if isinstance(node, (nir.Affine, nir.Linear)):
        return x @ torch.as_tensor(np.asarray(node.weight), dtype=x.dtype).T
    if isinstance(node, nir.Scale):
        return x * torch.as_tensor(np.asarray(node.scale), dtype=x.dtype)
    if isinstance(node, nir.Delay):
        return x
    raise AssertionError(type(node))


def _bias(node: nir.NIRNode, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """The constant ``node`` adds to its output of ``shape`` (None when it adds none)."""
    b = getattr(node, "bias", None) if isinstance(node, (nir.Conv2d, nir.Affine)) else None
    if b is None or not np.any(np.asarray(b) != 0):
        return None
    b = np.asarray(b, np.float64)
    return np.broadcast_to(b.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()


@dataclass
class Path:
    """One route from a source (the Input or a population) through linear nodes to a consumer."""

    source: str
    ops: list[str]  # node names, source side first


class _Regions:
    """The linear regions of a graph: paths into a node, the constants they carry, their matrices."""

    def __init__(self, graph: nir.NIRGraph, is_source, shapes: dict[str, tuple[int, ...]], dt: float):
        self.graph, self.nodes, self.is_source, self.shapes, self.dt = graph, graph.nodes, is_source, shapes, dt
        self.preds = predecessors(graph)

    def paths(self, dst: str) -> list[Path]:
        """Every path into ``dst``, in the order of its predecessors (depth first)."""
        out: list[Path] = []
        for q in self.preds[dst]:
            if self.is_source(q):
                out.append(Path(q, []))
            elif isinstance(self.nodes[q], LINEAR_TYPES):
                out += [Path(p.source, p.ops + [q]) for p in self.paths(q)]
            else:
                raise UnsupportedModelError(
                    f"NIR node {q} ({type(self.nodes[q]).__name__}) feeds {dst}; xoresnet maps Conv2d, Affine, Linear, "
                    "Flatten, SumPool2d, AvgPool2d, Scale, Delay or direct edges between populations")
        return out

    def region(self, dst: str) -> list[str]:
        """The linear nodes upstream of ``dst`` up to its sources (each once, topological)."""
        seen: list[str] = []

        def visit(n: str) -> None:
            for q in self.preds[n]:
                if not self.is_source(q) and isinstance(self.nodes[q], LINEAR_TYPES) and q not in seen:
                    visit(q)
                    seen.append(q)
        visit(dst)
        return seen

    def chain(self, ops: list[str], x: torch.Tensor) -> torch.Tensor:
        for n in ops:
            x = _apply(self.nodes[n], x, self.dt)
        return x

    def constant(self, dst: str, shape: tuple[int, ...]) -> Optional[np.ndarray]:
        """What the region's biases add to ``dst``'s input (``[shape]``, float64), None if nothing."""
        total = None
        for n in self.region(dst):
            b = _bias(self.nodes[n], self.shapes[n])
            if b is None:
                continue
            for tail in self.tails(n, dst):
                if any(isinstance(self.nodes[m], nir.Delay) for m in tail):
                    raise UnsupportedModelError(f"NIR node {n}: its bias passes through a Delay before {dst}, which "
                                                "makes it vary in time; Loihi adds biases at every step")
                y = self.chain(tail, torch.as_tensor(b).unsqueeze(0))[0].reshape(shape).numpy()
                total = y if total is None else total + y
        return total

    def tails(self, n: str, dst: str) -> list[list[str]]:
        """Every path of linear nodes from ``n`` (exclusive) to ``dst`` (exclusive)."""
        if n in self.preds[dst]:
            direct = [[]]
        else:
            direct = []
        out = list(direct)
        for m in self.graph_succ(n):
            if m != dst and isinstance(self.nodes[m], LINEAR_TYPES) and not self.is_source(m):
                out += [[m] + t for t in self.tails(m, dst)]
        return out

    def graph_succ(self, n: str) -> list[str]:
        return [b for a, b in self.graph.edges if a == n]

    def matrix(self, path: Path, src_shape: tuple[int, ...], dst_shape: tuple[int, ...], what: str) -> np.ndarray:
        """The dense ``[N_dst, N_src]`` matrix of the path's chain (its linear part)."""
        n_src, n_dst = math.prod(src_shape), math.prod(dst_shape)
        if n_src * n_dst > MAX_COMPOSED_WEIGHTS:
            raise UnsupportedModelError(
                f"NIR path {' -> '.join([path.source] + path.ops + [what])} composes into a dense matrix of {n_dst} x "
                f"{n_src} weights (more than {MAX_COMPOSED_WEIGHTS}); xoresnet lowers one Conv2d, pooling or "
                "Affine/Linear per synapse")
        eye = torch.eye(n_src, dtype=torch.float64).view((n_src,) + tuple(src_shape))
        return self.chain(path.ops, eye).reshape(n_src, n_dst).T.numpy().copy()


def _uniform_scale(node: nir.Scale) -> Optional[float]:
    s = np.asarray(node.scale, np.float64)
    return float(s.flat[0]) if s.size and np.all(s == s.flat[0]) else None


def _path_name(path: Path, dst: str, regions: _Regions, used: set[str]) -> str:
    """``src->dst`` (a direct edge), ``q`` (one node read by one source), ``q:src->dst`` (one Scale, or one
    node with several sources), else the whole route; the route also when the short name is taken (a
    node fanning out to several populations)."""
    if not path.ops:
        name = f"{path.source}->{dst}"
    elif len(path.ops) == 1:
        q = path.ops[0]
        several = len(regions.preds[q]) > 1 or isinstance(regions.nodes[q], nir.Scale)
        name = f"{q}:{path.source}->{dst}" if several else q
    else:
        name = "->".join([path.source] + path.ops + [dst])
    if name in used:
        name = "->".join([path.source] + path.ops + [dst])
    used.add(name)
    return name


def _synapse(regions: _Regions, path: Path, dst: str, dst_shape: tuple[int, ...], gain: float, levels: int,
             src_shape: tuple[int, ...], name: str) -> FloatSynapse:
    """The synapse of one path into population ``dst`` (its neuron gain folded in)."""
    nodes = regions.nodes
    factor, delay, core, odd_scale = gain, 0, [], False
    for n in path.ops:
        node = nodes[n]
        if isinstance(node, nir.Delay):
            delay += delay_steps(node, regions.dt)
        elif isinstance(node, nir.Scale):
            s = _uniform_scale(node)
            if s is None:
                odd_scale = True
            else:
                factor *= s
        elif not isinstance(node, nir.Flatten):
            core.append(n)
    graded = path.source == INPUT
    if graded:
        factor /= levels
    common = dict(graded=graded, model_delay=delay)
    if not core and not odd_scale and tuple(src_shape) == tuple(dst_shape):
        return FloatSynapse(name, path.source, dst, "identity", np.full(dst_shape, factor, np.float64), **common)
    if not core and tuple(src_shape) == tuple(dst_shape):  # per-element scales only: still one weight per element
        w = regions.chain([n for n in path.ops if isinstance(nodes[n], nir.Scale)],
                          torch.ones((1,) + tuple(dst_shape), dtype=torch.float64))[0].numpy()
        return FloatSynapse(name, path.source, dst, "identity", w * factor, **common)
    if len(core) == 1 and not odd_scale:
        node = nodes[core[0]]
        if isinstance(node, nir.Conv2d) and len(src_shape) == 3:
            w = _dilated(np.asarray(node.weight, np.float64), pair(node.dilation)) * factor
            return FloatSynapse(name, path.source, dst, "conv", w, stride=pair(node.stride),
                                padding=pair(node.padding), groups=int(node.groups), **common)
        if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)) and len(src_shape) == 3:
            k = pair(node.kernel_size)
            value = 1.0 if isinstance(node, nir.SumPool2d) else 1.0 / (k[0] * k[1])
            c = src_shape[0]
            return FloatSynapse(name, path.source, dst, "conv", np.full((c, 1) + k, value * factor),
                                stride=pair(node.stride), padding=pair(node.padding), groups=c, **common)
        if isinstance(node, (nir.Affine, nir.Linear)) and len(dst_shape) == 1:
            return FloatSynapse(name, path.source, dst, "dense", np.asarray(node.weight, np.float64) * factor, **common)
    w = regions.matrix(path, src_shape, dst_shape, dst) * factor
    return FloatSynapse(name, path.source, dst, "dense", w, **common)


def _infer_shapes(graph: nir.NIRGraph, order: list[str], input_name: str) -> dict[str, tuple[int, ...]]:
    """The output shape of every node (no batch), by running one zero frame through the linear nodes."""
    preds = predecessors(graph)
    shapes: dict[str, tuple[int, ...]] = {}
    for n in order:
        node = graph.nodes[n]
        if n == input_name:
            shapes[n] = tuple(int(v) for v in np.asarray(node.input_type["input"]))
        elif isinstance(node, LINEAR_TYPES):
            s = shapes[preds[n][0]]
            shapes[n] = tuple(_apply(node, torch.zeros((1,) + s, dtype=torch.float64), 1.0).shape[1:])
        else:
            shapes[n] = shapes[preds[n][0]] if preds[n] else ()
    return shapes


def nir_to_float_graph(graph: nir.NIRGraph) -> FloatGraph:
    """Populations, synapses and readout of ``graph`` (see the module docstring for the rules)."""
    meta = dict(read_meta(graph))
    dt = float(np.asarray(graph.metadata.get("dt", 1.0)))
    grid_meta = meta.get("decay_grid") or {}
    grid = DecayGrid(float(grid_meta.get("tolerance", DEFAULT_DECAY_TOLERANCE)), bool(grid_meta.get("snap", False)))
    order = topological_order(graph.nodes, graph.edges)
    nodes = graph.nodes
    input_name = input_node(graph)
    if "output" not in nodes or not isinstance(nodes["output"], nir.Output):
        raise UnsupportedModelError("the NIR graph needs an Output node named 'output'")
    shapes = _infer_shapes(graph, order, input_name)
    nir_input = shapes[input_name]
    image = tuple(int(v) for v in meta.get("image_shape") or ())
    if len(nir_input) == 3:
        input_shape = nir_input
    elif len(nir_input) == 1 and len(image) == 3 and math.prod(image) == nir_input[0]:
        input_shape = image
    elif len(nir_input) == 1:
        input_shape = (nir_input[0], 1, 1)
    else:
        raise UnsupportedModelError(f"input shape {nir_input} is neither (C, H, W) nor (N,)")
    levels = int(meta.get("input_levels", 255))
    timesteps = int(meta.get("timesteps", 0))
    if timesteps < 1:
        raise UnsupportedModelError("the NIR graph's metadata does not give the number of timesteps")

    def is_pop(n: str) -> bool:
        return isinstance(nodes[n], NEURON_TYPES + (nir.Threshold,))

    def src_shape(n: str) -> tuple[int, ...]:
        return tuple(input_shape) if n == INPUT else shapes[n]

    regions = _Regions(graph, lambda n: n == input_name or is_pop(n), shapes, dt)
    rename = (lambda n: INPUT if n == input_name else n)
    pops: dict[str, FloatPopulation] = {}
    syns: list[FloatSynapse] = []
    used: set[str] = set()
    for name in order:
        node = nodes[name]
        if not is_pop(name):
            if isinstance(node, nir.LI) and "output" not in [b for a, b in graph.edges if a == name]:
                raise UnsupportedModelError(f"NIR node {name} (LI): a non-spiking LI layer is supported only as the "
                                            "readout, right before the Output")
            continue
        ann = read_meta(node)
        shape = _shape_of(node)
        paths = regions.paths(name)
        if not paths:
            raise UnsupportedModelError(f"NIR node {name} ({type(node).__name__}) has no input")
        gain = 1.0
        if not isinstance(node, nir.Threshold):
            du, dv, vth, gain, bias = _neuron_params(name, node, dt, grid)
            pop = FloatPopulation(name, shape, "neuron", du_fraction=du, dv_fraction=dv, vth=vth,
                                  bias=np.array(bias, np.float64), block=ann.get("block"), role=population_role(ann))
        incoming = []
        for path in paths:
            if path.source == input_name and not path.ops:
                raise UnsupportedModelError(f"the input feeds population {name} without a synapse")
            src = rename(path.source)
            syn_name = _path_name(Path(src, path.ops), name, regions, used)
            incoming.append(_synapse(regions, Path(src, path.ops), name, shape, gain, levels, src_shape(src), syn_name))
        syns += incoming
        const = regions.constant(name, shape)
        if isinstance(node, nir.Threshold):
            pop = _threshold_population(name, node, ann, incoming, const is None, grid)
        if const is not None:
            if pop.kind == "gate" or pop.du_fraction != 1.0:
                raise UnsupportedModelError(
                    f"NIR node {name} receives a bias (from {', '.join(regions.region(name))}), but its current decays "
                    "(or it is a gate); Loihi adds biases to v: put it in the neuron's v_leak, or train without it")
            pop.bias = pop.bias + gain * const
        if pop.kind == "neuron" and pop.bias is not None:
            pop.bias = np.broadcast_to(pop.bias, shape).astype(np.float64).copy()
        pops[name] = pop
    readout_syns, readout_bias, decoding = _readout(graph, regions, is_pop, rename, src_shape, meta, dt, used)
    meta[READOUT_KEY] = decoding
    meta["decay_grid"] = {"tolerance": grid.tolerance, "snap": grid.snap, "snapped": grid.snapped}
    return FloatGraph(tuple(input_shape), levels, timesteps, pops, syns + readout_syns, readout_bias, meta)


def _threshold_population(name: str, node: nir.Threshold, ann: dict, incoming: list[FloatSynapse],
                          no_bias: bool, grid: DecayGrid) -> FloatPopulation:
    """A Threshold: a gate when it reads spikes through integer weights and no bias (our spike logic),
    else a memoryless neuron (``du = dv = 1``; Loihi's largest voltage decay is 4095/4096: the decay
    grid rule applies)."""
    shape = _shape_of(node)
    vth = _uniform(name, "threshold", node.threshold)
    if no_bias and all(not s.graded and np.array_equal(s.weight, np.round(s.weight)) for s in incoming):
        op = ann.get("op")
        if op and ann.get("part"):
            op = f"{op}.{ann['part']}"
        return FloatPopulation(name, shape, "gate", du_fraction=1.0, dv_fraction=1.0, vth=vth, op=op,
                               block=ann.get("block"), role=population_role(ann))
    dv = grid.decay(name, "the voltage decay of a memoryless Threshold (needs 4096/4096)", 1.0, 0)
    return FloatPopulation(name, shape, "neuron", du_fraction=1.0, dv_fraction=dv, vth=vth, bias=np.zeros(shape),
                           block=ann.get("block"), role=population_role(ann))


def _readout(graph: nir.NIRGraph, regions: _Regions, is_pop, rename, src_shape, meta: dict, dt: float,
             used: set[str]) -> tuple[list[FloatSynapse], np.ndarray, dict[str, Any]]:
    """The readout synapses into ``READOUT``, their bias and the decoding rule (:mod:`calibration.readout`)."""
    nodes, preds = graph.nodes, regions.preds
    last = preds["output"][0] if len(preds["output"]) == 1 else None
    through = last
    while through is not None and isinstance(nodes[through], nir.Flatten) and len(preds[through]) == 1:
        through = preds[through][0]
    rule = meta.get("readout_rule") or ("spike-count" if through is not None and is_pop(through) else "membrane")
    if rule == "spike-count":
        if through is None or not is_pop(through):
            raise UnsupportedModelError("the spike-count readout needs the Output to read one spiking population")
        k = math.prod(regions.shapes[through])
        syn = FloatSynapse(f"readout:{through}", through, READOUT, "dense", np.eye(k))
        used.add(syn.name)
        return [syn], np.zeros(k), {"rule": "spike-count", "population": through, "li_leak": None}
    consumer, gain, leak, v_leak = "output", None, None, None
    if last is not None and isinstance(nodes[last], nir.LI):
        li = nodes[last]
        consumer = last
        gain = np.asarray(li.r, np.float64).reshape(-1)
        leak = (dt / np.asarray(li.tau, np.float64)).reshape(-1)
        v_leak = np.asarray(li.v_leak, np.float64).reshape(-1)
    paths = regions.paths(consumer)
    if not paths or any(not is_pop(p.source) for p in paths):
        raise UnsupportedModelError("the readout must read populations (through Affine/Linear, Conv2d, Flatten, pooling "
                                    "or Scale), not the input")
    if any(isinstance(nodes[n], nir.Delay) for p in paths for n in p.ops):
        raise UnsupportedModelError("a Delay in the readout is not supported (delay the populations it reads instead)")
    out_shape = regions.shapes[last] if last is not None else None
    K = math.prod(out_shape) if out_shape else 0
    syns = []
    for p in paths:
        shape = src_shape(p.source)
        if _is_global_pool_affine([nodes[n] for n in p.ops], shape):
            w = global_pool_readout(np.asarray(nodes[p.ops[-1]].weight, np.float64), shape[1:])
        else:
            w = regions.matrix(p, shape, (K,), "readout")
        name = f"readout:{p.source}"
        if name in used:
            name = "->".join(["readout:" + p.source] + p.ops)
        used.add(name)
        syns.append(FloatSynapse(name, rename(p.source), READOUT, "dense", w))
    const = regions.constant(consumer, (K,))
    bias = const.reshape(-1) if const is not None else np.zeros(K)
    decoding: dict[str, Any] = {"rule": "membrane", "li_leak": None}
    if gain is not None:
        for s in syns:
            s.weight = s.weight * gain[:, None]
        bias = bias * gain + v_leak
        decoding.update(li=last, li_leak=leak.tolist(), li_r=gain.tolist())
    return syns, bias, decoding


def _is_global_pool_affine(chain: list, shape: tuple[int, ...]) -> bool:
    """``AvgPool2d -> Flatten -> Affine`` (source side first) pooling the whole (H, W) of a (C, H, W) source."""
    return (len(chain) == 3 and isinstance(chain[2], (nir.Affine, nir.Linear)) and isinstance(chain[1], nir.Flatten)
            and isinstance(chain[0], nir.AvgPool2d) and len(shape) == 3
            and pair(chain[0].kernel_size) == tuple(shape[1:]) and pair(chain[0].stride) == tuple(shape[1:])
            and pair(chain[0].padding) == (0, 0))


def global_pool_readout(weight, spatial: tuple[int, int]):
    """``Affine(Flatten(AvgPool over all of H x W))`` as one dense matrix over the ``(C, H, W)``-flattened
    source: ``W[k, c] / (H * W)`` repeated over the positions. Works on numpy arrays and torch tensors
    (the same float64 arithmetic in both, so quantization-aware training reproduces it exactly)."""
    hw = int(spatial[0]) * int(spatial[1])
    scaled = weight / hw
    if isinstance(scaled, torch.Tensor):
        return scaled.repeat_interleave(hw, dim=1)
    return np.repeat(scaled, hw, axis=1)
