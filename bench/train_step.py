"""Time one training step of XOResNet-18 with our CUBA LIF against the same network on snnTorch's Leaky.

    .venv/bin/python bench/train_step.py            # defaults: width 0.25, 32x32, T=4, batch 16, 20 steps
    .venv/bin/python bench/train_step.py --json     # machine-readable result on stdout

Contenders (same process, same weights, same input batch, same seed, CPU):

* ``ours``: ``XOResNet`` as built by :func:`xoresnet.network.build_network` (``CubaLIF``: du=1,
  dv=0.5, vth=1, hard reset, ATan surrogate alpha=2; multi-step with a hand-written backward).
* ``snntorch``: a deep copy of the same model in which every ``CubaLIF`` module is replaced by
  :class:`SnnTorchLIF`, which wraps ``snntorch.Leaky(beta=1-dv, threshold=vth,
  reset_mechanism="zero", spike_grad=snntorch.surrogate.atan(alpha))`` and loops over the ``T``
  timesteps on ``current.x[t] + bias`` (the idiomatic snnTorch per-step loop, autograd through
  every step). Synapses (``ConvBN``), blocks and spike logic are the same modules.

A step is ``zero_grad(set_to_none=True)`` + forward + cross-entropy + backward (+ an SGD step
with ``--sgd``, for both). After ``--warmup`` steps of each, ``--steps`` steps of each are timed,
interleaved (ours, snntorch, ours, ...), and medians are compared: ``ratio = ours / snntorch``
(<= 1.0 means ours is no slower). The sanity check (not timed) runs one forward pass of both on
the same input and reports the fraction of identical spikes in the first neuron layer (the stem)
and in all neuron layers, then one training step of both and compares loss and gradients.
Memory: the bytes each contender's forward saves for backward (counted with
``torch.autograd.graph.saved_tensors_hooks``, storages deduplicated, not timed) and the process'
peak RSS (shared by both contenders, so only indicative).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402  (puts the checkout on sys.path)

import snntorch  # noqa: E402

from xoresnet.config import NetworkConfig  # noqa: E402
from xoresnet.network import build_network  # noqa: E402
from xoresnet.neuron import CubaLIF, Current  # noqa: E402


class SnnTorchLIF(nn.Module):
    """Drop-in for :class:`CubaLIF` (current-free, du = 1) on ``snntorch.Leaky``, stepped over ``T``.

    Takes a :class:`Current` (``x [T, B, C, ...]``, ``bias [C]`` or ``None``), returns spikes
    ``[T, B, C, ...]``. Keeps ``observer``/``name``/``quant`` so the network code runs unchanged.
    """

    def __init__(self, lif: CubaLIF):
        super().__init__()
        spec = lif.spec
        if spec.du != 1.0 or spec.reset != "hard" or spec.learn_decay:
            raise ValueError("the snnTorch Leaky adapter covers du=1, hard reset, fixed decays only")
        self.leaky = snntorch.Leaky(
            beta=1.0 - float(lif.dv), threshold=float(spec.vth), reset_mechanism="zero",
            spike_grad=snntorch.surrogate.atan(alpha=float(spec.surrogate_alpha)),
        )
        self.name = ""
        self.observer = None
        self.quant = None

    def forward(self, current: Current) -> torch.Tensor:
        x, bias = current.x, current.bias
        if bias is not None and x.dim() > 3:
            bias = bias.view(bias.shape[0], *([1] * (x.dim() - 3)))  # per channel over [B, C, H, W]
        mem = self.leaky.reset_mem()
        spikes = []
        for t in range(x.shape[0]):
            spk, mem = self.leaky(x[t] if bias is None else x[t] + bias, mem)
            spikes.append(spk)
        return torch.stack(spikes)


def swap_neurons(model: nn.Module) -> int:
    """Replace every ``CubaLIF`` in ``model`` by a :class:`SnnTorchLIF` (in place); returns the count."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, CubaLIF)]
    for name, lif in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, SnnTorchLIF(lif))
    return len(targets)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt) -> float:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    if opt is not None:
        opt.step()
    return float(loss.detach())


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct storages the forward pass saves for backward."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def sanity(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> dict:
    """Forward both on ``x`` (train mode, no grad); compare shapes and the stem's spikes."""
    spikes: dict[str, list[torch.Tensor]] = {"ours": [], "snntorch": []}
    hooks = []
    for key, model in (("ours", ours), ("snntorch", theirs)):
        for m in model.modules():
            if isinstance(m, (CubaLIF, SnnTorchLIF)):
                hooks.append(m.register_forward_hook(lambda mod, a, out, key=key: spikes[key].append(out.detach())))
    with torch.no_grad():
        out_a, out_b = ours(x), theirs(x)
    for h in hooks:
        h.remove()
    first_a, first_b = spikes["ours"][0], spikes["snntorch"][0]
    all_a = torch.cat([s.flatten() for s in spikes["ours"]])
    all_b = torch.cat([s.flatten() for s in spikes["snntorch"]])
    same_all = all_a.shape == all_b.shape
    return {
        "output_shape_ours": list(out_a.shape),
        "output_shape_snntorch": list(out_b.shape),
        "same_output_shape": out_a.shape == out_b.shape,
        "neuron_layers": len(spikes["ours"]),
        "first_layer_identical_spike_fraction": float((first_a == first_b).float().mean()),
        "first_layer_spike_rate_ours": float(first_a.mean()),
        "first_layer_spike_rate_snntorch": float(first_b.mean()),
        "all_layers_identical_spike_fraction": float((all_a == all_b).float().mean()) if same_all else None,
        "logits_max_abs_diff": float((out_a - out_b).abs().max()) if out_a.shape == out_b.shape else None,
    }


