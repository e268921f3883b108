"""Lower an :class:`~calibration.integer_graph.IntegerGraph` to a graph of Lava processes.

Only stock ``lava.proc`` processes are used (Intel's tools check the process classes); the run
configuration pins each to a process model (:func:`model_table`: ours from
:mod:`deploy.lava_models` where we have one, computing Intel's integers fast, else Intel's):

===============================  ===========================================================
integer graph                    Lava (lava-nc 0.10.0, ``Loihi2SimCfg(select_tag="fixed_pt")``)
===============================  ===========================================================
``Population``                   ``lif.process.LIFReset(shape, du, dv, vth, bias_mant, bias_exp,
                                 reset_interval=P, reset_offset=(1 + latency) % P)``, one per
                                 part of its ``core_plan`` cut (:func:`population_parts`)
``partial_sum`` population       ``graded.process.GradedVec(shape, vth=0)`` per part: sends its
                                 summed input as a 24-bit graded spike (a fan-in split part)
``conv`` synapse                 ``conv.process.Conv`` (true convolution, kernel flipped,
                                 ``(C_out, kX, kY, C_in/groups)``; no weight_exp, no delay)
``identity`` synapse             ``sparse.process.Sparse`` with a diagonal CSR matrix
                                 (``DelaySparse`` with an int64 CSR ``delays`` if delayed),
                                 ``src.s_out.flatten() -> s_in``, ``a_out.reshape(dst) -> a_in``;
                                 one named in ``core_plan.depthwise``: ``Conv`` with ``groups = C``
                                 and a ``(C, 1, 1, 1)`` kernel (``core_plan.as_depthwise``)
``dense`` synapse                ``dense.process.Dense`` (``DelayDense`` if delayed), columns
                                 (and rows, into a population) permuted to Lava flatten order
synapse between cut populations  one process per block of its weights between a source part
                                 and a destination part (:func:`synapse_blocks`), summed at the
                                 destination part's InPort in the same step; ``src_channels``:
                                 only the source parts in that range
graded synapse                   ``num_message_bits`` 8 from the input, 24 from a partial sum
readout synapses                 all ``Dense`` a_outs into ONE ``Extractor`` (InPorts sum):
                                 the per-step integer logits, without ``readout_bias``
input                            ``io.source.RingBuffer`` ``(W, H, C, S)`` int32 holding the
                                 whole stream (sample ``n``'s pixels at steps ``n*P + 1 ..
                                 n*P + T``, zeros otherwise), graded (8-bit) into its synapses
recording                        one ``io.extractor.Extractor`` per population part's ``s_out``
                                 (spikes; a partial sum's payloads), parts put back together
population replayed in a slice   ``io.source.RingBuffer`` per part read, sending the reference's
                                 values (:class:`GraphSlice`; a slice that falls apart is joined
                                 by synapse-less ``Sparse`` links from one ``RingBuffer`` of zeros)
===============================  ===========================================================

Layout: our shapes are PyTorch ``(C, H, W)``; Lava's conv-shaped ports are ``(X=W, Y=H, C)``, so
arrays go through ``arr.transpose(2, 1, 0)`` (its own inverse). 1-D populations ``(N,)`` stay
as they are. Lava's ``flatten()`` is C-order over the Lava layout, so every flat vector (diagonal
weights, dense rows/columns) is permuted from PyTorch flatten order to Lava flatten order with
:func:`lava_flat_order`.

:func:`lava_plan` computes every process, parameter and connection as plain data and
:func:`lowered_arrays` every array in Lava layout (neither imports Lava);
:func:`describe_lava_network` turns the plan into the JSON of ``lava_graph.json``;
:func:`build_lava_network` instantiates the processes (importing Lava after
:func:`deploy.lava_compat.lava_ready`). Run it only in a child process
(:func:`deploy.lava_run.run_lava`): Lava hangs on some errors.

The extractors' channel depth is a parameter: :mod:`deploy.lava_worker` runs the stream in
chunks and drains the extractors after each, so the shared memory stays bounded for long streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from calibration.core_plan import lowered_synapses
from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Synapse
from xoresnet.errors import UnsupportedModelError

#: Name of the process that records the readout (in descriptions and results).
READOUT_PROBE = "readout"
#: Intel's ProcessModel for each process class: what ``Loihi2SimCfg(select_tag="fixed_pt")`` selects
#: (the Extractor has only an untagged model). See :func:`process_models`.
FIXED_PT_MODELS = {
    "RingBuffer": "lava.proc.io.source.PySendModelFixed",
    "LIFReset": "lava.proc.lif.models.PyLifResetModelBitAcc",
    "Conv": "lava.proc.conv.models.PyConvModelFixed",
    "Sparse": "lava.proc.sparse.models.PySparseModelBitAcc",
    "DelaySparse": "lava.proc.sparse.models.PyDelaySparseModelBitAcc",
    "Dense": "lava.proc.dense.models.PyDenseModelBitAcc",
    "DelayDense": "lava.proc.dense.models.PyDelayDenseModelBitAcc",
    "GradedVec": "lava.proc.graded.models.PyGradedVecModelFixed",
    "Extractor": "lava.proc.io.extractor.PyLoihiExtractorModel",
}
#: Model-table key of the readout probe (an ``Extractor`` that records integer sums, not spikes).
READOUT_PROBE_KEY = "Extractor:readout"
#: Model-table key of a partial sum's probe (an ``Extractor`` that records graded payloads).
VALUES_PROBE_KEY = "Extractor:values"
#: Model-table key of a ``RingBuffer`` that replays a population's spikes into a slice (:class:`GraphSlice`):
#: it sends bool, as a spiking population does (Intel's Dense indexes its weights with what it receives).
REPLAY_SPIKES_KEY = "RingBuffer:spikes"
#: Our process models (:mod:`deploy.lava_models`): the same values as Intel's, computed fast or sent
#: narrow (``tests/test_lava_models.py`` proves each equal to the Intel model it replaces).
XORESNET_MODELS = {
    "LIFReset": "deploy.lava_models.lif.PyLifResetModelFast",
    "Conv": "deploy.lava_models.conv.PyConvModelExact",
    "Sparse": "deploy.lava_models.sparse.PySparseModelFast",
    "DelaySparse": "deploy.lava_models.sparse.PyDelaySparseModelFast",
    "Extractor": "deploy.lava_models.extractor.PyExtractorModelSpikes",
    READOUT_PROBE_KEY: "deploy.lava_models.extractor.PyExtractorModelReadout",
    VALUES_PROBE_KEY: "deploy.lava_models.extractor.PyExtractorModelReadout",
    REPLAY_SPIKES_KEY: "deploy.lava_models.source.PySendModelSpikes",
}
#: Model sets a Lava run can use: ``xoresnet`` (default): ours where we have one, Intel's
#: elsewhere; ``lava``: Intel's fixed_pt models as lava-nc ships them. Keys: process class names,
#: :data:`READOUT_PROBE_KEY` for the readout probe and :data:`VALUES_PROBE_KEY` for partial sums' probes.
_INTEL = {**FIXED_PT_MODELS, READOUT_PROBE_KEY: FIXED_PT_MODELS["Extractor"],
          VALUES_PROBE_KEY: FIXED_PT_MODELS["Extractor"],
          REPLAY_SPIKES_KEY: XORESNET_MODELS[REPLAY_SPIKES_KEY]}  # test harness, not the network: always ours
MODEL_SETS = {"xoresnet": {**_INTEL, **XORESNET_MODELS}, "lava": _INTEL}
#: The module of each process class.
PROCESS_MODULES = {"RingBuffer": "lava.proc.io.source", "LIFReset": "lava.proc.lif.process",
                   "Conv": "lava.proc.conv.process", "Sparse": "lava.proc.sparse.process",
                   "DelaySparse": "lava.proc.sparse.process", "Dense": "lava.proc.dense.process",
                   "DelayDense": "lava.proc.dense.process", "GradedVec": "lava.proc.graded.process",
                   "Extractor": "lava.proc.io.extractor"}


def model_table(models: str = "xoresnet", overrides: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Model-table key (a process class name, or :data:`READOUT_PROBE_KEY`) -> dotted path of the
    ProcessModel it runs with, for the model set ``models`` (:data:`MODEL_SETS`) with ``overrides``
    (key -> dotted path; tests use it to inject a model) applied. No Lava import."""
    if models not in MODEL_SETS:
        raise ValueError(f"unknown model set {models!r}; known: {', '.join(MODEL_SETS)}")
    table = dict(MODEL_SETS[models])
    for cls, path in (overrides or {}).items():
        if cls not in table:
            raise ValueError(f"model override for unknown process {cls!r}; known: {', '.join(table)}")
        table[cls] = path
    return table


