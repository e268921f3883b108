"""A discrete-time interpreter for the NIR graphs we emit (and other graphs of the same primitives).

Semantics (ours, stated because NIR itself is continuous-time): time steps of ``dt =
graph.metadata["dt"]``; every node sees, at step ``t``, the sum of its predecessors' outputs at
the same step ``t`` (zero delay, as PyTorch trains); neurons integrate with forward Euler from
zero state and test ``v > v_threshold`` (strict) before a hard reset to ``v_reset``:

* ``IF``:      ``v += dt * r * I``
* ``LIF``:     ``v += dt / tau * (v_leak - v + r * I)``
* ``CubaLIF``: ``I_syn += dt / tau_syn * (-I_syn + w_in * x)``, then
  ``v += dt / tau_mem * (v_leak - v + r * I_syn)``
* ``LI`` (a non-spiking readout): ``v += dt / tau * (v_leak - v + r * I)``, its output is ``v``;
* ``Threshold``: ``x > threshold`` (memoryless); ``Scale``: ``x * scale``; ``Delay``: ``y_t = x_{t - k}``
  with ``k = delay / dt`` steps (zeros before); ``Conv2d``, ``Affine``, ``Linear``, ``Flatten`` (dims
  exclude the batch; negative dims count from the end), ``SumPool2d``, ``AvgPool2d`` as in PyTorch.

Nodes run one at a time over the whole sequence ``[T, B, ...]`` in topological order, which is
exact for feed-forward graphs. The analog ``Input`` is repeated over ``T`` (direct encoding).
The graph's one ``Input`` node may have any name; the readout is the node named ``output``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import nir
import numpy as np
import torch
import torch.nn.functional as F

from xoresnet.errors import UnsupportedModelError

from .export import read_meta

NEURON_TYPES = (nir.IF, nir.LIF, nir.CubaLIF)
#: Every node type the interpreter runs.
SUPPORTED_TYPES = (nir.Input, nir.Output, nir.Conv2d, nir.Affine, nir.Linear, nir.Flatten, nir.SumPool2d,
                   nir.AvgPool2d, nir.Scale, nir.Threshold, nir.Delay, nir.LI) + NEURON_TYPES


def topological_order(nodes: dict, edges: list[tuple[str, str]]) -> list[str]:
    """Kahn's algorithm, ties broken by insertion order; raises on cycles and dangling edges."""
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    succs: dict[str, list[str]] = {n: [] for n in nodes}
    for src, dst in edges:
        if src not in nodes or dst not in nodes:
            raise UnsupportedModelError(f"NIR edge {src} -> {dst} names a node that does not exist")
        preds[dst].append(src)
        succs[src].append(dst)
    indeg = {n: len(p) for n, p in preds.items()}
    ready = [n for n in nodes if indeg[n] == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for m in succs[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
    if len(order) != len(nodes):
        raise UnsupportedModelError("the NIR graph has a cycle (recurrent graphs are not supported)")
    return order


def predecessors(graph: nir.NIRGraph) -> dict[str, list[str]]:
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for src, dst in graph.edges:
        preds[dst].append(src)
    return preds


@dataclass
class Trace:
    """Outputs ``[T, B, ...]`` of every node, pre-reset membranes of neuron nodes, and the logits."""

    outputs: dict[str, torch.Tensor]
    membranes: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def logits(self) -> torch.Tensor:
        """``[B, K]``: the ``output`` node averaged over time (our readout rule)."""
        return self.outputs["output"].mean(0)


def input_node(graph: nir.NIRGraph) -> str:
    """The name of the graph's one ``Input`` node."""
    names = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(names) != 1:
        raise UnsupportedModelError(f"the NIR graph has {len(names)} Input nodes; xoresnet runs graphs with exactly one")
    return names[0]


def delay_steps(node: nir.Delay, dt: float) -> int:
    """Whole timesteps of a ``Delay`` node (uniform over its elements, a multiple of ``dt`` within 1e-6)."""
    d = np.asarray(node.delay, dtype=np.float64).reshape(-1)
    steps = d / dt if d.size else np.zeros(1)
    if not np.allclose(steps, steps[0], rtol=0, atol=1e-6) or abs(steps[0] - round(steps[0])) > 1e-6 \
            or round(steps[0]) < 0:
        raise UnsupportedModelError(f"Delay of {d[:4].tolist()} is not one whole number of timesteps of dt = {dt:g}")
    return int(round(steps[0]))


def _t(a, dtype, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)


def pair(v) -> tuple[int, int]:
    """A NIR size/stride/padding field (a scalar or a pair) as ``(first, last)`` ints."""
    v = np.asarray(v).reshape(-1)
    return (int(v[0]), int(v[-1]))


#: Nodes whose outputs are spikes (0/1).
SPIKING_NODES = NEURON_TYPES + (nir.Threshold,)


class NIRInterpreter:
    """Run a NIR graph; ``dtype`` float32 (default, like the PyTorch model) or float64."""

    def __init__(self, graph: nir.NIRGraph, *, device: str | torch.device = "cpu", dtype=torch.float32):
        self.graph = graph
        self.device = torch.device(device)
        self.dtype = dtype
        self.dt = float(np.asarray(graph.metadata.get("dt", 1.0)))
        self.order = topological_order(graph.nodes, graph.edges)
        self.preds = predecessors(graph)
        meta = read_meta(graph)
        self.timesteps: Optional[int] = meta.get("timesteps")
        for name in self.order:
            node = graph.nodes[name]
            if not isinstance(node, SUPPORTED_TYPES):
                raise UnsupportedModelError(f"NIR node {name} of type {type(node).__name__} is not supported")
        self.input = input_node(graph)
        self.input_shape = tuple(int(v) for v in np.asarray(graph.nodes[self.input].input_type["input"]))

    @torch.no_grad()
    def run(self, x: torch.Tensor, timesteps: Optional[int] = None, *, keep: Optional[set[str]] = None,
            spikes_only: bool = False) -> Trace:
        """``x``: analog input ``[B, ...]`` (repeated over time; any trailing shape with as many elements as
        the Input node's, e.g. images ``[B, C, H, W]`` for an Input of ``(C * H * W,)``) or a sequence
        ``[T, B, *input_shape]``.

        ``keep``: node names whose outputs to return (default: all). ``spikes_only``: keep the
        outputs of neuron and threshold nodes (0/1) as bool once no later node reads them, and
        record no membranes: 1/8 of the memory or less, for long runs.
        """
        T = timesteps or self.timesteps
        x = x.to(self.device, self.dtype)
        shape = self.input_shape
        if not (x.dim() == len(shape) + 2 and tuple(x.shape[2:]) == shape):
            if T is None:
                raise ValueError("timesteps unknown: pass timesteps=")
            x = x.reshape((x.shape[0],) + shape)
            x = x.unsqueeze(0).expand(T, *x.shape)
        values: dict[str, torch.Tensor] = {}
        membranes: dict[str, torch.Tensor] = {}
        remaining = {n: 0 for n in self.order}
        for src, _ in self.graph.edges:
            remaining[src] += 1
        for name in self.order:
            node = self.graph.nodes[name]
            if name == self.input:
                out = x
            else:
                ins = [values[p] for p in self.preds[name]]
                if not ins:
                    raise UnsupportedModelError(f"NIR node {name} has no input")
                total = ins[0] if len(ins) == 1 else torch.stack(torch.broadcast_tensors(*ins)).sum(0)
                out = self._eval(name, node, total, membranes)
            values[name] = out
            if spikes_only:
                membranes.clear()
            for p in self.preds[name]:  # free intermediate sequences as soon as possible
                remaining[p] -= 1
                if remaining[p] == 0 and keep is not None and p not in keep and p != "output":
                    del values[p]
                elif remaining[p] == 0 and spikes_only and isinstance(self.graph.nodes[p], SPIKING_NODES):
                    values[p] = values[p] != 0
        if keep is not None:
            values = {k: v for k, v in values.items() if k in keep or k == "output"}
            membranes = {k: v for k, v in membranes.items() if k in keep}
        return Trace(values, membranes)

    # ------------------------------------------------------------------ node semantics
    def _eval(self, name: str, node: nir.NIRNode, x: torch.Tensor, membranes: dict) -> torch.Tensor:
        T, B = x.shape[:2]
        d, dev = self.dtype, self.device
        if isinstance(node, nir.Output):
            return x
        if isinstance(node, nir.Conv2d):
            w = _t(node.weight, d, dev)
            padding = node.padding if isinstance(node.padding, str) else pair(node.padding)
            y = F.conv2d(x.flatten(0, 1), w, _t(node.bias, d, dev), stride=pair(node.stride), padding=padding,
                         dilation=pair(node.dilation), groups=int(node.groups))
            return y.unflatten(0, (T, B))
        if isinstance(node, nir.Affine):
            return x @ _t(node.weight, d, dev).T + _t(node.bias, d, dev)
        if isinstance(node, nir.Linear):
            return x @ _t(node.weight, d, dev).T
        if isinstance(node, nir.Scale):
            return x * _t(node.scale, d, dev)
        if isinstance(node, nir.Threshold):
            return (x > _t(node.threshold, d, dev)).to(d)
        if isinstance(node, nir.Flatten):
            start, end = (int(d) + 2 if int(d) >= 0 else int(d) for d in (node.start_dim, node.end_dim))
            return x.flatten(start, end)
        if isinstance(node, nir.Delay):
            k = delay_steps(node, self.dt)
            if k == 0:
                return x
            out = torch.zeros_like(x)
            out[k:] = x[: max(0, T - k)]
            return out
        if isinstance(node, nir.LI):
            leak, v_in, gain = self.dt / _t(node.tau, d, dev), _t(node.v_leak, d, dev), _t(node.r, d, dev)
            v = torch.zeros_like(x[0])
            out = torch.empty_like(x)
            for t in range(T):
                v = v + leak * (v_in - v + gain * x[t])
                out[t] = v
            membranes[name] = out
            return out
        if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
            k = pair(node.kernel_size)
            y = F.avg_pool2d(x.flatten(0, 1), k, stride=pair(node.stride), padding=pair(node.padding))
            if isinstance(node, nir.SumPool2d):
                y = y * (k[0] * k[1])
            return y.unflatten(0, (T, B))
        if isinstance(node, NEURON_TYPES):
            s, h = self._neuron(node, x)
            membranes[name] = h
            return s
        raise UnsupportedModelError(f"NIR node {name} of type {type(node).__name__} is not supported")

    def _neuron(self, node: nir.NIRNode, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, dev, dt = self.dtype, self.device, self.dt
        vth, v_reset = _t(node.v_threshold, d, dev), _t(node.v_reset, d, dev)
        if isinstance(node, nir.IF):
            gain_v, leak, v_in = dt * _t(node.r, d, dev), None, None
        else:
            tau = node.tau if isinstance(node, nir.LIF) else node.tau_mem
            leak = dt / _t(tau, d, dev)
            v_in, gain_v = _t(node.v_leak, d, dev), _t(node.r, d, dev)
        if isinstance(node, nir.CubaLIF):
            syn_leak, w_in = dt / _t(node.tau_syn, d, dev), _t(node.w_in, d, dev)
        v = torch.zeros_like(x[0])
        i_syn = torch.zeros_like(x[0])
        s_out = torch.empty_like(x)
        h_out = torch.empty_like(x)
        for t in range(x.shape[0]):
            if isinstance(node, nir.IF):
                h = v + gain_v * x[t]
            else:
                current = x[t]
                if isinstance(node, nir.CubaLIF):
                    i_syn = i_syn + syn_leak * (-i_syn + w_in * x[t])
                    current = i_syn
                h = v + leak * (v_in - v + gain_v * current)
            s = h > vth
            h_out[t] = h
            s_out[t] = s.to(d)
            v = torch.where(s, v_reset, h)
        return s_out, h_out
