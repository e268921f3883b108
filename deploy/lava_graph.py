"""Lower an :class:`~calibration.integer_graph.IntegerGraph` to a graph of Lava processes.

Only stock ``lava.proc`` processes are used (Intel's tools check the process classes); the run
configuration pins each to a process model (:func:`model_table`: ours from
:mod:`deploy.lava_models` where we have one, computing Intel's integers fast, else Intel's):

===============================  ===========================================================
integer graph                    Lava (lava-nc 0.10.0, ``Loihi2SimCfg(select_tag="fixed_pt")``)
===============================  ===========================================================
``Population``                   ``lif.process.LIFReset(shape, du, dv, vth, bias_mant, bias_exp,
                                 reset_interval=P, reset_offset=(1 + latency) % P)``
``conv`` synapse                 ``conv.process.Conv`` (true convolution, kernel flipped,
                                 ``(C_out, kX, kY, C_in/groups)``; no weight_exp, no delay)
``identity`` synapse             ``sparse.process.Sparse`` with a diagonal CSR matrix
                                 (``DelaySparse`` with an int64 CSR ``delays`` if delayed),
                                 ``src.s_out.flatten() -> s_in``, ``a_out.reshape(dst) -> a_in``
``dense`` synapse                ``dense.process.Dense`` (``DelayDense`` if delayed), columns
                                 (and rows, into a population) permuted to Lava flatten order
readout synapses                 all ``Dense`` a_outs into ONE ``Extractor`` (InPorts sum):
                                 the per-step integer logits, without ``readout_bias``
input                            ``io.source.RingBuffer`` ``(W, H, C, S)`` int32 holding the
                                 whole stream (sample ``n``'s pixels at steps ``n*P + 1 ..
                                 n*P + T``, zeros otherwise), graded (8-bit) into its synapses
recording                        one ``io.extractor.Extractor`` per population ``s_out``
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

from calibration import ranges
from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Synapse
from xoresnet.errors import UnsupportedModelError

#: num_message_bits of a synapse that carries graded (8-bit payload) spikes.
GRADED_MESSAGE_BITS = ranges.MESSAGE_BITS_GRADED
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
    "Extractor": "lava.proc.io.extractor.PyLoihiExtractorModel",
}
#: Model-table key of the readout probe (an ``Extractor`` that records integer sums, not spikes).
READOUT_PROBE_KEY = "Extractor:readout"
#: Our process models (:mod:`deploy.lava_models`): the same values as Intel's, computed fast or sent
#: narrow (``tests/test_lava_models.py`` proves each equal to the Intel model it replaces).
XORESNET_MODELS = {
    "LIFReset": "deploy.lava_models.lif.PyLifResetModelFast",
    "Conv": "deploy.lava_models.conv.PyConvModelExact",
    "Sparse": "deploy.lava_models.sparse.PySparseModelFast",
    "DelaySparse": "deploy.lava_models.sparse.PyDelaySparseModelFast",
    "Extractor": "deploy.lava_models.extractor.PyExtractorModelSpikes",
    READOUT_PROBE_KEY: "deploy.lava_models.extractor.PyExtractorModelReadout",
}
#: Model sets a Lava run can use: ``xoresnet`` (default): ours where we have one, Intel's
#: elsewhere; ``lava``: Intel's fixed_pt models as lava-nc ships them. Keys: process class names,
#: and :data:`READOUT_PROBE_KEY` for the readout probe.
_INTEL = {**FIXED_PT_MODELS, READOUT_PROBE_KEY: FIXED_PT_MODELS["Extractor"]}
MODEL_SETS = {"xoresnet": {**_INTEL, **XORESNET_MODELS}, "lava": _INTEL}
#: The module of each process class.
PROCESS_MODULES = {"RingBuffer": "lava.proc.io.source", "LIFReset": "lava.proc.lif.process",
                   "Conv": "lava.proc.conv.process", "Sparse": "lava.proc.sparse.process",
                   "DelaySparse": "lava.proc.sparse.process", "Dense": "lava.proc.dense.process",
                   "DelayDense": "lava.proc.dense.process", "Extractor": "lava.proc.io.extractor"}


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

    Exactly the reference's layout (:meth:`deploy.reference.ReferenceSimulator.run_stream`): at
    step ``t`` (1-based), ``n, k = divmod(t - 1, P)``; sample ``n``'s pixels if ``n < N`` and
    ``k < T``, else zeros. Column ``t - 1`` is sent at step ``t``.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != tuple(graph.input_shape):
        raise ValueError(f"pixels must be [N, {', '.join(map(str, graph.input_shape))}], got {list(pixels.shape)}")
    N = pixels.shape[0]
    P, T = graph.reset_interval, graph.timesteps
    if steps is None:
        from deploy.reference import stream_steps

        steps = stream_steps(graph, N)
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


def _dense_weights(graph: IntegerGraph, syn: Synapse, weight: np.ndarray) -> np.ndarray:
    """A dense weight matrix with columns (source) and rows (destination population) permuted to
    Lava flatten order."""
    w = np.asarray(weight)[:, lava_flat_order(graph.source_shape(syn.src))]
    if syn.dst != READOUT:
        w = w[lava_flat_order(graph.populations[syn.dst].shape), :]
    return w


def _synapse_spec(graph: IntegerGraph, syn: Synapse) -> ProcSpec:
    src_shape = graph.source_shape(syn.src)
    bits = GRADED_MESSAGE_BITS if syn.graded else 0
    w = np.asarray(syn.weight)
    common = dict(graph_kind=syn.kind, src=syn.src, dst=syn.dst, weight_shape=list(w.shape),
                  sign_mode=syn.sign_mode, num_message_bits=bits, delay=int(syn.delay), graded=bool(syn.graded))
    if syn.kind == "conv":
        if syn.delay:
            raise UnsupportedModelError(f"synapse {syn.name}: Lava's Conv has no delay (delay {syn.delay})")
        if syn.dst == READOUT:
            raise UnsupportedModelError(f"synapse {syn.name}: a conv readout is not supported (use a dense readout)")
        params = dict(common, lava_weight_shape=[int(w.shape[0]), int(w.shape[3]), int(w.shape[2]), int(w.shape[1])],
                      input_shape=list(lava_shape(src_shape)), stride=list(xy(syn.stride)),
                      padding=list(xy(syn.padding)), groups=int(syn.groups), weight_exp=0)
        if syn.weight_exp:
            params["ignored_weight_exp"] = int(syn.weight_exp)
        shape = lava_shape(graph.populations[syn.dst].shape)
        return ProcSpec(proc_name("syn", syn.name), "synapse", "Conv", shape, params, syn.name)
    if syn.kind == "identity":
        n = int(np.prod(src_shape))
        params = dict(common, matrix=[n, n], nonzero=int(np.count_nonzero(w)), weight_exp=int(syn.weight_exp))
        return ProcSpec(proc_name("syn", syn.name), "synapse", "DelaySparse" if syn.delay else "Sparse", (n,),
                        params, syn.name)
    if syn.kind == "dense":
        params = dict(common, matrix=[int(w.shape[0]), int(w.shape[1])], weight_exp=int(syn.weight_exp))
        return ProcSpec(proc_name("syn", syn.name), "synapse", "DelayDense" if syn.delay else "Dense",
                        (int(w.shape[0]),), params, syn.name)
    raise UnsupportedModelError(f"synapse {syn.name}: unknown kind {syn.kind!r}")


def lava_plan(graph: IntegerGraph) -> tuple[list[ProcSpec], list[ConnSpec]]:
    """Every Lava process and connection of the lowered graph, as plain data (no Lava import)."""
    if not graph.scheduled:
        raise ValueError("the Lava lowering needs a scheduled graph (deploy.schedule.schedule)")
    P = graph.reset_interval
    procs: list[ProcSpec] = [ProcSpec(proc_name("in", INPUT), "input", "RingBuffer",
                                      lava_shape(graph.input_shape), dict(dtype="int32", graded=True))]
    conns: list[ConnSpec] = []
    out_of = {INPUT: procs[0].name}
    for p in graph.populations.values():
        spec = ProcSpec(proc_name("pop", p.name), "population", "LIFReset", lava_shape(p.shape), dict(
            du=int(p.du), dv=int(p.dv), vth=int(p.vth), reset_interval=int(P), reset_offset=int((1 + p.latency) % P),
            latency=int(p.latency), kind=p.kind, op=p.op, block=p.block, has_bias=p.has_bias,
            bias_exp_range=[int(np.min(p.bias_exp)), int(np.max(p.bias_exp))] if p.size else [0, 0]), p.name)
        procs.append(spec)
        out_of[p.name] = spec.name
    readout_probe = None
    if graph.readout:
        readout_probe = ProcSpec(proc_name("probe", READOUT_PROBE), "probe", "Extractor", (graph.num_classes,),
                                 dict(records="readout a_out sum (no readout_bias)"), READOUT)
    for syn in graph.synapses:
        spec = _synapse_spec(graph, syn)
        procs.append(spec)
        src_shape = graph.source_shape(syn.src)
        flat_in = syn.kind in ("identity", "dense") and len(src_shape) != 1
        conns.append(ConnSpec(out_of[syn.src], "s_out", spec.name, "s_in", "flatten" if flat_in else None))
        if syn.dst == READOUT:
            conns.append(ConnSpec(spec.name, "a_out", readout_probe.name, "in_port", None))
        else:
            dst_shape = graph.populations[syn.dst].shape
            reshape = syn.kind in ("identity", "dense") and len(dst_shape) != 1
            conns.append(ConnSpec(spec.name, "a_out", out_of[syn.dst], "a_in",
                                  f"reshape{lava_shape(dst_shape)}" if reshape else None))
    for p in graph.populations.values():
        probe = ProcSpec(proc_name("probe", p.name), "probe", "Extractor", lava_shape(p.shape),
                         dict(records="s_out"), p.name)
        procs.append(probe)
        conns.append(ConnSpec(out_of[p.name], "s_out", probe.name, "in_port", None))
    if readout_probe is not None:
        procs.append(readout_probe)
    return procs, conns


def describe_lava_network(graph: IntegerGraph, models: str = "xoresnet") -> dict[str, Any]:
    """A JSON-able description of the Lava process graph (``lava_graph.json``) and of the process
    models of the model set ``models`` (:func:`model_table`) it runs with; no Lava import."""
    from deploy.reference import readout_latency_of

    procs, conns = lava_plan(graph)
    table = model_table(models)
    counts: dict[str, int] = {}
    for p in procs:
        counts[p.cls] = counts.get(p.cls, 0) + 1
    keys = sorted(counts) + ([READOUT_PROBE_KEY] if graph.readout else [])
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
        "readout_latency": int(readout_latency_of(graph)) if graph.readout else None,
        "processes": [{"name": p.name, "role": p.role, "class": p.cls, "shape": list(p.shape),
                       "lowers": p.source, "params": p.params} for p in procs],
        "connections": [{"src": f"{c.src}.{c.src_port}", "dst": f"{c.dst}.{c.dst_port}",
                         "transform": c.transform} for c in conns],
        "delays": graph.delays(),
        "counts": {"processes": len(procs), "connections": len(conns), "by_class": counts,
                   "populations": len(graph.populations), "synapses": len(graph.synapses),
                   "relays": sum(p.kind == "relay" for p in graph.populations.values()),
                   "delayed_synapses": sum(1 for s in graph.synapses if s.delay),
                   "neurons": int(sum(p.size for p in graph.populations.values()))},
    }


# ---------------------------------------------------------------------- building (imports Lava)

@dataclass
class LavaNetwork:
    """The instantiated Lava processes. ``probes[p]`` records population ``p``'s spikes,
    ``readout_probe`` the summed readout synapse outputs."""

    graph: IntegerGraph
    steps: int
    source: Any
    neurons: dict[str, Any]
    synapses: dict[str, Any]
    probes: dict[str, Any]
    readout_probe: Any
    plan: list[ProcSpec]

    @property
    def root(self):
        """Any process of the (connected) network: ``run``/``stop`` go through it."""
        return self.source

    def processes(self) -> list:
        """Every Lava process of the network."""
        procs = [self.source, *self.neurons.values(), *self.synapses.values(), *self.probes.values()]
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
        for proc in self.processes():
            key = READOUT_PROBE_KEY if proc is self.readout_probe else type(proc).__name__
            pinned[proc] = chosen[key][1]
        return Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=pinned)

    def receive(self, steps: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Drain ``steps`` messages from every probe: spikes ``{p: bool [steps, *shape]}`` in PyTorch
        layout and the readout ``int64 [steps, K]``.

        Reads each probe's channel to the host directly (what ``Extractor.receive()`` does with its
        default blocking FIFO configuration, without the float64 array of zeros it allocates per call)."""
        spikes = {}
        for name, probe in self.probes.items():
            port = probe.out_port.external_pipe_csp_recv_port
            buf = np.stack([port.recv() for _ in range(steps)]) if steps else \
                np.zeros((0,) + lava_shape(self.graph.populations[name].shape))
            spikes[name] = from_lava(buf != 0, lead=1)
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