def model_origin(path: str) -> str:
    """``"lava"`` for a model shipped with lava-nc (Intel's), ``"xoresnet"`` for ours, else ``"other"``."""
    if path.startswith("lava."):
        return "lava"
    return "xoresnet" if path.startswith("deploy.lava_models.") else "other"


# ---------------------------------------------------------------------- layout helpers

def lava_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """PyTorch ``(C, H, W)`` -> Lava ``(W, H, C)``; other ranks are unchanged."""
    shape = tuple(int(s) for s in shape)
    return shape[::-1] if len(shape) == 3 else shape


def to_lava(arr: np.ndarray) -> np.ndarray:
    """An array in PyTorch ``(C, H, W)`` layout -> Lava ``(W, H, C)`` (1-D arrays unchanged)."""
    arr = np.asarray(arr)
    return arr.transpose(2, 1, 0) if arr.ndim == 3 else arr


def from_lava(arr: np.ndarray, lead: int = 0) -> np.ndarray:
    """Inverse of :func:`to_lava` on the trailing axes, keeping ``lead`` leading axes (e.g. steps)."""
    arr = np.asarray(arr)
    if arr.ndim - lead == 3:
        return arr.transpose(*range(lead), lead + 2, lead + 1, lead)
    return arr


def lava_flat_order(shape: tuple[int, ...]) -> np.ndarray:
    """``order[j]`` = PyTorch flat index of the element at Lava flat index ``j``.

    ``x_lava_flat = x_torch_flat[order]`` and ``W_lava = W_torch[:, order]`` (columns of a
    dense matrix reading a source of this shape)."""
    n = int(np.prod(shape))
    return to_lava(np.arange(n).reshape(shape)).ravel() if len(shape) == 3 else np.arange(n)


def conv_weight_to_lava(w: np.ndarray) -> np.ndarray:
    """PyTorch ``[C_out, C_in/g, kH, kW]`` (cross-correlation) -> Lava ``[C_out, kW, kH, C_in/g]``
    (true convolution: flipped kernel, as netx does)."""
    return np.ascontiguousarray(np.asarray(w)[:, :, ::-1, ::-1].transpose(0, 3, 2, 1))


def xy(pair: tuple[int, int]) -> tuple[int, int]:
    """Our ``(H, W)``-ordered stride/padding -> Lava's ``(X, Y)`` = ``(W, H)``."""
    return int(pair[1]), int(pair[0])


