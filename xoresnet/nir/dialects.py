"""Our NIR graph rewritten for readers that cannot take all of it (``xoresnet-export --nir-dialect``).

Our ``model.nir`` (:mod:`xoresnet.nir.export`) uses ``Threshold`` and ``Scale`` nodes for spike logic,
time step ``dt = 1`` and neurons whose ``r`` scales their input. The mainstream readers lack some of
that (their import code, as installed here):

* snnTorch 1.0 ``snntorch.import_nir.import_from_nir``: no Threshold, Scale or SumPool2d; ``dt`` fixed
  at 1e-4; IF becomes ``Leaky(beta=0.9)`` (not an integrator); CubaLIF needs ``v_leak = 0``;
* Norse 1.1 ``norse.torch.from_nir``: no Threshold, Scale or AvgPool2d; ``dt`` 1e-3; LIF and IF
  ignore ``r`` (a warning); CubaLIF applies ``v_leak`` to the synaptic current too.

Each dialect replaces what its reader lacks by an exact equivalent in what it has (exact in the
arithmetic of the equations; float rounding may differ in the last bit):

* ``Threshold(theta)`` -> ``LIF(tau = dt, r = 1, v_leak = 0, v_threshold = theta, v_reset = 0)``:
  with ``dt / tau = 1`` forward Euler gives ``v = I`` every step, a memoryless threshold (our gates
  sum small integers: no rounding at all);
* ``Scale(s)`` (uniform per channel) -> a 1x1 channel-wise ``Conv2d`` with weights ``s`` (a diagonal
  kernel: nir 1.0.8's type check, which readers run on ``nir.read``, mistypes grouped convolutions);
* ``SumPool2d``/``AvgPool2d`` the reader lacks -> a channel-wise ``Conv2d`` with constant weights
  (``1`` or ``1 / k^2``, stride ``k``);
* every ``tau`` rescaled to the reader's fixed ``dt`` (``tau * dt_reader / dt``), metadata ``dt`` too;
* Norse: a LIF's ``r`` folded into the synapses that feed it (a direct edge gets a 1x1 channel-wise
  ``Conv2d`` of weight ``r``), ``r = 1``.

What has no exact equivalent is refused (:class:`~xoresnet.errors.UnsupportedModelError`, exit 4):
snnTorch: IF neurons (``dv = 0``), CubaLIF with a bias (``v_leak != 0``); Norse: CubaLIF with a bias.
sinabs (not installed here) fails on per-neuron parameter arrays (every parameter of ours is one);
nirtorch is a tracing library, not a reader of its own: it maps node types with the module map a
library gives it.
"""

from __future__ import annotations

import json
from typing import Optional

import nir
import numpy as np

from xoresnet.errors import UnsupportedModelError

from .interpreter import predecessors

NIR_DIALECTS = ("standard", "snntorch", "norse")
#: The time step each reader fixes, and what it lacks of ours.
READER_DT = {"snntorch": 1e-4, "norse": 1e-3}
LACKS = {"snntorch": ("Threshold", "Scale", "SumPool2d"), "norse": ("Threshold", "Scale", "AvgPool2d")}


def _channelwise(weight_per_channel: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                 in_shape: tuple[int, ...], metadata: Optional[dict] = None) -> nir.Conv2d:
    """A ``Conv2d`` acting on each channel alone (a diagonal ``[C, C, kH, kW]`` kernel, ``groups = 1``: nir
    1.0.8's type inference takes a grouped convolution's input for ``C / groups`` channels, so readers that
    type-check on reading refuse depthwise ones)."""
    c = in_shape[0]
    w = np.zeros((c, c) + kernel, np.float32)
    w[np.arange(c), np.arange(c)] = np.asarray(weight_per_channel, np.float32).reshape(c, 1, 1)
    return nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=w, stride=stride, padding=(0, 0), dilation=(1, 1),
                      groups=1, bias=np.zeros(c, np.float32), metadata=metadata or {})


def _channel_values(arr: np.ndarray, what: str) -> np.ndarray:
    """The per-channel value of a ``(C, H, W)`` array that is uniform over each channel."""
    a = np.asarray(arr, np.float64)
    per = a.reshape(a.shape[0], -1)
    if not np.all(per == per[:, :1]):
        raise UnsupportedModelError(f"{what} varies within a channel; no per-channel convolution expresses it")
    return per[:, 0]


