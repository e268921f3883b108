"""Export an XOResNet to a standard NIR graph (float), spike logic lowered to threshold neurons.

Only standard NIR primitives are emitted: Input, Output, Conv2d, Affine, Flatten, SumPool2d,
AvgPool2d, Scale, Threshold, IF, LIF, CubaLIF. Batch norm is folded into each conv (its scale
into the weights, its shift into the conv bias or, for CUBA neurons, the neuron's ``v_leak``).
NIR's fan-in rule (several edges into a node are summed) expresses the ADD of currents and SEW's
spike ADD; OR/AND/IAND/XOR become memoryless threshold nodes with integer weights::

    OR(a, b)   = Threshold(0.5)(a + b)            AND(a, b) = Threshold(1.5)(a + b)
    IAND(a, s) = Threshold(0.5)(Scale(-1)(a) + s)
    XOR(a, b)  = Threshold(0.5)(a + b + Scale(-2)(AND(a, b)))
    OR-pool    = Threshold(0.5)(SumPool2d(2x2)(s))  (spike max-pooling of the 84x84 stem)

The XOR *selection* ``S_l XOR S_{l-1}`` of a network whose blocks merge by OR is emitted as
``IAND(S_{l-1}, S_l)``: there ``S_l = A_{l-1} OR S_{l-1}`` contains ``S_{l-1}`` at every step, so
both are exactly equal and the IAND needs one threshold layer instead of two (one population and
one Loihi timestep less per selecting block). Its metadata records ``selection: xor``.

Discrete time: the graph carries ``metadata["dt"] = 1`` and our semantics are forward Euler with
that step (see :mod:`xoresnet.nir.interpreter`). Neurons, with ``du``/``dv``/``bias`` as in
:mod:`xoresnet.neuron`:

* ``du = 1, dv = 0``: ``IF(r = 1)``; ``du = 1, dv > 0``: ``LIF(tau = 1/dv, r = 1/dv, v_leak = 0)``;
  the bias rides in the conv bias (with ``du = 1`` the current is the conv output itself);
* ``du < 1, dv > 0``: ``CubaLIF(tau_syn = 1/du, w_in = 1/du, tau_mem = 1/dv, r = 1/dv,
  v_leak = bias/dv)``; conv biases are zero.
* ``v_reset = 0`` everywhere (hard reset). Soft reset, and ``du < 1`` with ``dv = 0`` (no NIR form
  with a per-step bias), are refused with :class:`~xoresnet.errors.UnsupportedModelError`.

Every node's ``metadata["xoresnet"]`` is a JSON string ``{"role", "block", "op", ...}`` so our
compiler can recognise gate subgraphs; other NIR consumers see plain nodes. The neurons and gates of
a residual block also say what they are in it, ``block_role``: ``neuron`` (the backbone),
``shortcut_neuron``, ``sel``, ``mid`` or ``merge`` (:data:`calibration.integer_graph.POPULATION_ROLES`). The graph's
``metadata["xoresnet"]`` holds the network config, timesteps, input levels and the readout rule
(logits = the Output averaged over time).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import nir
import numpy as np
import torch

from xoresnet.blocks import ConvBN, XORResidualBlock
from xoresnet.errors import UnsupportedModelError
from xoresnet.network import XOResNet
from xoresnet.neuron import CubaLIF, decay_problem

NIR_FORMAT = "xoresnet-nir"
NIR_VERSION = 1
DT = 1.0

#: A signal is the list of nodes whose outputs sum to it (several for SEW-ADD spike counts).
Signal = list[str]

#: What a NIR graph of ours means in time (graph metadata ``time_convention``, docs/formats.md); the NIR
#: front end records it in every graph it imports.
TIME_CONVENTION = (
    "discrete time with step dt (metadata 'dt', seconds or any unit the taus share): every node sees its "
    "inputs' values of the same step; neurons integrate with forward Euler: LIF and LI v += dt / tau * "
    "(v_leak - v + r * I), IF v += dt * r * I, CubaLIF first I += dt / tau_syn * (-I + w_in * x); a neuron "
    "spikes when v > v_threshold (strict), then v = v_reset; Threshold is memoryless (x > threshold); Delay "
    "shifts by delay / dt steps; the input is the same analog frame pixels / input_levels at every one of "
    "'timesteps' steps")


def node_meta(role: str, **fields: Any) -> dict[str, str]:
    """Node metadata: our annotations as one JSON string under the key ``xoresnet``."""
    return {"xoresnet": json.dumps({"role": role, **fields}, sort_keys=True)}


def read_meta(node: nir.NIRNode) -> dict[str, Any]:
    """Our annotations of a node or of a whole graph (a ``NIRGraph`` is a node): the JSON under
    ``metadata["xoresnet"]``, as written or read back by ``nir.read`` (bytes); empty for nodes made
    by other tools."""
    raw = (getattr(node, "metadata", None) or {}).get("xoresnet")
    if raw is None:
        return {}
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


def check_deployable(model: XOResNet) -> None:
    """Refuse what Loihi's LIF (and NIR's hard-reset neurons) cannot express, naming the reason."""
    spec = model.config.neuron
    if spec.reset != "hard":
        raise UnsupportedModelError(
            "the model uses soft reset (v -= vth on a spike); Loihi 2's LIF resets v to 0 and NIR neurons reset to "
            "v_reset, so it cannot be deployed without changing its behaviour: retrain with --reset hard")
    for name, neuron in model.neurons().items():
        problem = decay_problem(*(float(d) for d in neuron.decays()))
        if problem:
            raise UnsupportedModelError(f"neuron {name} has {problem}")
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UnsupportedModelError(f"tensor {name} holds NaN/Inf values")


class _GraphBuilder:
    def __init__(self, model: XOResNet):
        self.model = model
        self.cfg = model.config
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.shapes: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ primitives
    def add(self, name: str, node: nir.NIRNode, shape: tuple[int, ...], inputs: Signal) -> str:
        if name in self.nodes:
            raise AssertionError(f"duplicate NIR node {name}")
        self.nodes[name] = node
        self.shapes[name] = shape
        self.edges.extend((src, name) for src in inputs)
        return name

    def conv(self, name: str, cb: ConvBN, inputs: Signal, in_shape: tuple[int, ...], *, bias_into_conv: bool,
             block: Optional[str]) -> tuple[str, np.ndarray]:
        """Conv2d with batch norm folded; returns (node, folded bias) — the bias is placed by the caller."""
        weight, bias = (t.detach().double().numpy() for t in cb.folded())
        c = cb.conv
        out_shape = (weight.shape[0],) + tuple(
            (n + 2 * c.padding[i] - c.kernel_size[i]) // c.stride[i] + 1 for i, n in enumerate(in_shape[1:]))
        node = nir.Conv2d(
            input_shape=tuple(in_shape[1:]), weight=weight.astype(np.float32), stride=tuple(c.stride),
            padding=tuple(c.padding), dilation=(1, 1), groups=1,
            bias=(bias if bias_into_conv else np.zeros_like(bias)).astype(np.float32),
            metadata=node_meta("synapse", block=block),
        )
        return self.add(name, node, out_shape, inputs), bias

    def neuron(self, name: str, module: CubaLIF, inputs: Signal, shape: tuple[int, ...], bias: np.ndarray,
               block: Optional[str], block_role: str = "neuron") -> str:
        """A neuron node; ``bias`` [C] is the summed batch-norm shift of its input convs; ``block_role``
        (``neuron`` or ``shortcut_neuron``) is recorded for neurons in a block."""
        du, dv = (float(d) for d in module.decays())
        vth = np.full(shape, module.vth, dtype=np.float32)
        zeros = np.zeros(shape, dtype=np.float32)
        ones = np.ones(shape, dtype=np.float32)
        meta = node_meta("neuron", block=block, du=du, dv=dv, vth=module.vth,
                         **({"block_role": block_role} if block else {}))
        if du == 1.0 and dv == 0.0:
            node = nir.IF(r=ones / DT, v_threshold=vth, v_reset=zeros, metadata=meta)
        elif du == 1.0:
            node = nir.LIF(tau=ones * (DT / dv), r=ones / dv, v_leak=zeros, v_threshold=vth, v_reset=zeros,
                           metadata=meta)
        else:
            per_elem = np.broadcast_to(bias.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
            node = nir.CubaLIF(
                tau_syn=ones * (DT / du), tau_mem=ones * (DT / dv), r=ones / dv,
                v_leak=(per_elem / dv).astype(np.float32), v_threshold=vth, v_reset=zeros, w_in=ones / du,
                metadata=meta,
            )
        return self.add(name, node, shape, inputs)

    def gate(self, name: str, op: str, a: Signal, b: Signal, block: str, block_role: Optional[str] = None,
             **note: str) -> Signal:
        """Spike logic ``op`` on binary signals ``a`` (backbone side) and ``b`` as threshold nodes; the
        output node records ``block_role`` (``sel``, ``mid`` or ``merge``) when given."""
        shape = self.shapes[a[0]]
        meta = dict(block=block, op=op, **note)
        out_meta = node_meta("gate", **meta, **({"block_role": block_role} if block_role else {}))
        if op == "or":
            return [self.add(name, nir.Threshold(np.full(shape, 0.5, np.float32),
                                                 metadata=out_meta), shape, a + b)]
        if op == "iand":
            neg = self.add(f"{name}.neg", nir.Scale(np.full(shape, -1.0, np.float32),
                                                    metadata=node_meta("gate_part", **meta)), shape, a)
            return [self.add(name, nir.Threshold(np.full(shape, 0.5, np.float32),
                                                 metadata=out_meta), shape, [neg] + b)]
        if op == "xor":
            both = self.add(f"{name}.and", nir.Threshold(np.full(shape, 1.5, np.float32),
                                                         metadata=node_meta("gate_part", **meta, part="and")),
                            shape, a + b)
            neg2 = self.add(f"{name}.neg2", nir.Scale(np.full(shape, -2.0, np.float32),
                                                      metadata=node_meta("gate_part", **meta)), shape, [both])
            return [self.add(name, nir.Threshold(np.full(shape, 0.5, np.float32),
                                                 metadata=out_meta), shape, a + b + [neg2])]
        if op == "add":
            return a + b  # spike counts: a sum of signals, expressed by fan-in at every consumer
        raise AssertionError(op)

    # ------------------------------------------------------------------ network structure
    def stem(self) -> Signal:
        cfg, stem = self.cfg, self.model.stem
        in_shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        self.add("input", nir.Input(input_type={"input": np.array(in_shape)}), in_shape, [])
        conv, bias = self.conv("stem.cb", stem.cb, ["input"], in_shape, bias_into_conv=self._bias_in_conv(stem.sn),
                               block=None)
        s = [self.neuron("stem.sn", stem.sn, [conv], self.shapes[conv], bias, block=None)]
        if stem.or_pool:
            c, h, w = self.shapes[s[0]]
            pooled = (c, h // 2, w // 2)
            pool = self.add("stem.pool", nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                                       padding=np.array([0, 0]),
                                                       metadata=node_meta("gate_part", op="or_pool")), pooled, s)
            s = [self.add("stem.or_pool", nir.Threshold(np.full(pooled, 0.5, np.float32),
                                                        metadata=node_meta("gate", op="or_pool")), pooled, [pool])]
        return s

    def _bias_in_conv(self, neuron: CubaLIF) -> bool:
        return float(neuron.decays()[0]) == 1.0

    def block(self, name: str, blk: XORResidualBlock, S: Signal, P: Optional[Signal]) -> Signal:
        in_shape = self.shapes[S[0]]
        M = S
        if blk.use_prev and P is not None:
            if blk.spec.merge == "or":
                # S = A_prev OR P contains P, so S XOR P = (NOT P) AND S: one gate layer instead of two
                M = self.gate(f"{name}.sel", "iand", P, S, name, "sel", selection="xor",
                              lowered="iand since S contains P")
            else:
                M = self.gate(f"{name}.sel", "xor", S, P, name, "sel", selection="xor")
        h = M
        n = len(blk.convs)
        for i in range(n - 1):
            conv, bias = self.conv(f"{name}.convs.{i}", blk.convs[i], h, self.shapes[h[0]],
                                   bias_into_conv=self._bias_in_conv(blk.neurons[i]), block=name)
            h = [self.neuron(f"{name}.neurons.{i}", blk.neurons[i], [conv], self.shapes[conv], bias, block=name)]
            if i == 0 and blk.use_mid:
                h = self.gate(f"{name}.mid", "xor", h, S, name, "mid")
        last = blk.neurons[-1]
        in_conv = self._bias_in_conv(last)
        u_a, bias = self.conv(f"{name}.convs.{n - 1}", blk.convs[-1], h, self.shapes[h[0]], bias_into_conv=in_conv,
                              block=name)
        out_shape = self.shapes[u_a]
        if blk.identity:
            shortcut = S
        else:
            target = last if blk.spec.shortcut == "add_current" else blk.shortcut_neuron
            u_s, bias_s = self.conv(f"{name}.shortcut", blk.shortcut, S, in_shape,
                                    bias_into_conv=self._bias_in_conv(target), block=name)
            if blk.spec.shortcut == "add_current":
                return [self.neuron(f"{name}.neurons.{n - 1}", last, [u_a, u_s], out_shape, bias + bias_s,
                                    block=name)]
            shortcut = [self.neuron(f"{name}.shortcut_neuron", blk.shortcut_neuron, [u_s], out_shape, bias_s,
                                    block=name, block_role="shortcut_neuron")]
        if blk.spec.merge == "add_current":
            return [self.neuron(f"{name}.neurons.{n - 1}", last, [u_a] + shortcut, out_shape, bias, block=name)]
        A = [self.neuron(f"{name}.neurons.{n - 1}", last, [u_a], out_shape, bias, block=name)]
        return self.gate(f"{name}.merge", blk.spec.merge, A, shortcut, name, "merge")

    def head(self, S: Signal) -> None:
        c, h, w = self.shapes[S[0]]
        pool = self.add("head.pool", nir.AvgPool2d(kernel_size=np.array([h, w]), stride=np.array([h, w]),
                                                   padding=np.array([0, 0])), (c, 1, 1), S)
        flat = self.add("head.flatten", nir.Flatten(input_type={"input": np.array([c, 1, 1])}, start_dim=0, end_dim=-1,
                                                    metadata=node_meta("readout")), (c,), [pool])
        lin = self.model.head
        k = lin.out_features
        self.add("head", nir.Affine(weight=lin.weight.detach().numpy().astype(np.float32),
                                    bias=lin.bias.detach().numpy().astype(np.float32),
                                    metadata=node_meta("readout")), (k,), [flat])
        self.add("output", nir.Output(output_type={"output": np.array([k])}), (k,), ["head"])

    def build(self) -> nir.NIRGraph:
        S = self.stem()
        for stage_name, blocks in zip(self.model.stage_names, self.model.stages()):
            P: Optional[Signal] = None
            for j, blk in enumerate(blocks):
                S, P = self.block(f"{stage_name}.{j}", blk, S, P), S
        self.head(S)
        meta = {"format": NIR_FORMAT, "version": NIR_VERSION, "config": self.cfg.to_dict(),
                "timesteps": self.cfg.timesteps, "input_levels": self.cfg.input_levels,
                "readout": "logits = mean over the timesteps of node 'output'"}
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges,
                            metadata={"dt": DT, "time_convention": TIME_CONVENTION,
                                      "xoresnet": json.dumps(meta, sort_keys=True)})


@torch.no_grad()
def export_nir(model: XOResNet) -> nir.NIRGraph:
    """The float NIR graph of ``model`` (eval-mode batch-norm statistics)."""
    check_deployable(model)
    model = model.eval()
    return _GraphBuilder(model).build()


def write_nir(graph: nir.NIRGraph, path: str | os.PathLike) -> None:
    nir.write(str(path), graph)


def read_nir(path: str | os.PathLike) -> nir.NIRGraph:
    return nir.read(str(path))