def input_stream(graph: IntegerGraph, pixels: np.ndarray, steps: Optional[int] = None) -> np.ndarray:
    """The RingBuffer data ``(W, H, C, S)`` int32 for a stream of ``pixels [N, C, H, W]``.

    Exactly the reference's layout (:meth:`calibration.reference.ReferenceSimulator.run_stream`): at
    step ``t`` (1-based), ``n, k = divmod(t - 1, P)``; sample ``n``'s pixels if ``n < N`` and
    ``k < T``, else zeros. Column ``t - 1`` is sent at step ``t``.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != tuple(graph.input_shape):
        raise ValueError(f"pixels must be [N, {', '.join(map(str, graph.input_shape))}], got {list(pixels.shape)}")
    N = pixels.shape[0]
    P, T = graph.reset_interval, graph.timesteps
    if steps is None:
        steps = graph.stream_steps(N)
    S = steps
    data = np.zeros(lava_shape(graph.input_shape) + (S,), dtype=np.int32)
    for t in range(1, S + 1):
        n, k = divmod(t - 1, P)
        if n < N and k < T:
            data[..., t - 1] = to_lava(pixels[n].astype(np.int32))
    return data


# ---------------------------------------------------------------------- the plan (pure data)

@dataclass
class ProcSpec:
    """One Lava process: ``cls`` (short class name), ``shape`` (Lava layout), ``params``
    (JSON-able description); ``role`` is population / synapse / input / probe."""

    name: str
    role: str
    cls: str
    shape: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None  # the graph object it lowers (population or synapse name)


@dataclass
class ConnSpec:
    """``src`` process port -> ``dst`` process port, with the virtual-port transform on the way."""

    src: str
    src_port: str
    dst: str
    dst_port: str
    transform: Optional[str] = None  # "flatten", "reshape(W,H,C)", "flatten+reshape(...)" or None


def proc_name(kind: str, name: str) -> str:
    return f"{kind}:{name}"


@dataclass(frozen=True)
class PopPart:
    """One process of a population: part ``index`` of its :class:`~calibration.core_plan.CorePlan`
    cut, ``channels`` ``(start, stop)`` along the population's first axis, ``shape`` in PyTorch
    layout; ``name`` the process name (``pop:<population>``, ``pop:<population>#<index>`` when cut)."""

    population: str
    index: int
    channels: tuple[int, int]
    shape: tuple[int, ...]
    name: str


def population_parts(graph: IntegerGraph) -> dict[str, list[PopPart]]:
    """Every population's processes, cut as ``graph.core_plan`` says (one part when it says nothing)."""
    out = {}
    plan = graph.core_plan
    for p in graph.populations.values():
        ranges = plan.ranges(p.name, p.shape[0]) if plan is not None else [(0, p.shape[0])]
        out[p.name] = [PopPart(p.name, i, (a, b), (b - a,) + tuple(p.shape[1:]),
                               proc_name("pop", p.name) + (f"#{i}" if len(ranges) > 1 else ""))
                       for i, (a, b) in enumerate(ranges)]
    return out


@dataclass(frozen=True)
class SynBlock:
    """One process of a synapse: the block of its weights from source part ``src`` (``src_channels``
    of the source) to destination part ``dst`` (``dst_channels``); ``name`` the process name
    (``syn:<synapse>``, ``syn:<synapse>#<src>.<dst>`` when the synapse has several blocks)."""

    synapse: str
    src: int
    dst: int
    src_channels: tuple[int, int]
    dst_channels: tuple[int, int]
    name: str


def _source_parts(graph: IntegerGraph, syn: Synapse, parts: dict[str, list[PopPart]]) -> list[PopPart]:
    """The source parts ``syn`` reads (whole: its ``src_channels`` cut the source at part ends)."""
    if syn.src == INPUT:
        shape = tuple(graph.input_shape)
        return [PopPart(INPUT, 0, (0, shape[0]), shape, proc_name("in", INPUT))]
    lo, hi = syn.src_channels if syn.src_channels is not None else (0, graph.source_shape(syn.src)[0])
    out = [p for p in parts[syn.src] if p.channels[0] < hi and lo < p.channels[1]]
    if out[0].channels[0] != lo or out[-1].channels[1] != hi:
        raise UnsupportedModelError(f"synapse {syn.name} reads channels {(lo, hi)} of {syn.src}, which the core plan "
                                    "does not cut there")
    return out


def synapse_blocks(graph: IntegerGraph, syn: Synapse, parts: dict[str, list[PopPart]]) -> list[SynBlock]:
    """The processes of ``syn`` between the parts of its source and destination
    (:mod:`calibration.core_plan`): every (source part, destination part) pair of a conv (groups 1)
    or dense synapse, the aligned pairs of a grouped conv (its destination is cut as its source),
    the pairs whose channels overlap of an identity synapse."""
    srcs = _source_parts(graph, syn, parts)
    k = graph.num_classes
    dsts = [PopPart(READOUT, 0, (0, k), (k,), "")] if syn.dst == READOUT else parts[syn.dst]
    r0 = syn.src_channels[0] if syn.src_channels is not None else 0
    pairs = []
    for s in srcs:
        a, b = s.channels[0] - r0, s.channels[1] - r0  # in the synapse's input channels
        for d in dsts:
            c, e = d.channels
            if syn.kind == "identity":
                keep = max(a, c) < min(b, e)
            elif syn.kind == "conv" and int(syn.groups) > 1:
                ipg, opg = int(np.shape(syn.weight)[1]), int(np.shape(syn.weight)[0]) // int(syn.groups)
                keep = (a * opg, b * opg) == (c * ipg, e * ipg)
                if max(a * opg, c * ipg) < min(b * opg, e * ipg) and not keep:
                    raise UnsupportedModelError(f"grouped conv {syn.name}: the core plan cuts {syn.dst} unlike {syn.src}")
            else:
                keep = True
            if keep:
                pairs.append((s, d))
    many = len(pairs) > 1
    return [SynBlock(syn.name, s.index, d.index, s.channels, d.channels,
                     proc_name("syn", syn.name) + (f"#{s.index}.{d.index}" if many else "")) for s, d in pairs]


def graph_synapses(graph: IntegerGraph) -> list[Synapse]:
    """``graph``'s synapses as they are lowered: those its core plan names ``depthwise`` as
    depthwise convolutions (:func:`calibration.core_plan.lowered_synapses`)."""
    return lowered_synapses(graph, graph.core_plan.depthwise if graph.core_plan is not None else frozenset())


@dataclass(frozen=True)
class GraphSlice:
    """A part of the graph that one Lava runtime simulates (:func:`deploy.lava_run.run_lava` runs a
    graph with more Lava processes than one runtime holds as a chain of slices, in topological
    order): ``populations`` are simulated (processes and probes as in the whole graph); every other
    population their synapses read is **replayed**: one ``RingBuffer`` per part, named as the part,
    sending at step ``t`` the values the integer reference computed for it at stream step ``t``
    (spikes as bool, :data:`REPLAY_SPIKES_KEY`; a partial sum's payloads as int32), which is when the
    population itself sends them. ``readout``: the readout synapses and probe are built."""

    populations: frozenset[str]
    readout: bool

    @classmethod
    def whole(cls, graph: IntegerGraph) -> "GraphSlice":
        """The whole graph: every population, the readout; nothing replayed."""
        return cls(frozenset(graph.populations), bool(graph.readout))

    def synapses(self, graph: IntegerGraph) -> list[Synapse]:
        """The lowered synapses (:func:`graph_synapses`) into the slice's populations and, with the
        readout, into it."""
        return [s for s in graph_synapses(graph) if s.dst in self.populations or (self.readout and s.dst == READOUT)]

    def replayed(self, graph: IntegerGraph) -> list[str]:
        """The populations outside the slice that its synapses read, in topological order."""
        read = {s.src for s in self.synapses(graph)}
        return [name for name in graph.populations if name in read and name not in self.populations]

    def replayed_parts(self, graph: IntegerGraph) -> list[PopPart]:
        """The parts of :meth:`replayed` populations that its synapses read (a synapse reading a
        channel range reads only the parts in it): one replaying ``RingBuffer`` each."""
        parts = population_parts(graph)
        replayed = set(self.replayed(graph))
        read = {part.name for s in self.synapses(graph) if s.src in replayed
                for part in _source_parts(graph, s, parts)}
        return [part for name in self.replayed(graph) for part in parts[name] if part.name in read]


def plan_slices(graph: IntegerGraph, max_processes: int) -> list[GraphSlice]:
    """``graph`` as a chain of :class:`GraphSlice` s of at most ``max_processes`` Lava processes each
    (population parts, their probes, the synapse blocks into them, the replaying ``RingBuffer`` s and
    the input): populations in topological order, each slice as many as fit (a population that
    alone needs more is a slice of its own), the readout with the last or after it; one slice,
    the whole graph, when it fits."""
    parts = population_parts(graph)
    lowered = graph_synapses(graph)
    blocks = {s.name: len(synapse_blocks(graph, s, parts)) for s in lowered}
    reads = {s.name: {p.name for p in _source_parts(graph, s, parts)} for s in lowered if s.src != INPUT}
    into: dict[str, list[Synapse]] = {}
    for s in lowered:
        into.setdefault(s.dst, []).append(s)

    def processes(populations: list[str], readout: bool) -> int:
        """What :func:`lava_plan` builds for the slice (links aside), from the sums above."""
        members = set(populations)
        syns = [s for dst in members | ({READOUT} if readout else set()) for s in into.get(dst, [])]
        replayed = {part for s in syns if s.src != INPUT and s.src not in members for part in reads[s.name]}
        return (sum(2 * len(parts[p]) for p in populations) + sum(blocks[s.name] for s in syns) + len(replayed)
                + any(s.src == INPUT for s in syns) + int(readout and bool(graph.readout)))

    whole = GraphSlice.whole(graph)
    if processes(list(graph.populations), whole.readout) <= max_processes:
        return [whole]
    chunks: list[list[str]] = [[]]
    for name in graph.populations:
        if chunks[-1] and processes(chunks[-1] + [name], False) > max_processes:
            chunks.append([])
        chunks[-1].append(name)
    out = [GraphSlice(frozenset(c), False) for c in chunks]
    if graph.readout:
        if processes(chunks[-1], True) <= max_processes:
            out[-1] = GraphSlice(out[-1].populations, True)
        else:
            out.append(GraphSlice(frozenset(), True))
    return [part for piece in out for part in _connected(graph, piece)]


def _connected(graph: IntegerGraph, piece: GraphSlice) -> list[GraphSlice]:
    """``piece`` as its connected parts, in topological order: Lava compiles and runs the processes
    connected to one root, so every slice must be connected (through its synapses, the input and
    the populations it replays)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s in piece.synapses(graph):
        parent[find(s.src)] = find(s.dst)
    for name in piece.populations:
        find(name)
    groups: dict[str, set[str]] = {}
    for name in piece.populations | ({READOUT} if piece.readout else set()):
        groups.setdefault(find(name), set()).add(name)
    parts = [GraphSlice(frozenset(g - {READOUT}), READOUT in g) for g in groups.values()]
    order = {name: i for i, name in enumerate(graph.populations)}
    return sorted(parts, key=lambda p: (p.readout, min((order[n] for n in p.populations), default=len(order))))


def _lava_index(shape: tuple[int, ...]) -> np.ndarray:
    """``index[t]`` = Lava flat index of the element at PyTorch flat index ``t`` (inverse of
    :func:`lava_flat_order`)."""
    order = lava_flat_order(shape)
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    return inv


def block_weights(graph: IntegerGraph, syn: Synapse, block: SynBlock, w: np.ndarray):
    """The weights of ``block`` of ``syn`` (``w``: its weights, PyTorch layout) in Lava layout: a conv
    kernel ``(C_out, kX, kY, C_in/groups)`` int32 and its groups; a dense matrix with rows and
    columns in the parts' Lava flatten order; an identity block as ``(CSR matrix, CSR delays or
    None)`` between the parts' flat vectors."""
    import scipy.sparse as sp

    r0 = syn.src_channels[0] if syn.src_channels is not None else 0
    a, b = block.src_channels[0] - r0, block.src_channels[1] - r0
    c, e = block.dst_channels
    read = graph.read_shape(syn)
    src_shape = (b - a,) + tuple(read[1:])
    dst_shape = (e - c,) + (tuple(graph.populations[syn.dst].shape[1:]) if syn.dst != READOUT else ())
    if syn.kind == "conv":
        if int(syn.groups) > 1:
            opg = w.shape[0] // int(syn.groups)
            return conv_weight_to_lava(w[c:e]).astype(np.int32), (e - c) // opg
        return conv_weight_to_lava(w[c:e, a:b]).astype(np.int32), 1
    if syn.kind == "dense":
        per_src = int(np.prod(read[1:])) if len(read) > 1 else 1
        m = w.reshape(w.shape[0], -1)[:, a * per_src:b * per_src][:, lava_flat_order(src_shape)]
        if syn.dst != READOUT:
            per_dst = int(np.prod(dst_shape[1:])) if len(dst_shape) > 1 else 1
            m = m[c * per_dst:e * per_dst][lava_flat_order(dst_shape)]
        return np.ascontiguousarray(m).astype(np.int32)
    # identity: element (k, ...) of the read range feeds element (k, ...) of the destination
    lo, hi = max(a, c), min(b, e)
    per = int(np.prod(read[1:])) if len(read) > 1 else 1
    flat = np.arange(lo * per, hi * per)  # PyTorch flat index in the read range / in the destination
    values = np.asarray(w).reshape(-1)[flat]
    keep = values != 0
    rows = _lava_index(dst_shape)[flat[keep] - c * per]
    cols = _lava_index(src_shape)[flat[keep] - a * per]
    n_dst, n_src = int(np.prod(dst_shape)), int(np.prod(src_shape))
    weights = sp.csr_matrix((values[keep].astype(np.int32), (rows, cols)), shape=(n_dst, n_src))
    # delays: int64 CSR with the weights' sparsity (a scalar delay makes Lava build a dense n x n matrix)
    delays = sp.csr_matrix((np.full(int(keep.sum()), int(syn.delay), dtype=np.int64), (rows, cols)),
                           shape=(n_dst, n_src)) if syn.delay else None
    return weights, delays


