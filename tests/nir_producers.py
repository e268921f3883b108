"""Spiking networks built, simulated and exported to NIR by their own libraries (test helper).

* snnTorch 1.0: a convolutional ``Leaky`` network (dilation and groups in its second convolution,
  spike-count readout), exported with ``snntorch.export_nir.export_to_nir``;
* Norse 1.1: a ``LIFCell`` network with an ``LIBoxCell`` readout, exported with ``norse.torch.to_nir``;
* snnTorch residual: three ``Leaky`` layers whose first one also feeds the third's current (an additive
  skip), exported with ``nirtorch.torch_to_nir`` and snnTorch's own module converter (snnTorch's
  ``export_to_nir`` traces module calls and loses the ``+``).

The producers' quirks and how these networks meet them (``docs/formats.md``, "NIR from other
producers"): per-neuron parameter tensors (scalar ones break nir's type inference and ``nir.write``), a
sample without the batch dimension and ``Flatten(start_dim=-3)`` for snnTorch (its export fails in nir's
type inference with a batched sample), ``graph.infer_types()`` before ``nir.write`` for Norse and
nirtorch (they leave conv input shapes unset), zero conv biases into Norse's LIFCell (a bias into a
decaying synaptic current has no Loihi form), ``reset_mechanism="zero"`` for snnTorch (its export writes
a hard reset whatever the mechanism).

Each ``simulate_*`` runs the library's own modules step by step on the same image at every step
(direct encoding) and records every spiking layer: ``{nir node name: spikes [T, B, ...]}``.
"""

from __future__ import annotations

from pathlib import Path

import nir
import numpy as np
import torch
import torch.nn as nn

SNNTORCH_DT = 1e-4  # snntorch/export_nir.py: tau = dt / (1 - beta), dt = 1e-4
NORSE_DT = 1e-3  # norse.torch.to_nir's default dt