def lowered_arrays(graph: IntegerGraph, pixels_stream: np.ndarray, steps: int,
                   perturb: Optional[dict] = None) -> dict[str, Any]:
    """Every array the Lava processes get, in Lava layout (pure numpy, no Lava import), so that
    a malformed graph fails here, before Lava starts: ``input`` ``(W, H, C, S)``,
    ``bias[p] = (bias_mant, bias_exp)``, ``weights[s]`` (conv kernel, CSR diagonal + delays, or
    dense matrix)."""
    import scipy.sparse as sp

    if perturb and perturb.get("synapse") not in {s.name for s in graph.synapses}:
        raise ValueError(f"perturb: no synapse named {perturb.get('synapse')!r}")
    out: dict[str, Any] = {"input": input_stream(graph, pixels_stream, steps), "bias": {}, "weights": {}}
    for p in graph.populations.values():
        mant, exp = np.asarray(p.bias_mant, dtype=np.int64), np.asarray(p.bias_exp, dtype=np.int64)
        if mant.shape != tuple(p.shape) or exp.shape != tuple(p.shape):
            raise ValueError(f"population {p.name}: bias arrays {mant.shape}/{exp.shape} do not match {p.shape}")
        out["bias"][p.name] = (to_lava(mant).astype(np.int32), to_lava(exp).astype(np.int32))
    for syn in graph.synapses:
        w = _perturbed_weight(syn, perturb)
        src_shape = graph.source_shape(syn.src)
        if syn.kind == "conv":
            out["weights"][syn.name] = conv_weight_to_lava(w).astype(np.int32)
        elif syn.kind == "identity":
            if w.shape != tuple(src_shape):
                raise ValueError(f"synapse {syn.name}: identity weights {w.shape} do not match {src_shape}")
            n = int(np.prod(src_shape))
            diag = to_lava(w).ravel()
            idx = np.flatnonzero(diag)
            weights = sp.csr_matrix((diag[idx].astype(np.int32), (idx, idx)), shape=(n, n))
            # delays: int64 CSR with the weights' sparsity (a scalar delay makes Lava build a dense n x n matrix)
            delays = sp.csr_matrix((np.full(idx.size, int(syn.delay), dtype=np.int64), (idx, idx)), shape=(n, n)) \
                if syn.delay else None
            out["weights"][syn.name] = (weights, delays)
        elif syn.kind == "dense":
            n_in = int(np.prod(src_shape))
            n_out = graph.num_classes if syn.dst == READOUT else graph.populations[syn.dst].size
            if w.shape != (n_out, n_in):
                raise ValueError(f"synapse {syn.name}: dense weights {w.shape} are not ({n_out}, {n_in})")
            out["weights"][syn.name] = _dense_weights(graph, syn, w).astype(np.int32)
        else:
            raise UnsupportedModelError(f"synapse {syn.name}: unknown kind {syn.kind!r}")
    return out