def _synapse_class(syn: Synapse) -> str:
    if syn.kind == "conv":
        if syn.delay:
            raise UnsupportedModelError(f"synapse {syn.name}: Lava's Conv has no delay (delay {syn.delay})")
        if syn.dst == READOUT:
            raise UnsupportedModelError(f"synapse {syn.name}: a conv readout is not supported (use a dense readout)")
        return "Conv"
    if syn.kind == "identity":
        return "DelaySparse" if syn.delay else "Sparse"
    if syn.kind == "dense":
        return "DelayDense" if syn.delay else "Dense"
    raise UnsupportedModelError(f"synapse {syn.name}: unknown kind {syn.kind!r}")


def _block_spec(graph: IntegerGraph, syn: Synapse, block: SynBlock, nblocks: int) -> ProcSpec:
    cls = _synapse_class(syn)
    r0 = syn.src_channels[0] if syn.src_channels is not None else 0
    src_shape = (block.src_channels[1] - block.src_channels[0],) + tuple(graph.read_shape(syn)[1:])
    dst_shape = (graph.num_classes,) if syn.dst == READOUT else \
        (block.dst_channels[1] - block.dst_channels[0],) + tuple(graph.populations[syn.dst].shape[1:])
    w = np.asarray(syn.weight)
    depthwise = graph.core_plan is not None and syn.name in graph.core_plan.depthwise
    params = dict(graph_kind="identity" if depthwise else syn.kind, src=syn.src, dst=syn.dst,
                  weight_shape=list(w.shape), sign_mode=syn.sign_mode, num_message_bits=graph.message_bits(syn),
                  delay=int(syn.delay), graded=bool(syn.graded))
    if depthwise:
        params["lowered_as"] = "depthwise conv (one weight per channel)"
    if syn.src_channels is not None:
        params["src_channels"] = list(syn.src_channels)
    if nblocks > 1:
        params.update(block=[block.src, block.dst], block_src_channels=list(block.src_channels),
                      block_dst_channels=list(block.dst_channels))
    if cls == "Conv":
        groups = int(syn.groups)
        if groups > 1:
            groups = (block.dst_channels[1] - block.dst_channels[0]) // (w.shape[0] // groups)
        params.update(lava_weight_shape=[dst_shape[0], int(w.shape[3]), int(w.shape[2]),
                                         src_shape[0] // groups if groups > 1 else src_shape[0]],
                      input_shape=list(lava_shape(src_shape)), stride=list(xy(syn.stride)),
                      padding=list(xy(syn.padding)), groups=groups, weight_exp=0)
        if syn.weight_exp:
            params["ignored_weight_exp"] = int(syn.weight_exp)
        return ProcSpec(block.name, "synapse", cls, lava_shape(dst_shape), params, syn.name)
    n_src, n_dst = int(np.prod(src_shape)), int(np.prod(dst_shape))
    params.update(matrix=[n_dst, n_src], weight_exp=int(syn.weight_exp))
    if syn.kind == "identity":
        lo, hi = max(block.src_channels[0] - r0, block.dst_channels[0]), min(block.src_channels[1] - r0,
                                                                              block.dst_channels[1])
        per = n_src // src_shape[0]
        params["nonzero"] = int(np.count_nonzero(w.reshape(-1)[lo * per:hi * per]))
    return ProcSpec(block.name, "synapse", cls, (n_dst,), params, syn.name)


def _probe_key(graph: IntegerGraph, population: str) -> str:
    """Model-table key of a population's probe: values (:data:`VALUES_PROBE_KEY`) for a partial sum."""
    return VALUES_PROBE_KEY if graph.populations[population].kind == "partial_sum" else "Extractor"


def lava_plan(graph: IntegerGraph, graph_slice: Optional[GraphSlice] = None) -> tuple[list[ProcSpec], list[ConnSpec]]:
    """Every Lava process and connection of the lowered graph, as plain data (no Lava import): one
    process per population part and per synapse block (:func:`population_parts`,
    :func:`synapse_blocks`), one probe per population part; of ``graph_slice`` only (default: the whole
    graph), with a replaying ``RingBuffer`` per part of each population it reads but does not simulate."""
    if not graph.scheduled:
        raise ValueError("the Lava lowering needs a scheduled graph (calibration.schedule.schedule)")
    from calibration.core_plan import check_plan

    check_plan(graph, graph.core_plan)
    graph_slice = graph_slice or GraphSlice.whole(graph)
    synapses = graph_slice.synapses(graph)
    P = graph.reset_interval
    procs: list[ProcSpec] = []
    if any(s.src == INPUT for s in synapses):
        procs.append(ProcSpec(proc_name("in", INPUT), "input", "RingBuffer", lava_shape(graph.input_shape),
                              dict(dtype="int32", graded=True)))
    conns: list[ConnSpec] = []
    parts = population_parts(graph)
    for part in graph_slice.replayed_parts(graph):
        values = "payloads" if graph.populations[part.population].kind == "partial_sum" else "spikes"
        procs.append(ProcSpec(part.name, "replay", "RingBuffer", lava_shape(part.shape),
                              dict(replays=part.population, values=values, channels=list(part.channels)),
                              part.population))
    for p in graph.populations.values():
        if p.name not in graph_slice.populations:
            continue
        for part in parts[p.name]:
            bias = p.bias_exp[part.channels[0]:part.channels[1]]
            common = dict(latency=int(p.latency), kind=p.kind, op=p.op, block=p.block)
            if len(parts[p.name]) > 1:
                common.update(part=part.index, channels=list(part.channels))
            if p.kind == "partial_sum":
                procs.append(ProcSpec(part.name, "population", "GradedVec", lava_shape(part.shape),
                                      dict(vth=0, exp=0, **common), p.name))
                continue
            procs.append(ProcSpec(part.name, "population", "LIFReset", lava_shape(part.shape), dict(
                du=int(p.du_code), dv=int(p.dv_code), vth=int(p.vth_mant), reset_interval=int(P),
                reset_offset=int((1 + p.latency) % P), has_bias=p.has_bias,
                bias_exp_range=[int(np.min(bias)), int(np.max(bias))] if bias.size else [0, 0], **common), p.name))
    readout_probe = None
    if graph.readout and graph_slice.readout:
        readout_probe = ProcSpec(proc_name("probe", READOUT_PROBE), "probe", "Extractor", (graph.num_classes,),
                                 dict(records="readout a_out sum (no readout_bias)"), READOUT)
    for syn in synapses:
        blocks = synapse_blocks(graph, syn, parts)
        srcs = {s.index: s for s in _source_parts(graph, syn, parts)}
        for block in blocks:
            spec = _block_spec(graph, syn, block, len(blocks))
            procs.append(spec)
            src = srcs[block.src]
            flat_in = syn.kind in ("identity", "dense") and len(src.shape) != 1
            conns.append(ConnSpec(src.name, "s_out", spec.name, "s_in", "flatten" if flat_in else None))
            if syn.dst == READOUT:
                conns.append(ConnSpec(spec.name, "a_out", readout_probe.name, "in_port", None))
            else:
                dst = parts[syn.dst][block.dst]
                reshape = syn.kind in ("identity", "dense") and len(dst.shape) != 1
                conns.append(ConnSpec(spec.name, "a_out", dst.name, "a_in",
                                      f"reshape{lava_shape(dst.shape)}" if reshape else None))
    for p in graph.populations.values():
        if p.name not in graph_slice.populations:
            continue
        values = p.kind == "partial_sum"
        for part in parts[p.name]:
            probe = ProcSpec(proc_name("probe", part.name.split(":", 1)[1]), "probe", "Extractor",
                             lava_shape(part.shape), dict(records="payloads" if values else "s_out",
                                                          model_key=_probe_key(graph, p.name)), p.name)
            procs.append(probe)
            conns.append(ConnSpec(part.name, "s_out", probe.name, "in_port", None))
    if readout_probe is not None:
        procs.append(readout_probe)
    return _linked(procs, conns)


#: Name of the ``RingBuffer`` that links the parts of a disconnected slice (:func:`_linked`).
LINK_HUB = "link:hub"


def _linked(procs: list[ProcSpec], conns: list[ConnSpec]) -> tuple[list[ProcSpec], list[ConnSpec]]:
    """``procs`` and ``conns``, made one connected graph: Lava compiles and runs only the processes
    connected to one root, and a slice can fall apart (parts of a population fed one-to-one by
    replayed parts). Each connected part then gets a ``Sparse`` with no synapse (it adds 0) from one
    shared ``RingBuffer`` of zeros (:data:`LINK_HUB`) into its first population part (or probe). A
    whole graph is connected through its input and gets nothing."""
    parent = {p.name: p.name for p in procs}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for c in conns:
        parent[find(c.src)] = find(c.dst)
    groups: dict[str, list[ProcSpec]] = {}
    for p in procs:
        groups.setdefault(find(p.name), []).append(p)
    if len(groups) <= 1:
        return procs, conns
    procs, conns = list(procs), list(conns)
    procs.append(ProcSpec(LINK_HUB, "link", "RingBuffer", (1,), dict(dtype="int32", sends="zeros")))
    for members in groups.values():
        target = next((m for m in members if m.role == "population"), None) or \
            next(m for m in members if m.role == "probe")
        n = int(np.prod(target.shape))
        link = ProcSpec(f"link:{target.name}", "link", "Sparse", (n,), dict(matrix=[n, 1], nonzero=0))
        procs.append(link)
        conns.append(ConnSpec(LINK_HUB, "s_out", link.name, "s_in", None))
        conns.append(ConnSpec(link.name, "a_out", target.name, "a_in" if target.role == "population" else "in_port",
                              f"reshape{tuple(target.shape)}" if len(target.shape) != 1 else None))
    return procs, conns


def describe_lava_network(graph: IntegerGraph, models: str = "xoresnet") -> dict[str, Any]:
    """A JSON-able description of the Lava process graph (``lava_graph.json``) and of the process
    models of the model set ``models`` (:func:`model_table`) it runs with; no Lava import."""
    procs, conns = lava_plan(graph)
    table = model_table(models)
    counts: dict[str, int] = {}
    for p in procs:
        counts[p.cls] = counts.get(p.cls, 0) + 1
    keys = sorted(counts) + ([READOUT_PROBE_KEY] if graph.readout else []) + (
        [VALUES_PROBE_KEY] if "GradedVec" in counts else [])
    plan = graph.core_plan
    return {
        "format": "xoresnet-lava-graph",
        "version": 1,
        "lava": "lava-nc 0.10.0",
        "run_config": {"class": "Loihi2SimCfg", "select_tag": "fixed_pt", "model_set": models,
                       "exception_proc_model_map": "every process pinned to the model listed in models",
                       "models": {key: table[key] for key in keys},
                       "model_origin": {key: model_origin(table[key]) for key in keys}},
        "layout": "Lava (X=W, Y=H, C); integer graph shapes are PyTorch (C, H, W)",
        "reset_interval": int(graph.reset_interval),
        "timesteps": int(graph.timesteps),
        "readout_latency": int(graph.readout_latency()) if graph.readout else None,
        "core_plan": {"method": plan.method, "cut_populations": plan.cut_populations} if plan is not None else None,
        "processes": [{"name": p.name, "role": p.role, "class": p.cls, "shape": list(p.shape),
                       "lowers": p.source, "params": p.params} for p in procs],
        "connections": [{"src": f"{c.src}.{c.src_port}", "dst": f"{c.dst}.{c.dst_port}",
                         "transform": c.transform} for c in conns],
        "delays": graph.delays(),
        "counts": {"processes": len(procs), "connections": len(conns), "by_class": counts,
                   "populations": len(graph.populations), "synapses": len(graph.synapses),
                   "population_processes": sum(p.role == "population" for p in procs),
                   "synapse_processes": sum(p.role == "synapse" for p in procs),
                   "relays": sum(p.kind == "relay" for p in graph.populations.values()),
                   "partial_sums": sum(p.kind == "partial_sum" for p in graph.populations.values()),
                   "delayed_synapses": sum(1 for s in graph.synapses if s.delay),
                   "neurons": int(sum(p.size for p in graph.populations.values()))},
    }


# ---------------------------------------------------------------------- building (imports Lava)

@dataclass
class LavaNetwork:
    """The instantiated Lava processes (of a :class:`GraphSlice`). ``source``: the input ``RingBuffer``
    (None when the slice reads no input); ``neurons[p]``, ``probes[p]``: the processes of population
    ``p``'s parts, in order (one for an uncut population); ``synapses[s]``: the blocks of synapse
    ``s``; ``readout_probe`` records the summed readout synapse outputs; ``replays``: the
    ``RingBuffer`` of each replayed population part; ``links``: what joins a slice that fell apart
    (:func:`_linked`)."""

    graph: IntegerGraph
    steps: int
    source: Any
    neurons: dict[str, list]
    synapses: dict[str, list]
    probes: dict[str, list]
    readout_probe: Any
    plan: list[ProcSpec]
    replays: list = field(default_factory=list)
    links: list = field(default_factory=list)

    @property
    def root(self):
        """Any process of the (connected) network: ``run``/``stop`` go through it."""
        return self.processes()[0]

    def processes(self) -> list:
        """Every Lava process of the network."""
        procs = ([self.source] if self.source is not None else []) + list(self.replays) + list(self.links)
        for group in (self.neurons, self.synapses, self.probes):
            procs += [p for ps in group.values() for p in ps]
        return procs + ([self.readout_probe] if self.readout_probe is not None else [])

    def run_config(self, models: str = "xoresnet", overrides: Optional[dict[str, str]] = None):
        """``Loihi2SimCfg(select_tag="fixed_pt")`` with every process pinned to its model in the
        model set ``models`` (:func:`process_models`; ``"lava"``: Intel's, exactly what
        ``select_tag="fixed_pt"`` selects, as the tests check).

        The pinning is keyed by process *instance*: lava's compiler then skips its model discovery
        for that process (``ProcGroupDiGraphs._map_proc_to_model`` checks ``proc in
        exception_proc_model_map``), which otherwise re-executes every module of the process's
        package once per process (about 45 ms each, most of the compile time).
        """
        from lava.magma.core.run_configs import Loihi2SimCfg

        chosen = process_models(models, overrides)
        pinned: dict = {proc_cls: model for key, (proc_cls, model) in chosen.items() if ":" not in key}
        values = {id(p) for name, ps in self.probes.items() for p in ps
                  if self.graph.populations[name].kind == "partial_sum"}
        replayed_spikes = {id(p) for p in self.replays if p.data.init.dtype == np.bool_}
        for proc in self.processes():
            key = READOUT_PROBE_KEY if proc is self.readout_probe else \
                VALUES_PROBE_KEY if id(proc) in values else \
                REPLAY_SPIKES_KEY if id(proc) in replayed_spikes else type(proc).__name__
            pinned[proc] = chosen[key][1]
        return Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=pinned)

    def receive(self, steps: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Drain ``steps`` messages from every probe: spikes ``{p: bool [steps, *shape]}`` in PyTorch
        layout (a partial sum: its int64 payloads), the parts of a cut population put back together,
        and the readout ``int64 [steps, K]``.

        Reads each probe's channel to the host directly (what ``Extractor.receive()`` does with its
        default blocking FIFO configuration, without the float64 array of zeros it allocates per call)."""
        spikes = {}
        for name, probes in self.probes.items():
            pop = self.graph.populations[name]
            parts = []
            for probe in probes:
                port = probe.out_port.external_pipe_csp_recv_port
                buf = np.stack([port.recv() for _ in range(steps)]) if steps else \
                    np.zeros((0,) + tuple(probe.in_port.shape))
                parts.append(from_lava(buf, lead=1))
            whole = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
            spikes[name] = whole.astype(np.int64) if pop.kind == "partial_sum" else whole != 0
        K = self.graph.num_classes
        if self.readout_probe is not None and steps:
            port = self.readout_probe.out_port.external_pipe_csp_recv_port
            raw = np.stack([port.recv() for _ in range(steps)])
            if not np.array_equal(raw, np.round(raw)):
                raise RuntimeError("the readout extractor returned non-integer values")
            readout = raw.astype(np.int64)
        else:
            readout = np.zeros((steps, K), dtype=np.int64)
        return spikes, readout

def process_models(models: str = "xoresnet", overrides: Optional[dict[str, str]] = None) -> dict:
    """Model-table key -> ``(process class, ProcessModel class)``, as listed by :func:`model_table`
    (imports Lava)."""
    import importlib

    from deploy.lava_compat import lava_ready

    lava_ready()
    out = {}
    for key, model_path in model_table(models, overrides).items():
        cls_name = key.split(":")[0]
        proc_cls = getattr(importlib.import_module(PROCESS_MODULES[cls_name]), cls_name)
        module, _, model = model_path.rpartition(".")
        out[key] = (proc_cls, getattr(importlib.import_module(module), model))
    return out


def fixed_pt_models() -> dict:
    """Process class -> Intel's ProcessModel class (:data:`FIXED_PT_MODELS`; imports Lava)."""
    return {proc_cls: model for key, (proc_cls, model) in process_models("lava").items() if ":" not in key}


