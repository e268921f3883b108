"""Train the bundled foreign demo model with snnTorch and export it to NIR: ``models/snntorch-digits.nir``.

A small convolutional ``Leaky`` network (not an XOResNet) on the 8x8 digits (the same fixed split as
``xoresnet/data.py``: 1347 training, 450 test images), trained by snnTorch itself and exported by
snnTorch's ``export_to_nir``; ``make demo-nir`` then deploys the NIR file to Loihi 2 through the NIR
front end::

    Conv2d(1 -> 16, 3x3, padding 1) -> Leaky -> Conv2d(16 -> 32, 3x3, stride 2, padding 1) -> Leaky
    -> Flatten -> Linear(512 -> 10) -> Leaky        (T = 8 steps, input pixels / 16 at every step)

The prediction is the argmax of the output layer's spike counts (``--readout spike-count``). The
neurons use ``beta = 0.875`` (on Loihi's 12-bit decay grid at snnTorch's export dt of 1e-4:
``dt / tau = 1 - beta = 512/4096``), threshold 1 and ``reset_mechanism="zero"`` (snnTorch's export
writes a hard reset whatever the mechanism). Per-neuron parameter tensors, an unbatched export
sample and ``Flatten(start_dim=-3)`` meet snnTorch's export quirks (``docs/formats.md``, "NIR from
other producers").

Usage: ``.venv/bin/python scripts/train_snntorch_digits.py [--epochs 30] [--out models/snntorch-digits.nir]``
(deterministic: fixed seeds, one thread; about a minute on two CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nir
import numpy as np
import torch
import torch.nn as nn

TIMESTEPS = 8
BETA = 0.875
LEVELS = 16


def build(seed: int = 0) -> nn.Sequential:
    import snntorch as snn
    from snntorch import surrogate

    torch.manual_seed(seed)

    def leaky(shape, output=False):
        return snn.Leaky(beta=torch.full(shape, BETA), threshold=torch.ones(shape), init_hidden=True,
                         reset_mechanism="zero", spike_grad=surrogate.atan(), output=output)

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), leaky((16, 8, 8)),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), leaky((32, 4, 4)),
                         nn.Flatten(start_dim=-3), nn.Linear(512, 10), leaky((10,), output=True))


def spike_counts(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``[B, 10]``: the output layer's spikes summed over the timesteps (the same frame every step)."""
    from snntorch import utils

    utils.reset(net)
    total = 0
    for _ in range(TIMESTEPS):
        spk, _mem = net(x)
        total = total + spk
    return total


def main() -> None:
    from snntorch.export_nir import export_to_nir

    from xoresnet.data import load_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", default="models/snntorch-digits.nir")
    args = p.parse_args()
    torch.set_num_threads(1)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    xtr, ytr = train.pixels.float() / LEVELS, train.labels
    xte, yte = test.pixels.float() / LEVELS, test.labels
    net = build()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(1)
    started = time.time()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 64):
            idx = order[i:i + 64]
            loss = nn.functional.cross_entropy(spike_counts(net, xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((spike_counts(net, xte).argmax(1) == yte).float().mean())
        print(f"epoch {epoch + 1}/{args.epochs}: loss {float(loss):.3f}, test accuracy (snnTorch, spike counts) "
              f"{100 * acc:.2f}%", flush=True)
    graph = export_to_nir(net, torch.zeros(1, 8, 8))
    graph.metadata = {"producer": "snntorch 1.0.0 export_to_nir", "trained_by": "scripts/train_snntorch_digits.py",
                      "dataset": "digits", "notes": json.dumps({
                          "dt": "1e-4 (snnTorch's export: tau = dt / (1 - beta))", "timesteps": TIMESTEPS,
                          "input": f"pixels / {LEVELS} at every step", "readout": "argmax of the output spike counts",
                          "snntorch_test_accuracy": acc, "epochs": args.epochs})}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    nir.write(args.out, graph)
    print(f"wrote {args.out}: test accuracy {100 * acc:.2f}% (snnTorch), {time.time() - started:.0f} s; deploy it with "
          "make demo-nir")


if __name__ == "__main__":
    main()
