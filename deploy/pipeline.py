"""The deployment stages, each a function from one plain artifact to the next.

checkpoint --(:func:`export_nir`)--> float NIR graph --(:func:`calibrate_checkpoint`)--> integer
graph --(:func:`~deploy.schedule.schedule`)--> Loihi-timed integer graph --> reference / Lava.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from calibration.quantize import Calibration, QuantSpec, calibrate_nir
from xoresnet.checkpoint import Checkpoint
from xoresnet.data import IntImageDataset, load_dataset
from xoresnet.network import XOResNet

from .nir_export import export_nir
from .reference import ReferenceSimulator

DEFAULT_CALIB_SAMPLES = 64


def calibration_pixels(dataset: str, data_dir: Optional[str], samples: int) -> torch.Tensor:
    """The first ``samples`` images of the training split: integers ``[N, C, H, W]``."""
    return load_dataset(dataset, "train", data_dir, limit=max(samples, 1)).pixels[:samples]


def calibrate_checkpoint(model: XOResNet, ckpt: Checkpoint, pixels: torch.Tensor, *, candidates: int = 4
                         ) -> Calibration:
    """Calibrate ``model``; a quantization-aware trained checkpoint keeps the scales it trained with."""
    spec = QuantSpec.from_dict(ckpt.quant) if ckpt.quant is not None else None
    return calibrate_nir(export_nir(model), pixels, spec=spec, candidates=candidates)


@torch.no_grad()
def evaluate_integer(sim: ReferenceSimulator, ds: IntImageDataset, *, batch_size: int = 256) -> dict[str, Any]:
    """Accuracy and spike counts of the integer reference (zero-delay timing) on ``ds``."""
    g = sim.graph
    correct, n = 0, 0
    spikes = {name: 0 for name in g.populations}
    for start in range(0, len(ds), batch_size):
        x = ds.pixels[start:start + batch_size]
        y = ds.labels[start:start + batch_size].to(sim.device)
        r = sim.run_zero_delay(x)
        correct += int((r.predictions == y).sum())
        n += len(y)
        for name, s in r.spikes.items():
            spikes[name] += int(s.sum())
    T = g.timesteps
    layers = {name: {"firing_rate": spikes[name] / max(n * T * p.size, 1), "spikes_per_sample": spikes[name] / max(n, 1)}
              for name, p in g.populations.items()}
    neuron_spikes = sum(v for k, v in spikes.items() if g.populations[k].kind == "neuron")
    return {"accuracy": correct / max(n, 1), "samples": n,
            "spikes": {"spikes_per_sample": sum(spikes.values()) / max(n, 1),
                       "neuron_spikes_per_sample": neuron_spikes / max(n, 1), "layers": layers}}