def _perturbed_weight(syn: Synapse, perturb: Optional[dict]) -> np.ndarray:
    w = np.asarray(syn.weight).astype(np.int64)
    if perturb and perturb.get("synapse") == syn.name:
        w = w.copy()
        w[tuple(int(i) for i in perturb["index"])] += int(perturb["delta"])
    return w


def replay_data(values: np.ndarray, part: PopPart, steps: int, spikes: bool) -> np.ndarray:
    """The ``RingBuffer`` data replaying population part ``part`` (:class:`GraphSlice`): ``values``
    ``[S', *population shape]`` (the reference's values at stream steps 1..S', S' >= ``steps``) cut to
    the part's channels and the first ``steps`` steps, in Lava layout ``(W, H, C, steps)`` (or
    ``(N, steps)``): bool spikes, or int32 payloads."""
    values = np.asarray(values)
    a, b = part.channels
    if (values.ndim != 1 + len(part.shape) or values.shape[0] < steps or values.shape[1] < b
            or tuple(values.shape[2:]) != tuple(part.shape[1:])):
        raise ValueError(f"replay of {part.population}: values {list(values.shape)} do not cover {steps} steps of "
                         f"a population part {list(part.shape)}")
    cut = values[:steps, a:b]
    data = cut.transpose(*range(cut.ndim - 1, 0, -1), 0) if cut.ndim == 4 else cut.T
    return np.ascontiguousarray(data != 0 if spikes else data.astype(np.int32))


