"""The deployment stages, each a function from one plain artifact to the next.

checkpoint --(:func:`export_nir`)--> float NIR graph --(:func:`calibrate_checkpoint`)--> integer
graph --(:func:`~deploy.schedule.schedule`)--> Loihi-timed integer graph --> reference / Lava
(:mod:`deploy.cli` runs them all; ``xoresnet-eval --integer`` the first three).
"""

from __future__ import annotations

from typing import Optional

import torch

from calibration.quantize import DEFAULT_CANDIDATES, Calibration, QuantSpec, calibrate_nir
from xoresnet.checkpoint import Checkpoint
from xoresnet.data import load_dataset
from xoresnet.network import XOResNet

from .nir_export import export_nir

DEFAULT_CALIB_SAMPLES = 64


def calibration_pixels(dataset: str, data_dir: Optional[str], samples: int) -> torch.Tensor:
    """The first ``samples`` images of the training split: integers ``[N, C, H, W]``."""
    return load_dataset(dataset, "train", data_dir, limit=max(samples, 1)).pixels[:samples]


def calibrate_checkpoint(model: XOResNet, ckpt: Checkpoint, pixels: torch.Tensor, *,
                         candidates: int = DEFAULT_CANDIDATES) -> Calibration:
    """Calibrate ``model``; a quantization-aware trained checkpoint keeps the scales it trained with."""
    spec = QuantSpec.from_dict(ckpt.quant) if ckpt.quant is not None else None
    return calibrate_nir(export_nir(model), pixels, spec=spec, candidates=candidates)