def compare_grads(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One untimed training step of both: loss difference and the largest relative gradient difference."""
    out = {}
    grads = []
    for key, model in (("ours", ours), ("snntorch", theirs)):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        out[f"loss_{key}"] = float(loss.detach())
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    ga, gb = grads
    rel = [float((ga[n] - gb[n]).abs().max() / gb[n].abs().max().clamp_min(1e-30)) for n in ga if n in gb]
    out["grad_tensors_compared"] = len(rel)
    out["grad_tensors_bitwise_equal"] = sum(torch.equal(ga[n], gb[n]) for n in ga if n in gb)
    out["grad_max_rel_diff"] = max(rel) if rel else None
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="xoresnet18", help="architecture preset")
    p.add_argument("--width-factor", type=float, default=0.25, help="channel width factor")
    p.add_argument("--input-size", type=int, default=32, help="input height = width")
    p.add_argument("--timesteps", type=int, default=4, help="T")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--classes", type=int, default=10, help="number of classes")
    p.add_argument("--steps", type=int, default=20, help="timed steps per contender (interleaved)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per contender first")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and the input batch")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (None: leave torch's default)")
    p.add_argument("--sgd", action="store_true", help="include an SGD step (lr 1e-3) in every timed step of both")
    p.add_argument("--no-memory", action="store_true", help="skip the saved-for-backward memory count")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = p.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = NetworkConfig.preset(args.arch, width_factor=args.width_factor, input_size=args.input_size, in_channels=3,
                               timesteps=args.timesteps, num_classes=args.classes)
    ours = build_network(cfg).train()
    theirs = copy.deepcopy(ours)
    n_swapped = swap_neurons(theirs)
    for (na, pa), (nb, pb) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert na == nb and torch.equal(pa, pb), f"parameter mismatch at {na}/{nb}"
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, 3, args.input_size, args.input_size, generator=gen)
    y = torch.randint(0, args.classes, (args.batch,), generator=gen)

    check = sanity(ours, theirs, x)
    check.update(compare_grads(ours, theirs, x, y))
    contenders = {"ours": ours, "snntorch": theirs}
    opts = {k: (torch.optim.SGD(m.parameters(), lr=1e-3) if args.sgd else None) for k, m in contenders.items()}
    memory = {} if args.no_memory else {k: saved_bytes(m, x, y) for k, m in contenders.items()}

    for _ in range(args.warmup):
        for k, m in contenders.items():
            train_step(m, x, y, opts[k])
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.steps):
        for k, m in contenders.items():
            t0 = time.perf_counter()
            train_step(m, x, y, opts[k])
            times[k].append(time.perf_counter() - t0)

    stats = {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v), "max_ms": 1e3 * max(v),
                 "mean_ms": 1e3 * statistics.fmean(v)} for k, v in times.items()}
    result = {
        "machine": {"cpu": benchlib.cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
                    "snntorch": snntorch.__version__, "python": platform.python_version(),
                    "torch_threads": torch.get_num_threads()},
        "config": {"arch": args.arch, "width_factor": args.width_factor, "input_size": args.input_size,
                   "timesteps": args.timesteps, "batch": args.batch, "classes": args.classes, "steps": args.steps,
                   "warmup": args.warmup, "sgd": args.sgd, "seed": args.seed, "neurons_swapped": n_swapped},
        "sanity": check,
        "time": stats,
        "ratio_median_ours_over_snntorch": stats["ours"]["median_ms"] / stats["snntorch"]["median_ms"],
        "ratio_min_ours_over_snntorch": stats["ours"]["min_ms"] / stats["snntorch"]["min_ms"],
        "saved_for_backward_mib": {k: v / 2**20 for k, v in memory.items()},
        "peak_rss_mib_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "samples_ms": {k: [round(1e3 * t, 3) for t in v] for k, v in times.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    m, c, s = result["machine"], result["config"], check
    print(f"machine: {m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m['torch']}, snntorch {m['snntorch']}, "
          f"python {m['python']}, torch threads {m['torch_threads']}")
    print(f"model: {c['arch']} width {c['width_factor']}, {c['input_size']}x{c['input_size']}, T={c['timesteps']}, "
          f"batch {c['batch']}, {c['classes']} classes; {c['neurons_swapped']} neuron layers; "
          f"step = zero_grad + forward + CE + backward{' + SGD' if c['sgd'] else ''}")
    print(f"sanity: output shapes {s['output_shape_ours']} / {s['output_shape_snntorch']} "
          f"({'same' if s['same_output_shape'] else 'DIFFERENT'}); first-layer identical spikes "
          f"{100 * s['first_layer_identical_spike_fraction']:.2f}% (rates {s['first_layer_spike_rate_ours']:.4f} / "
          f"{s['first_layer_spike_rate_snntorch']:.4f}); all layers {100 * (s['all_layers_identical_spike_fraction'] or 0):.2f}%; "
          f"logits max |diff| {s['logits_max_abs_diff']:.3g}")
    print(f"        one step: loss {s['loss_ours']:.6f} / {s['loss_snntorch']:.6f}; parameter gradients: "
          f"{s['grad_tensors_bitwise_equal']}/{s['grad_tensors_compared']} bitwise equal, largest relative "
          f"difference {s['grad_max_rel_diff']:.3g}")
    print(f"timing: {c['warmup']} warm-up + {c['steps']} interleaved steps each")
    for k in contenders:
        st = stats[k]
        mem = f", saved for backward {result['saved_for_backward_mib'][k]:.1f} MiB" if memory else ""
        print(f"  {k:9s} median {st['median_ms']:8.2f} ms   min {st['min_ms']:8.2f} ms{mem}")
    print(f"ratio ours / snntorch: median {result['ratio_median_ours_over_snntorch']:.3f}, "
          f"min {result['ratio_min_ours_over_snntorch']:.3f}  (<= 1.0: ours is no slower)")
    print(f"peak RSS of the process: {result['peak_rss_mib_process']:.0f} MiB")
    return result


if __name__ == "__main__":
    main()