def lowered_arrays(graph: IntegerGraph, pixels_stream: np.ndarray, steps: int,
                   perturb: Optional[dict] = None, graph_slice: Optional[GraphSlice] = None,
                   replay: Optional[dict[str, np.ndarray]] = None) -> dict[str, Any]:
    """Every array the Lava processes get, in Lava layout (pure numpy, no Lava import), so that
    a malformed graph fails here, before Lava starts: ``input`` ``(W, H, C, S)``,
    ``bias[process] = (bias_mant, bias_exp)`` per LIF process (a population part),
    ``weights[process]`` per synapse block (:func:`block_weights`: conv kernel and groups, CSR
    diagonal block + delays, or dense matrix), of ``graph_slice`` only (default: the whole graph), and
    ``replay[process]`` per part of each population the slice replays (:func:`replay_data` of
    ``replay[population]``, the reference's values ``[S, *shape]``)."""
    if perturb and perturb.get("synapse") not in {s.name for s in graph.synapses}:
        raise ValueError(f"perturb: no synapse named {perturb.get('synapse')!r}")
    graph_slice = graph_slice or GraphSlice.whole(graph)
    out: dict[str, Any] = {"input": input_stream(graph, pixels_stream, steps), "bias": {}, "weights": {},
                           "replay": {}}
    parts = population_parts(graph)
    for part in graph_slice.replayed_parts(graph):
        name = part.population
        if replay is None or name not in replay:
            raise ValueError(f"the graph slice reads population {name}, but no values to replay it were given")
        out["replay"][part.name] = replay_data(replay[name], part, steps, graph.populations[name].kind != "partial_sum")
    for p in graph.populations.values():
        if p.name not in graph_slice.populations:
            continue
        mant, exp = np.asarray(p.bias_mant, dtype=np.int64), np.asarray(p.bias_exp, dtype=np.int64)
        if mant.shape != tuple(p.shape) or exp.shape != tuple(p.shape):
            raise ValueError(f"population {p.name}: bias arrays {mant.shape}/{exp.shape} do not match {p.shape}")
        for part in parts[p.name]:
            a, b = part.channels
            out["bias"][part.name] = (to_lava(mant[a:b]).astype(np.int32), to_lava(exp[a:b]).astype(np.int32))
    for syn in graph_slice.synapses(graph):
        w = _perturbed_weight(syn, perturb)
        read = tuple(graph.read_shape(syn))
        if syn.kind == "identity" and w.shape != read:
            raise ValueError(f"synapse {syn.name}: identity weights {w.shape} do not match {read}")
        if syn.kind == "dense":
            n_out = graph.num_classes if syn.dst == READOUT else graph.populations[syn.dst].size
            if w.shape != (n_out, int(np.prod(read))):
                raise ValueError(f"synapse {syn.name}: dense weights {w.shape} are not ({n_out}, {int(np.prod(read))})")
        for block in synapse_blocks(graph, syn, parts):
            out["weights"][block.name] = block_weights(graph, syn, block, w)
    return out