def dialect_graph(graph: nir.NIRGraph, dialect: str) -> nir.NIRGraph:
    """``graph`` (ours, ``dt`` in its metadata) as the reader of ``dialect`` takes it (module docstring);
    ``standard`` returns ``graph`` itself."""
    if dialect == "standard":
        return graph
    if dialect not in READER_DT:
        raise UnsupportedModelError(f"unknown NIR dialect {dialect!r}; choose from {', '.join(NIR_DIALECTS)}")
    dt = float(np.asarray(graph.metadata.get("dt", 1.0)))
    time = READER_DT[dialect] / dt
    nodes: dict[str, nir.NIRNode] = {}
    edges = list(graph.edges)
    preds = predecessors(graph)
    shapes = _shapes(graph)
    for name, node in graph.nodes.items():
        meta = dict(getattr(node, "metadata", None) or {})
        if isinstance(node, nir.Threshold):
            th = np.asarray(node.threshold, np.float32)
            nodes[name] = nir.LIF(tau=np.full(th.shape, READER_DT[dialect], np.float32), r=np.ones_like(th),
                                  v_leak=np.zeros_like(th), v_threshold=th, v_reset=np.zeros_like(th), metadata=meta)
        elif isinstance(node, nir.Scale):
            shape = shapes[name]
            if len(shape) != 3:
                raise UnsupportedModelError(f"{dialect} dialect: Scale {name} on a {shape} signal")
            nodes[name] = _channelwise(_channel_values(node.scale, f"Scale {name}"), (1, 1), (1, 1), shape, meta)
        elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)) and type(node).__name__ in LACKS[dialect]:
            k = tuple(int(v) for v in np.asarray(node.kernel_size).reshape(-1)[-2:])
            if np.any(np.asarray(node.padding) != 0):
                raise UnsupportedModelError(f"{dialect} dialect: padded pooling {name}")
            value = 1.0 if isinstance(node, nir.SumPool2d) else 1.0 / (k[0] * k[1])
            shape = shapes[preds[name][0]]
            stride = tuple(int(v) for v in np.asarray(node.stride).reshape(-1)[-2:])
            nodes[name] = _channelwise(np.full(shape[0], value), k, stride, shape, meta)
        elif isinstance(node, nir.IF):
            if dialect == "snntorch":
                raise UnsupportedModelError(
                    f"snntorch dialect: IF node {name} (a neuron without leak, dv = 0) has no exact snnTorch "
                    "equivalent: snnTorch 1.0's import_from_nir builds Leaky(beta=0.9) for IF")
            nodes[name] = node  # Norse's IAFCell adds its input to v: r = 1 / dt = 1 at our dt = 1
        elif isinstance(node, nir.LIF):
            nodes[name] = nir.LIF(tau=np.asarray(node.tau) * time, r=np.asarray(node.r), v_leak=np.asarray(node.v_leak),
                                  v_threshold=np.asarray(node.v_threshold), v_reset=np.asarray(node.v_reset),
                                  metadata=meta)
        elif isinstance(node, nir.CubaLIF):
            if np.any(np.asarray(node.v_leak) != 0):
                reader = ("snnTorch 1.0's import_from_nir asserts v_leak = 0" if dialect == "snntorch" else
                          "Norse 1.1's from_nir applies v_leak to the synaptic current as well")
                raise UnsupportedModelError(f"{dialect} dialect: CubaLIF node {name} has a bias (v_leak != 0): {reader}")
            nodes[name] = nir.CubaLIF(tau_syn=np.asarray(node.tau_syn) * time, tau_mem=np.asarray(node.tau_mem) * time,
                                      r=np.asarray(node.r), v_leak=np.asarray(node.v_leak),
                                      v_threshold=np.asarray(node.v_threshold), v_reset=np.asarray(node.v_reset),
                                      w_in=np.asarray(node.w_in), metadata=meta)
        else:
            nodes[name] = node
    if dialect == "norse":
        _fold_lif_gain(nodes, edges, preds, shapes)
    meta = {k: v for k, v in graph.metadata.items()}
    meta["dt"] = READER_DT[dialect]
    ours = json.loads(meta["xoresnet"]) if isinstance(meta.get("xoresnet"), str) else {}
    ours["dialect"] = {"name": dialect, "dt": READER_DT[dialect], "replaced": list(LACKS[dialect]),
                       "see": "xoresnet/nir/dialects.py"}
    meta["xoresnet"] = json.dumps(ours, sort_keys=True)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def _fold_lif_gain(nodes: dict, edges: list, preds: dict, shapes: dict) -> None:
    """Norse ignores a LIF's ``r``: fold it into the convolutions (and Affines) that feed each LIF, or into
    a new 1x1 channel-wise Conv2d on a direct edge; then ``r = 1``."""
    for name, node in list(nodes.items()):
        if not isinstance(node, nir.LIF):
            continue
        r = np.asarray(node.r, np.float64)
        if np.all(r == 1):
            continue
        for q in preds[name]:
            src = nodes[q]
            if isinstance(src, nir.Conv2d):
                g = _channel_values(r, f"r of LIF {name}")
                nodes[q] = nir.Conv2d(input_shape=src.input_shape, weight=(np.asarray(src.weight) * g[:, None, None, None]
                                                                          ).astype(np.float32),
                                      stride=src.stride, padding=src.padding, dilation=src.dilation, groups=src.groups,
                                      bias=(np.asarray(src.bias) * g).astype(np.float32), metadata=src.metadata)
            elif isinstance(src, nir.Affine):
                g = r.reshape(-1)
                nodes[q] = nir.Affine(weight=(np.asarray(src.weight) * g[:, None]).astype(np.float32),
                                      bias=(np.asarray(src.bias) * g).astype(np.float32), metadata=src.metadata)
            else:
                gain = f"{q}.gain.{name}"
                nodes[gain] = _channelwise(_channel_values(r, f"r of LIF {name}"), (1, 1), (1, 1), shapes[name])
                edges[edges.index((q, name))] = (q, gain)
                edges.append((gain, name))
        nodes[name] = nir.LIF(tau=node.tau, r=np.ones_like(np.asarray(node.r)), v_leak=node.v_leak,
                              v_threshold=node.v_threshold, v_reset=node.v_reset, metadata=node.metadata)


def _shapes(graph: nir.NIRGraph) -> dict[str, tuple[int, ...]]:
    """Output shape of every node of one of our graphs (neurons and thresholds carry theirs)."""
    out = {}
    for name, node in graph.nodes.items():
        for attr in ("v_threshold", "threshold", "scale"):
            if hasattr(node, attr):
                out[name] = tuple(np.asarray(getattr(node, attr)).shape)
                break
        else:
            t = getattr(node, "output_type", None) or {}
            v = next(iter(t.values()), None) if t else None
            out[name] = tuple(int(x) for x in np.asarray(v)) if v is not None else ()
    return out