def digits_images(n: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` digits images of ``split`` as integer pixels ``[n, 1, 8, 8]`` and labels."""
    from xoresnet.data import load_dataset

    ds = load_dataset("digits", split, limit=n)
    return ds.pixels[:n], ds.labels[:n]


# ---------------------------------------------------------------------- snnTorch

def _leaky(shape: tuple[int, ...], beta: float = 0.875, output: bool = False):
    import snntorch as snn

    return snn.Leaky(beta=torch.full(shape, beta), threshold=torch.ones(shape), init_hidden=True,
                     reset_mechanism="zero", output=output)


def snntorch_conv_net(seed: int = 0) -> nn.Sequential:
    """Conv(1->8, 3x3) -> Leaky -> Conv(8->16, 3x3, stride 2, dilation 2, groups 2) -> Leaky -> Flatten ->
    Linear(256->10) -> Leaky (spike-count readout), on 8x8 images; scaled so that every layer fires."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), _leaky((8, 8, 8)),
                        nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=2), _leaky((16, 4, 4)),
                        nn.Flatten(start_dim=-3), nn.Linear(256, 10), _leaky((10,), output=True))
    with torch.no_grad():
        net[0].weight.mul_(2.5)
        net[0].bias.fill_(0.1)
        net[2].weight.mul_(3.0)
        net[5].weight.mul_(3.0)
    return net


class SnnTorchResidual(nn.Module):
    """Conv -> Leaky (s1) -> Conv -> Leaky (s2) -> Conv (+ s1 as a current: the skip) -> Leaky (s3) -> Flatten ->
    Linear -> Leaky."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1, self.lif1 = nn.Conv2d(1, 8, 3, padding=1), _leaky((8, 8, 8))
        self.conv2, self.lif2 = nn.Conv2d(8, 8, 3, padding=1), _leaky((8, 8, 8))
        self.conv3, self.lif3 = nn.Conv2d(8, 8, 3, padding=1), _leaky((8, 8, 8))
        self.flat, self.fc, self.lif4 = nn.Flatten(start_dim=-3), nn.Linear(512, 10), _leaky((10,))
        with torch.no_grad():
            self.conv1.weight.mul_(2.5)
            self.conv2.weight.mul_(2.0)
            self.conv3.weight.mul_(1.5)
            self.fc.weight.mul_(3.0)

    def forward(self, x):
        s1 = self.lif1(self.conv1(x))
        s2 = self.lif2(self.conv2(s1))
        s3 = self.lif3(self.conv3(s2) + s1)
        return self.lif4(self.fc(self.flat(s3)))


def export_snntorch(net: nn.Module, path: Path) -> nir.NIRGraph:
    """``snntorch.export_nir.export_to_nir`` on an unbatched 8x8 sample, written with ``nir.write``."""
    from snntorch.export_nir import export_to_nir

    graph = export_to_nir(net.float(), torch.zeros(1, 8, 8))
    nir.write(str(path), graph)
    return graph


def export_snntorch_residual(net: nn.Module, path: Path) -> nir.NIRGraph:
    """``nirtorch.torch_to_nir`` with snnTorch's module converter; the Input's type set and nir's type
    inference run (nirtorch leaves both undefined), then ``nir.write``."""
    import nirtorch
    import snntorch as snn
    from snntorch.export_nir import _extract_snntorch_module

    mapping = {cls: _extract_snntorch_module for cls in (nn.Conv2d, snn.Leaky, nn.Flatten, nn.Linear)}
    graph = nirtorch.torch_to_nir(net.float(), mapping, type_check=False)
    name = next(k for k, v in graph.nodes.items() if isinstance(v, nir.Input))
    graph.nodes[name] = nir.Input(input_type={"input": np.array([1, 8, 8])})
    graph.infer_types()
    nir.write(str(path), graph)
    return graph


@torch.no_grad()
def simulate_snntorch(net: nn.Module, x: torch.Tensor, steps: int, names: dict) -> dict[str, torch.Tensor]:
    """snnTorch's own simulation of ``x [B, 1, 8, 8]`` (the same frame every step; float32: snnTorch's spikes
    are float32 whatever the network's dtype): the spikes of every ``Leaky`` named in ``names`` (module -> NIR
    node name), ``[T, B, ...]``."""
    import snntorch as snn
    from snntorch import utils

    out: dict[str, list] = {n: [] for n in names.values()}
    hooks = [m.register_forward_hook(lambda mod, inp, res, key=names[m]: out[key].append(
        (res[0] if isinstance(res, tuple) else res).clone())) for m in net.modules() if isinstance(m, snn.Leaky)]
    utils.reset(net)
    for _ in range(steps):
        net(x.float())
    for h in hooks:
        h.remove()
    return {k: torch.stack(v) for k, v in out.items()}


# ---------------------------------------------------------------------- Norse

def norse_net(seed: int = 0, dtype=torch.float64):
    """Conv(1->8, 3x3, zero bias) -> LIFCell (tau_syn_inv 250, tau_mem_inv 125: on Loihi's grid at dt 1e-3) ->
    Conv(8->10, 8x8: a dense layer without Flatten, which Norse's export drops) -> LIBoxCell (LI readout)."""
    import norse.torch as norse

    torch.manual_seed(seed)
    shape = (8, 8, 8)
    lif = norse.LIFParameters(tau_syn_inv=torch.full(shape, 250.0, dtype=dtype),
                              tau_mem_inv=torch.full(shape, 125.0, dtype=dtype), v_leak=torch.zeros(shape, dtype=dtype),
                              v_th=torch.ones(shape, dtype=dtype), v_reset=torch.zeros(shape, dtype=dtype))
    li = norse.LIBoxParameters(tau_mem_inv=torch.full((10, 1, 1), 500.0, dtype=dtype),
                               v_leak=torch.zeros((10, 1, 1), dtype=dtype))
    conv1, conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 10, 8)
    with torch.no_grad():
        conv1.weight.mul_(6.0)
        conv1.bias.zero_()
    return norse.SequentialState(conv1, norse.LIFCell(lif), conv2, norse.LIBoxCell(li)).to(dtype)


def export_norse(net, path: Path) -> nir.NIRGraph:
    """``norse.torch.to_nir`` (dt 1e-3) on an unbatched sample, nir's type inference (Norse leaves conv
    input shapes unset), ``nir.write``."""
    import norse.torch as norse

    graph = norse.to_nir(net, torch.zeros(1, 8, 8, dtype=next(net.parameters()).dtype))
    graph.infer_types()
    nir.write(str(path), graph)
    return graph


@torch.no_grad()
def simulate_norse(net, x: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """Norse's own simulation of ``x``: the LIFCell's spikes (NIR node ``"1"``) and the LI membrane (``"3"``)."""
    import norse.torch as norse

    out: dict[str, list] = {"1": [], "3": []}
    lif = next(m for m in net.modules() if isinstance(m, norse.LIFCell))
    hook = lif.register_forward_hook(lambda mod, inp, res: out["1"].append(res[0].clone()))
    state = None
    for _ in range(steps):
        y, state = net(x.to(next(net.parameters()).dtype), state)
        out["3"].append(y.clone())
    hook.remove()
    return {k: torch.stack(v) for k, v in out.items()}


# ---------------------------------------------------------------------- our side

def interpreter_run(path: Path, x: torch.Tensor, steps: int, dt: float, convention: str = "nir",
                    dtype=torch.float64):
    """Our NIR interpreter on the file ``path`` as the front end imports it (:mod:`xoresnet.nir.frontend`)."""
    from xoresnet.nir.reader import read_nir_file
    from xoresnet.nir.frontend import ImportOptions, import_nir
    from xoresnet.nir.interpreter import NIRInterpreter

    imported = import_nir(read_nir_file(path), ImportOptions(dt=dt, timesteps=steps, input_levels=16,
                                                             convention=convention))
    return NIRInterpreter(imported.graph, dtype=dtype).run(x.to(dtype), steps), imported