def build_lava_network(graph: IntegerGraph, pixels_stream: np.ndarray, *, perturb: Optional[dict] = None,
                       steps: Optional[int] = None, buffer_size: Optional[int] = None,
                       graph_slice: Optional[GraphSlice] = None,
                       replay: Optional[dict[str, np.ndarray]] = None) -> LavaNetwork:
    """Instantiate the Lava processes for ``graph`` fed with ``pixels_stream [N, C, H, W]`` (ints);
    of ``graph_slice`` only (default: the whole graph), the populations it reads but does not simulate
    replayed from ``replay[population]`` (the reference's values ``[S, *shape]``, :class:`GraphSlice`).

    ``steps``: stream length ``S`` (default :func:`calibration.reference.stream_steps`); ``buffer_size``:
    the extractors' channel depth (default ``S``; the caller must ``receive()`` at least every
    ``buffer_size`` steps, or the run blocks). ``perturb = {"synapse", "index", "delta"}`` adds
    ``delta`` to one weight (PyTorch-layout index into the weights as lowered: ``(C, 1, 1, 1)`` for
    an identity synapse lowered as a depthwise conv) before lowering (fault injection for tests).
    """
    graph_slice = graph_slice or GraphSlice.whole(graph)
    plan, _conns = lava_plan(graph, graph_slice)
    if steps is None:
        steps = graph.stream_steps(int(np.asarray(pixels_stream).shape[0]))
    S = int(steps)
    arrays = lowered_arrays(graph, pixels_stream, S, perturb, graph_slice, replay)
    depth = int(buffer_size or S)
    P = graph.reset_interval

    from deploy.lava_compat import lava_ready

    lava_ready()
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import DelayDense, Dense
    from lava.proc.graded.process import GradedVec
    from lava.proc.io.extractor import Extractor
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIFReset
    from lava.proc.sparse.process import DelaySparse, Sparse
    import scipy.sparse as sp

    synapse_list = graph_slice.synapses(graph)
    source = None
    out_port: dict[str, Any] = {}
    if any(s.src == INPUT for s in synapse_list):
        source = RingBuffer(data=arrays["input"])
        source.name = proc_name("in", INPUT)  # RingBuffer takes no name argument
        out_port[source.name] = source.s_out
    parts = population_parts(graph)
    replays: list = []
    for part in graph_slice.replayed_parts(graph):
        proc = RingBuffer(data=arrays["replay"][part.name])
        proc.name = part.name
        replays.append(proc)
        out_port[part.name] = proc.s_out
    in_port: dict[str, Any] = {}
    neurons: dict[str, list] = {}
    for p in graph.populations.values():
        if p.name not in graph_slice.populations:
            continue
        neurons[p.name] = []
        for part in parts[p.name]:
            if p.kind == "partial_sum":
                proc = GradedVec(shape=lava_shape(part.shape), vth=0, exp=0)
                proc.name = part.name  # GradedVec takes no name argument
            else:
                mant, exp = arrays["bias"][part.name]
                proc = LIFReset(shape=lava_shape(part.shape), du=int(p.du_code), dv=int(p.dv_code), vth=int(p.vth_mant),
                                bias_mant=mant, bias_exp=exp, reset_interval=int(P),
                                reset_offset=int((1 + p.latency) % P), name=part.name)
            neurons[p.name].append(proc)
            out_port[part.name], in_port[part.name] = proc.s_out, proc.a_in

    readout_probe = Extractor(shape=(graph.num_classes,), buffer_size=depth, name=proc_name("probe", READOUT_PROBE)) \
        if graph.readout and graph_slice.readout else None
    synapses: dict[str, list] = {}
    for syn in synapse_list:
        bits = graph.message_bits(syn)
        extra = {"weight_exp": int(syn.weight_exp)} if syn.weight_exp else {}
        srcs = {s.index: s for s in _source_parts(graph, syn, parts)}
        synapses[syn.name] = []
        for block in synapse_blocks(graph, syn, parts):
            src = srcs[block.src]
            w = arrays["weights"][block.name]
            if syn.kind == "conv":  # Lava's Conv has no weight_exp (validate() refuses a nonzero one)
                kernel, groups = w
                proc = Conv(weight=kernel, input_shape=lava_shape(src.shape), padding=xy(syn.padding),
                            stride=xy(syn.stride), groups=int(groups), num_message_bits=bits, name=block.name)
            elif syn.kind == "identity":
                weights, delays = w
                if syn.delay:
                    proc = DelaySparse(weights=weights, delays=delays, num_message_bits=bits, name=block.name,
                                       **extra)
                else:
                    proc = Sparse(weights=weights, num_message_bits=bits, name=block.name, **extra)
            elif syn.delay:
                proc = DelayDense(weights=w, delays=np.full(w.shape, int(syn.delay), dtype=np.int64),
                                  num_message_bits=bits, name=block.name, **extra)
            else:
                proc = Dense(weights=w, num_message_bits=bits, name=block.name, **extra)
            synapses[syn.name].append(proc)
            port = out_port[src.name]
            if syn.kind in ("identity", "dense") and len(src.shape) != 1:
                port = port.flatten()
            port.connect(proc.s_in)
            if syn.dst == READOUT:
                proc.a_out.connect(readout_probe.in_port)
            else:
                dst = parts[syn.dst][block.dst]
                a_out = proc.a_out
                if syn.kind in ("identity", "dense") and len(dst.shape) != 1:
                    a_out = a_out.reshape(lava_shape(dst.shape))
                a_out.connect(in_port[dst.name])

    probes: dict[str, list] = {}
    probe_in: dict[str, Any] = {}
    for p in graph.populations.values():
        if p.name not in graph_slice.populations:
            continue
        probes[p.name] = []
        for part, proc in zip(parts[p.name], neurons[p.name]):
            probe = Extractor(shape=lava_shape(part.shape), buffer_size=depth,
                              name=proc_name("probe", part.name.split(":", 1)[1]))
            proc.s_out.connect(probe.in_port)
            probes[p.name].append(probe)
            probe_in[probe.name] = probe.in_port
    if readout_probe is not None:
        probe_in[readout_probe.name] = readout_probe.in_port
    links: list = []
    for spec in (q for q in plan if q.role == "link"):  # a slice that fell apart, made one graph (_linked)
        if spec.name == LINK_HUB:
            hub = RingBuffer(data=np.zeros((1, 1), dtype=np.int32))
            hub.name = LINK_HUB
            links.append(hub)
            continue
        target = spec.name.split(":", 1)[1]
        link = Sparse(weights=sp.csr_matrix((spec.shape[0], 1), dtype=np.int32), name=spec.name)
        hub.s_out.connect(link.s_in)
        port = in_port.get(target) or probe_in[target]
        a_out = link.a_out.reshape(tuple(port.shape)) if len(port.shape) != 1 else link.a_out
        a_out.connect(port)
        links.append(link)
    return LavaNetwork(graph, S, source, neurons, synapses, probes, readout_probe, plan, replays, links)
