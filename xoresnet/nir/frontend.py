"""The NIR front end: any producer's NIR graph -> one canonical NIR graph the pipeline deploys.

:func:`import_nir` takes a :class:`~xoresnet.nir.reader.RawGraph` (:func:`xoresnet.nir.reader.read_nir_file`)
and :class:`ImportOptions` and returns an :class:`ImportedGraph`: a ``nir.NIRGraph`` that
:class:`~xoresnet.nir.interpreter.NIRInterpreter` runs and :func:`calibration.float_graph.nir_to_float_graph`
maps onto Loihi, plus what was normalized on the way. The canonical graph is the same graph with

* every shape inferred here from the Input forward (nir's own type inference fails on graphs that
  snnTorch and nirtorch really write); a leading batch dimension of 1 in the Input's type, which
  ``nirtorch.extract_nir_graph`` copies from its sample, is dropped (``(1, C, H, W)`` -> ``(C, H, W)``,
  ``(1, N)`` -> ``(N,)``);
* every neuron parameter broadcast to its population's shape (Norse writes scalars), ``v_reset``
  defaulting to 0, numeric conv padding (``"same"``/``"valid"`` resolved), bias-less convs given
  zero biases;
* the Input node named ``input`` and the Output node ``output`` (other nodes so named are renamed);
  nodes ordered Input first, then by first appearance as an edge's destination (for our own files
  exactly the order :func:`xoresnet.nir.export.export_nir` created them, so both paths calibrate the
  same populations in the same order);
* with ``convention="norse"``, Norse 1.1.0's parameters rewritten to NIR's meaning
  (:data:`CONVENTIONS`);
* graph metadata ``dt`` and ``xoresnet`` (JSON: timesteps, input levels, the readout rule, the
  decay-grid choice, the source file, the time convention) for the later stages.

Refused with :class:`~xoresnet.errors.UnsupportedModelError` (exit 4), one line naming the node and
the reason: a node type outside :data:`SUPPORTED`, a nested subgraph (recurrent or not), a cycle
(a recurrent edge; Loihi synapses here are feed-forward), a reset we cannot express (``v_reset !=
0``, a negative threshold), a shape we cannot infer (a conv, pool, Affine or Flatten that does not
fit its input, a parameter that does not broadcast, an Input that is neither ``(C, H, W)`` nor
``(N,)``), an LI node anywhere but right before the Output, a node that never reaches the Output,
several Inputs or Outputs, a readout rule the graph cannot give. A malformed file (an edge naming a
missing node, a missing field) is a bad input file (:class:`~xoresnet.errors.DataError`, exit 3).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import nir
import numpy as np

from xoresnet.errors import DataError, UnsupportedModelError, UsageError

from .export import NIR_FORMAT as FORMAT, TIME_CONVENTION
from .reader import RawGraph, RawNode, metadata_json
from .interpreter import topological_order

#: Node types the front end maps (nir class names).
SUPPORTED = ("Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "SumPool2d", "AvgPool2d", "Scale",
             "Threshold", "IF", "LIF", "CubaLIF", "LI", "Delay")
SPIKING = ("IF", "LIF", "CubaLIF", "Threshold")
#: Readout rules: ``spike-count`` (the Output reads a spiking layer: the prediction is the argmax of its
#: spike counts), ``membrane`` (the Output reads an LI layer or a synapse chain: the argmax of its
#: membrane/value averaged over the timesteps).
READOUT_RULES = ("spike-count", "membrane")
#: Parameter conventions of producers whose files do not mean what NIR's equations say.
CONVENTIONS = {
    "nir": "NIR's equations as written, forward Euler with step dt (snnTorch 1.0 writes this: its Leaky and "
           "Synaptic export reproduces its own simulation at dt = 1e-4)",
    "norse": "norse.torch.to_nir 1.1.0: every tau in the file is dt * tau (export_nir.py writes "
             "tau = dt / tau_inv), LIFCell adds its input to the synaptic current as a jump "
             "(functional/lif.py: i = i + input, exported without w_in), IAFCell adds its input to v "
             "(functional/iaf.py); rewritten here to tau / dt, w_in = tau_syn / dt and r = 1 / dt",
}
DEFAULT_DECAY_TOLERANCE = 1e-6


@dataclass
class ImportOptions:
    """What the file does not say. ``dt``: the time step (None: the file's own, only for files of ours);
    ``timesteps``, ``input_levels`` (the network input is ``pixels / input_levels``): None for ours;
    ``readout``: a rule of :data:`READOUT_RULES` (None: the one the graph's last layer implies);
    ``convention``: a key of :data:`CONVENTIONS`; ``decay_tolerance``/``snap_decays``: how far a decay
    may lie off Loihi's 12-bit grid (:mod:`calibration.float_graph`); ``image_shape``: the ``(C, H, W)``
    of the images a 1-D Input reads flattened (a dataset's, or the ``--calib-data`` array's);
    ``default_input_levels``: the input scale when neither ``input_levels`` nor the file gives one (the
    dataset's largest pixel value)."""

    dt: Optional[float] = None
    timesteps: Optional[int] = None
    input_levels: Optional[int] = None
    readout: Optional[str] = None
    convention: str = "nir"
    decay_tolerance: float = DEFAULT_DECAY_TOLERANCE
    snap_decays: bool = False
    image_shape: Optional[tuple[int, int, int]] = None
    default_input_levels: Optional[int] = None


@dataclass
class ImportedGraph:
    """The canonical graph, and for the manifest and report: ``info`` (dt, timesteps, input levels,
    readout rule and why, convention, node counts, whether the file is ours) and ``notes`` (every
    normalization, one line each)."""

    graph: nir.NIRGraph
    info: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in np.asarray(self.graph.nodes["input"].input_type["input"]))


def _refuse(name: str, kind: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"NIR node {name} ({kind}): {why}")


def _pair(v: Any, name: str, kind: str, what: str) -> tuple[int, int]:
    arr = np.asarray(v).reshape(-1)
    if arr.size not in (1, 2) or not np.all(np.isfinite(arr.astype(np.float64))):
        raise _refuse(name, kind, f"{what} {arr.tolist()} is not one or two numbers")
    if np.any(arr.astype(np.float64) != np.round(arr.astype(np.float64))):
        raise _refuse(name, kind, f"{what} {arr.tolist()} is not integer")
    return int(arr[0]), int(arr[-1])


class _Importer:
    def __init__(self, raw: RawGraph, opts: ImportOptions):
        self.raw, self.opts = raw, opts
        self.notes: list[str] = []
        self.ours = metadata_json(raw.metadata, "xoresnet")
        if self.ours.get("format") != FORMAT:
            self.ours = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ graph structure
    def check_types(self) -> None:
        for name, node in self.raw.nodes.items():
            if node.type == "NIRGraph":
                cycle = _find_cycle(node.graph.nodes, node.graph.edges) if node.graph else None
                if cycle:
                    raise _refuse(name, "NIRGraph", f"a subgraph with the recurrent edge {cycle[0]} -> {cycle[1]}: "
                                  "recurrent connections cannot be lowered (xoresnet deploys feed-forward graphs)")
                raise _refuse(name, "NIRGraph", "a nested subgraph; xoresnet reads flat graphs (inline its nodes)")
            if node.type not in SUPPORTED:
                raise _refuse(name, node.type, f"node type not supported (supported: {', '.join(SUPPORTED)})")

    def structure(self) -> tuple[dict[str, str], list[str], list[tuple[str, str]]]:
        """``(renames, canonical order, renamed edges)`` after the structural checks."""
        nodes, edges = self.raw.nodes, self.raw.edges
        for a, b in edges:
            for end in (a, b):
                if end not in nodes:
                    raise DataError(f"the NIR graph's edge {a} -> {b} names a node {end!r} that does not exist")
        if len(set(edges)) != len(edges):
            dup = next(e for i, e in enumerate(edges) if e in edges[:i])
            raise UnsupportedModelError(f"NIR edge {dup[0]} -> {dup[1]} appears twice (fan-in sums distinct edges)")
        inputs = [n for n, v in nodes.items() if v.type == "Input"]
        outputs = [n for n, v in nodes.items() if v.type == "Output"]
        if len(inputs) != 1:
            raise UnsupportedModelError(f"the NIR graph has {len(inputs)} Input nodes; xoresnet deploys graphs with one")
        if len(outputs) != 1:
            raise UnsupportedModelError(f"the NIR graph has {len(outputs)} Output nodes; xoresnet reads out one")
        cycle = _find_cycle(nodes, edges)
        if cycle:
            raise _refuse(cycle[1], nodes[cycle[1]].type, f"recurrent edge {cycle[0]} -> {cycle[1]} (a cycle): "
                          "recurrent connections cannot be lowered (xoresnet deploys feed-forward graphs)")
        renames = {inputs[0]: "input", outputs[0]: "output"}
        taken = set(nodes) | {"input", "output"}
        for n in nodes:
            if n not in renames and n in ("input", "output", "readout"):
                new = n + "_node"
                while new in taken:
                    new += "_"
                renames[n] = new
                taken.add(new)
        for old, new in renames.items():
            if old != new:
                self.notes.append(f"node {old!r} renamed {new!r}")
        rn = lambda n: renames.get(n, n)  # noqa: E731
        edges = [(rn(a), rn(b)) for a, b in edges]
        order = ["input"]
        for _, b in edges:
            if b not in order:
                order.append(b)
        order += [rn(n) for n in nodes if rn(n) not in order]
        succ = {n: [b for a, b in edges if a == n] for n in order}
        pred = {n: [a for a, b in edges if b == n] for n in order}
        reached = _closure("input", succ)
        leads = _closure("output", pred)
        for n in order:
            kind = nodes[_orig(n, renames)].type
            if n not in reached:
                raise _refuse(_orig(n, renames), kind, "is not reached from the Input (it has no input)")
            if n not in leads:
                raise _refuse(_orig(n, renames), kind, "does not lead to the Output (a dangling branch)")
        return renames, order, edges

    # ------------------------------------------------------------------ nodes
    def build(self) -> ImportedGraph:
        self.check_types()
        renames, order, edges = self.structure()
        raw_of = {renames.get(n, n): v for n, v in self.raw.nodes.items()}
        dt, timesteps, levels = self.time_and_input()
        pred = {n: [a for a, b in edges if b == n] for n in order}
        succ = {n: [b for a, b in edges if a == n] for n in order}
        built: dict[str, nir.NIRNode] = {}
        topo = topological_order(dict.fromkeys(order), edges)
        for n in topo:
            node = raw_of[n]
            if node.type == "Input":
                shape = self.input_shape(node)
            else:
                ins = [self.shapes[p] for p in pred[n]]
                if len(set(ins)) != 1:
                    raise _refuse(node.name, node.type, "its inputs have different shapes "
                                  + ", ".join(f"{p}: {self.shapes[p]}" for p in pred[n]) + " (fan-in sums equal shapes)")
                shape = ins[0]
            built[n], self.shapes[n] = self.node(node, shape, dt)
            if node.type == "LI" and succ[n] != ["output"]:
                raise _refuse(node.name, "LI", f"feeds {', '.join(succ[n])}: a non-spiking LI layer is supported only "
                              "as the readout, right before the Output")
        readout, why = self.readout_rule(raw_of, pred)
        image_shape = self.image_shape(self.shapes["input"])
        meta = {"format": FORMAT, "version": 1, "timesteps": timesteps, "input_levels": levels,
                "readout_rule": readout, "readout_rule_reason": why,
                "decay_grid": {"tolerance": self.opts.decay_tolerance, "snap": self.opts.snap_decays},
                "image_shape": list(image_shape), "convention": self.opts.convention,
                "time_convention": TIME_CONVENTION, "source_format": self.ours.get("format", "nir")}
        for key in ("config", "readout", "semantics"):
            if key in self.ours:
                meta[key] = self.ours[key]
        graph = nir.NIRGraph(nodes={n: built[n] for n in order}, edges=edges,
                             metadata={"dt": dt, "xoresnet": json.dumps(meta, sort_keys=True)}, type_check=False)
        counts: dict[str, int] = {}
        for v in self.raw.nodes.values():
            counts[v.type] = counts.get(v.type, 0) + 1
        info = {"dt": dt, "dt_source": "--dt" if self.opts.dt is not None else "the file's metadata (ours)",
                "timesteps": timesteps, "input_levels": levels, "readout_rule": readout, "readout_rule_reason": why,
                "convention": self.opts.convention, "convention_meaning": CONVENTIONS[self.opts.convention],
                "decay_tolerance": self.opts.decay_tolerance, "snap_decays": self.opts.snap_decays,
                "input_shape": list(self.shapes["input"]), "image_shape": list(image_shape),
                "node_types": dict(sorted(counts.items())), "nodes": len(self.raw.nodes),
                "edges": len(self.raw.edges), "xoresnet_file": bool(self.ours), "nir_version": self.raw.version}
        return ImportedGraph(graph, info, self.notes)

    def time_and_input(self) -> tuple[float, int, int]:
        o = self.opts
        dt = o.dt if o.dt is not None else (float(self.raw.metadata["dt"]) if self.ours and "dt" in self.raw.metadata
                                            else None)
        if dt is None:
            raise UsageError("the NIR graph does not say its time step: pass --dt (seconds per timestep in the "
                             "file's time unit, e.g. 1e-4 for snnTorch's export, 1e-3 for Norse's)")
        if not (math.isfinite(dt) and dt > 0):
            raise UsageError(f"--dt must be a positive number, got {dt}")
        T = o.timesteps if o.timesteps is not None else self.ours.get("timesteps")
        if T is None:
            raise UsageError("the NIR graph does not say how many timesteps a sample runs: pass --timesteps")
        levels = o.input_levels if o.input_levels is not None else self.ours.get("input_levels",
                                                                                  o.default_input_levels)
        if levels is None:
            raise UsageError("the NIR graph does not say its input scale: pass --input-levels (the network input is "
                             "pixels / input_levels) or a --dataset")
        return float(dt), int(T), int(levels)

    def input_shape(self, node: RawNode) -> tuple[int, ...]:
        raw = node.fields.get("shape")
        if raw is None and isinstance(node.fields.get("input_type"), dict):
            raw = node.fields["input_type"].get("input")
        if raw is None:
            raise DataError(f"NIR node {node.name} (Input) has no shape")
        shape = tuple(int(v) for v in np.asarray(raw).reshape(-1))
        if len(shape) in (2, 4) and shape[0] == 1:
            self.notes.append(f"Input {node.name}: leading batch dimension of its type {list(shape)} dropped "
                              "(nirtorch records its sample's batch)")
            shape = shape[1:]
        if len(shape) not in (1, 3) or min(shape, default=0) < 1:
            raise _refuse(node.name, "Input", f"shape {list(shape)} is neither (C, H, W) nor (N,)")
        return shape

    def image_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        given = self.opts.image_shape
        if len(shape) == 3:
            if given is not None and tuple(given) != tuple(shape):
                raise UsageError(f"the images are {list(given)}, the NIR graph's Input is {list(shape)}")
            return tuple(shape)
        if given is not None:
            if math.prod(given) != shape[0]:
                raise UsageError(f"the images are {list(given)} ({math.prod(given)} values), the NIR graph's Input "
                                 f"takes {shape[0]}")
            self.notes.append(f"Input (N = {shape[0]}) reads the {list(given)} images flattened in (C, H, W) order")
            return tuple(int(v) for v in given)
        return (shape[0], 1, 1)

    def readout_rule(self, raw_of: dict[str, RawNode], pred: dict[str, list[str]]) -> tuple[str, str]:
        last = pred["output"][0] if len(pred["output"]) == 1 else None
        while last is not None and raw_of[last].type == "Flatten" and len(pred[last]) == 1:
            last = pred[last][0]
        kind = raw_of[last].type if last is not None else None
        natural = "spike-count" if kind in SPIKING else "membrane"
        asked = self.opts.readout
        if asked is None:
            why = (f"inferred: the Output reads {kind} node {last}" if last else "inferred: the Output sums several "
                   "nodes")
            return natural, why
        if asked not in READOUT_RULES:
            raise UsageError(f"--readout {asked}: choose from {', '.join(READOUT_RULES)}")
        if asked != natural:
            what = f"{kind} node {raw_of[last].name}" if last else "several nodes"
            if asked == "spike-count":
                raise UnsupportedModelError(f"--readout spike-count: the Output reads {what}, which does not spike")
            raise UnsupportedModelError(
                f"--readout membrane: the Output reads spiking {what}, whose membrane Loihi does not send off the "
                "chip; read its spike counts (--readout spike-count) or end the graph with an LI readout")
        return asked, "chosen with --readout"

    def node(self, node: RawNode, s_in: tuple[int, ...], dt: float) -> tuple[nir.NIRNode, tuple[int, ...]]:
        """The canonical nir node of ``node`` and its output shape, for an input of shape ``s_in``."""
        kind, name, f = node.type, node.name, node.fields
        meta = {k: v for k, v in node.metadata.items() if isinstance(v, (str, int, float))}

        def need(key: str) -> np.ndarray:
            if key not in f or f[key] is None:
                raise DataError(f"NIR node {name} ({kind}) has no field {key!r}")
            arr = np.asarray(f[key])
            if arr.dtype.kind not in "biuf":
                raise DataError(f"NIR node {name} ({kind}): field {key!r} is not numeric")
            if not np.all(np.isfinite(arr.astype(np.float64))):
                raise DataError(f"NIR node {name} ({kind}): field {key!r} holds NaN or infinite values")
            return arr

        def per_neuron(key: str, default: Optional[float] = None) -> np.ndarray:
            if default is not None and (key not in f or f[key] is None):
                return np.full(s_in, default, np.float64)
            arr = need(key)
            try:
                out = np.broadcast_to(arr, s_in)
            except ValueError:
                raise _refuse(name, kind, f"parameter {key} of shape {list(arr.shape)} does not fit its input's shape "
                              f"{list(s_in)}") from None
            return np.array(out, dtype=arr.dtype if arr.dtype.kind == "f" else np.float64)

        if kind == "Input":
            return nir.Input(input_type={"input": np.array(s_in)}), s_in
        if kind == "Output":
            return nir.Output(output_type={"output": np.array(s_in)}), s_in
        if kind in ("Affine", "Linear"):
            w = need("weight")
            if w.ndim != 2:
                raise _refuse(name, kind, f"weight of shape {list(w.shape)} is not a matrix")
            if len(s_in) != 1:
                raise _refuse(name, kind, f"reads a signal of shape {list(s_in)}; an Affine/Linear reads a vector (a "
                              "Flatten is missing: Norse 1.1.0's to_nir drops Flatten modules)")
            if w.shape[1] != s_in[0]:
                raise _refuse(name, kind, f"weight {list(w.shape)} does not fit its input of {s_in[0]} values")
            out = (int(w.shape[0]),)
            if kind == "Linear":
                return nir.Linear(weight=w, metadata=meta), out
            b = need("bias") if f.get("bias") is not None else np.zeros(out, w.dtype)
            if b.shape != out:
                raise _refuse(name, kind, f"bias of shape {list(b.shape)} does not fit {out[0]} outputs")
            return nir.Affine(weight=w, bias=b, metadata=meta), out
        if kind == "Conv2d":
            return self.conv(name, f, need, s_in, meta)
        if kind in ("SumPool2d", "AvgPool2d"):
            if len(s_in) != 3:
                raise _refuse(name, kind, f"pools a signal of shape {list(s_in)}, not (C, H, W)")
            k = _pair(need("kernel_size"), name, kind, "kernel_size")
            st = _pair(need("stride"), name, kind, "stride") if f.get("stride") is not None else k
            pad = _pair(need("padding"), name, kind, "padding") if f.get("padding") is not None else (0, 0)
            out = (s_in[0],) + tuple((s_in[1 + i] + 2 * pad[i] - k[i]) // st[i] + 1 for i in range(2))
            if min(k + st) < 1 or min(pad) < 0 or min(out) < 1:
                raise _refuse(name, kind, f"kernel {k}, stride {st}, padding {pad} do not fit its input {list(s_in)}")
            cls = nir.SumPool2d if kind == "SumPool2d" else nir.AvgPool2d
            return cls(kernel_size=np.array(k), stride=np.array(st), padding=np.array(pad), metadata=meta), out
        if kind == "Flatten":
            n = len(s_in)
            start, end = (int(np.asarray(f.get(key, d)).reshape(-1)[0]) for key, d in (("start_dim", 0), ("end_dim", -1)))
            s, e = (d + n if d < 0 else d for d in (start, end))
            if not 0 <= s <= e < n:
                raise _refuse(name, kind, f"start_dim {start}, end_dim {end} do not fit its input {list(s_in)}")
            out = s_in[:s] + (math.prod(s_in[s:e + 1]),) + s_in[e + 1:]
            return nir.Flatten(input_type={"input": np.array(s_in)}, start_dim=start, end_dim=end, metadata=meta), out
        if kind == "Scale":
            return nir.Scale(scale=per_neuron("scale"), metadata=meta), s_in
        if kind == "Threshold":
            return nir.Threshold(threshold=per_neuron("threshold"), metadata=meta), s_in
        if kind == "Delay":
            d = per_neuron("delay")
            steps = d / dt
            if not np.allclose(steps, steps.flat[0], rtol=0, atol=1e-6) or abs(steps.flat[0] - round(steps.flat[0])) \
                    > 1e-6 or steps.flat[0] < -1e-6:
                raise _refuse(name, kind, f"delay {np.unique(d)[:4].tolist()} is not one whole number of timesteps of "
                              f"dt = {dt:g} for all its elements (Loihi delays a synapse by whole steps)")
            return nir.Delay(delay=d, metadata=meta), s_in
        return self.neuron(node, per_neuron, s_in, dt, meta), s_in

    def conv(self, name, f, need, s_in, meta) -> tuple[nir.NIRNode, tuple[int, ...]]:
        kind = "Conv2d"
        w = need("weight")
        if w.ndim != 4:
            raise _refuse(name, kind, f"weight of shape {list(w.shape)} is not [C_out, C_in / groups, kH, kW]")
        if len(s_in) != 3:
            raise _refuse(name, kind, f"convolves a signal of shape {list(s_in)}, not (C, H, W)")
        groups = int(np.asarray(f.get("groups", 1)).reshape(-1)[0])
        stride = _pair(f.get("stride", 1), name, kind, "stride")
        dilation = _pair(f.get("dilation", 1), name, kind, "dilation")
        k = (int(w.shape[2]), int(w.shape[3]))
        if groups < 1 or w.shape[0] % groups or w.shape[1] * groups != s_in[0]:
            raise _refuse(name, kind, f"weight {list(w.shape)} with groups {groups} does not fit its input of "
                          f"{s_in[0]} channels")
        if min(stride + dilation) < 1:
            raise _refuse(name, kind, f"stride {stride} and dilation {dilation} must be >= 1")
        pad_raw = f.get("padding", 0)
        if isinstance(pad_raw, (str, np.ndarray)) and np.asarray(pad_raw).dtype.kind in "OUS":
            text = str(np.asarray(pad_raw).reshape(-1)[0])
            if text == "valid":
                pad = (0, 0)
            elif text == "same":
                total = [dilation[i] * (k[i] - 1) for i in range(2)]
                if any(t % 2 for t in total) or stride != (1, 1):
                    raise _refuse(name, kind, "padding 'same' here needs uneven padding or a stride, which Loihi's "
                                  "symmetric padding cannot give")
                pad = (total[0] // 2, total[1] // 2)
            else:
                raise _refuse(name, kind, f"padding {text!r} is not 'same', 'valid' or numbers")
        else:
            pad = _pair(pad_raw, name, kind, "padding")
        out = (int(w.shape[0]),) + tuple((s_in[1 + i] + 2 * pad[i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1
                                         for i in range(2))
        if min(pad) < 0 or min(out) < 1:
            raise _refuse(name, kind, f"kernel {k}, stride {stride}, padding {pad}, dilation {dilation} do not fit its "
                          f"input {list(s_in)}")
        b = f.get("bias")
        b = need("bias") if b is not None and np.asarray(b).size else np.zeros(w.shape[0], w.dtype)
        if b.shape != (w.shape[0],):
            raise _refuse(name, kind, f"bias of shape {list(b.shape)} does not fit {w.shape[0]} output channels")
        node = nir.Conv2d(input_shape=tuple(s_in[1:]), weight=w, stride=stride, padding=pad, dilation=dilation,
                          groups=groups, bias=b, metadata=meta)
        return node, out

    def neuron(self, node: RawNode, per_neuron: Callable, s_in, dt: float, meta) -> nir.NIRNode:
        kind, name = node.type, node.name
        p: dict[str, np.ndarray] = {}
        if kind in ("IF", "LIF", "CubaLIF"):
            p["v_threshold"] = per_neuron("v_threshold")
            p["v_reset"] = per_neuron("v_reset", 0.0)
            if np.any(p["v_reset"] != 0):
                raise _refuse(name, kind, f"resets to v_reset = {float(p['v_reset'][p['v_reset'] != 0].flat[0]):g}; "
                              "Loihi 2's LIF resets v to 0 (a reset that cannot be expressed)")
            if np.any(p["v_threshold"] < 0):
                raise _refuse(name, kind, "has a negative v_threshold; Loihi 2's threshold is a non-negative register")
        p["r"] = per_neuron("r", 1.0)
        if kind != "IF":
            taus = ("tau_syn", "tau_mem") if kind == "CubaLIF" else ("tau",)
            for t in taus:
                p[t] = per_neuron(t)
                if np.any(p[t] <= 0):
                    raise _refuse(name, kind, f"has {t} <= 0")
            p["v_leak"] = per_neuron("v_leak", 0.0)
        if kind == "CubaLIF":
            p["w_in"] = per_neuron("w_in", 1.0)
        if self.opts.convention == "norse":
            p = _norse_to_nir(kind, p, dt)
        cls = {"IF": nir.IF, "LIF": nir.LIF, "CubaLIF": nir.CubaLIF, "LI": nir.LI}[kind]
        return cls(**p, metadata=meta)


def _norse_to_nir(kind: str, p: dict[str, np.ndarray], dt: float) -> dict[str, np.ndarray]:
    """Norse 1.1.0's parameters in NIR's meaning (:data:`CONVENTIONS`), float64."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    for t in ("tau", "tau_syn", "tau_mem"):
        if t in p:
            p[t] = p[t] / dt
    if kind == "CubaLIF":
        p["w_in"] = p["w_in"] * p["tau_syn"] / dt
    if kind == "IF":
        p["r"] = p["r"] / dt
    return p


def _orig(n: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if new == n:
            return old
    return n


def _closure(start: str, nxt: dict[str, list[str]]) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for m in nxt[stack.pop()]:
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return seen


def _find_cycle(nodes, edges) -> Optional[tuple[str, str]]:
    """An edge ``(a, b)`` that closes a cycle, or None (iterative depth-first search)."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        if a in succ and b in succ:
            succ[a].append(b)
    state: dict[str, int] = {}
    for root in nodes:
        if root in state:
            continue
        stack = [(root, iter(succ[root]))]
        state[root] = 1
        while stack:
            n, it = stack[-1]
            m = next(it, None)
            if m is None:
                state[n] = 2
                stack.pop()
            elif state.get(m) == 1:
                return (n, m)
            elif m not in state:
                state[m] = 1
                stack.append((m, iter(succ[m])))
    return None


def import_nir(raw: RawGraph, opts: ImportOptions) -> ImportedGraph:
    """The canonical graph of ``raw`` under ``opts`` (module docstring: what is normalized, what refused)."""
    if opts.convention not in CONVENTIONS:
        raise UsageError(f"--nir-convention {opts.convention}: choose from {', '.join(CONVENTIONS)}")
    if not (math.isfinite(opts.decay_tolerance) and opts.decay_tolerance >= 0):
        raise UsageError(f"--decay-tolerance must be >= 0, got {opts.decay_tolerance}")
    return _Importer(raw, opts).build()