def build_lava_network(graph: IntegerGraph, pixels_stream: np.ndarray, *, perturb: Optional[dict] = None,
                       steps: Optional[int] = None, buffer_size: Optional[int] = None) -> LavaNetwork:
    """Instantiate the Lava processes for ``graph`` fed with ``pixels_stream [N, C, H, W]`` (ints).

    ``steps``: stream length ``S`` (default :func:`deploy.reference.stream_steps`); ``buffer_size``:
    the extractors' channel depth (default ``S``; the caller must ``receive()`` at least every
    ``buffer_size`` steps, or the run blocks). ``perturb = {"synapse", "index", "delta"}`` adds
    ``delta`` to one weight (PyTorch-layout index) before lowering (fault injection for tests).
    """
    plan, _conns = lava_plan(graph)
    if steps is None:
        from deploy.reference import stream_steps

        steps = stream_steps(graph, int(np.asarray(pixels_stream).shape[0]))
    S = int(steps)
    arrays = lowered_arrays(graph, pixels_stream, S, perturb)
    depth = int(buffer_size or S)
    P = graph.reset_interval

    from deploy.lava_compat import lava_ready

    lava_ready()
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import DelayDense, Dense
    from lava.proc.io.extractor import Extractor
    from lava.proc.io.source import RingBuffer
    from lava.proc.lif.process import LIFReset
    from lava.proc.sparse.process import DelaySparse, Sparse

    source = RingBuffer(data=arrays["input"])
    source.name = proc_name("in", INPUT)  # RingBuffer takes no name argument
    out_port = {INPUT: source.s_out}
    neurons: dict[str, Any] = {}
    for p in graph.populations.values():
        mant, exp = arrays["bias"][p.name]
        lif = LIFReset(shape=lava_shape(p.shape), du=int(p.du), dv=int(p.dv), vth=int(p.vth), bias_mant=mant,
                       bias_exp=exp, reset_interval=int(P), reset_offset=int((1 + p.latency) % P),
                       name=proc_name("pop", p.name))
        neurons[p.name] = lif
        out_port[p.name] = lif.s_out

    readout_probe = Extractor(shape=(graph.num_classes,), buffer_size=depth, name=proc_name("probe", READOUT_PROBE)) \
        if graph.readout else None
    synapses: dict[str, Any] = {}
    for syn in graph.synapses:
        src_shape = graph.source_shape(syn.src)
        bits = GRADED_MESSAGE_BITS if syn.graded else 0
        name = proc_name("syn", syn.name)
        extra = {"weight_exp": int(syn.weight_exp)} if syn.weight_exp else {}
        w = arrays["weights"][syn.name]
        if syn.kind == "conv":  # Lava's Conv has no weight_exp (validate() refuses a nonzero one)
            proc = Conv(weight=w, input_shape=lava_shape(src_shape), padding=xy(syn.padding), stride=xy(syn.stride),
                        groups=int(syn.groups), num_message_bits=bits, name=name)
        elif syn.kind == "identity":
            weights, delays = w
            if syn.delay:
                proc = DelaySparse(weights=weights, delays=delays, num_message_bits=bits, name=name, **extra)
            else:
                proc = Sparse(weights=weights, num_message_bits=bits, name=name, **extra)
        elif syn.delay:
            proc = DelayDense(weights=w, delays=np.full(w.shape, int(syn.delay), dtype=np.int64),
                              num_message_bits=bits, name=name, **extra)
        else:
            proc = Dense(weights=w, num_message_bits=bits, name=name, **extra)
        synapses[syn.name] = proc
        src = out_port[syn.src]
        if syn.kind in ("identity", "dense") and len(src_shape) != 1:
            src = src.flatten()
        src.connect(proc.s_in)
        if syn.dst == READOUT:
            proc.a_out.connect(readout_probe.in_port)
        else:
            dst_shape = graph.populations[syn.dst].shape
            a_out = proc.a_out
            if syn.kind in ("identity", "dense") and len(dst_shape) != 1:
                a_out = a_out.reshape(lava_shape(dst_shape))
            a_out.connect(neurons[syn.dst].a_in)

    probes = {}
    for p in graph.populations.values():
        probe = Extractor(shape=lava_shape(p.shape), buffer_size=depth, name=proc_name("probe", p.name))
        neurons[p.name].s_out.connect(probe.in_port)
        probes[p.name] = probe
    return LavaNetwork(graph, S, source, neurons, synapses, probes, readout_probe, plan)
