"""A NIR file as the input of ``xoresnet-export``: read it, import it, and judge its float model.

:func:`load_nir_model` reads the file (:func:`xoresnet.nir.reader.read_nir_file`: bounded, h5py only) and
imports it (:func:`xoresnet.nir.frontend.import_nir`) with what the command line says (``--dt``,
``--timesteps``, ``--input-levels``, ``--readout``, ``--nir-convention``, ``--decay-tolerance``,
``--snap-decays``) and the dataset's image shape. There is no PyTorch model behind a foreign graph,
so the float baseline of the export summary is the NIR interpreter's accuracy on the same images
(:func:`interpreter_accuracy`): the graph as given (decays off the grid unsnapped), in float32 like
the producers' own simulations. :func:`spiking_neurons` sizes the memory estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import nir
import numpy as np
import torch

from xoresnet.files import file_sha256
from xoresnet.errors import UsageError

from .reader import read_nir_file
from .frontend import ImportedGraph, ImportOptions, import_nir
from .interpreter import NEURON_TYPES, NIRInterpreter

#: Images the interpreter runs at once when it measures the float accuracy.
EVAL_BATCH = 256


@dataclass
class NirModel:
    """A NIR input: its ``path``, ``sha256`` and the imported canonical graph."""

    path: str
    sha256: str
    imported: ImportedGraph

    @property
    def graph(self) -> nir.NIRGraph:
        return self.imported.graph

    def record(self) -> dict[str, Any]:
        """The manifest's and report's ``nir_input`` section (the decay-grid choices are added by the
        calibration: ``integer_graph.meta["source"]["decay_grid"]``)."""
        return {"path": self.path, "sha256": self.sha256, **self.imported.info, "notes": list(self.imported.notes)}


def load_nir_model(path: str, options: ImportOptions, dataset_levels: Optional[int]) -> NirModel:
    """Read and import the NIR file ``path``; ``dataset_levels``: the largest pixel of the dataset the
    export runs (the input scale when the file and ``--input-levels`` give none; pixels above the
    graph's scale are refused: calibration bounds currents by it)."""
    imported = import_nir(read_nir_file(path), replace(options, default_input_levels=dataset_levels))
    levels = imported.info["input_levels"]
    if not 1 <= levels <= 255:
        raise UsageError(f"the input scale {levels} is outside 1..255 (Loihi's graded input carries 8 bits)")
    if dataset_levels is not None and dataset_levels > levels:
        raise UsageError(f"the graph's input scale is {levels} (input = pixels / {levels}), but the dataset's pixels "
                         f"reach {dataset_levels}: pass --input-levels {dataset_levels} or a matching dataset")
    return NirModel(str(path), file_sha256(path), imported)


def spiking_neurons(graph: nir.NIRGraph) -> int:
    """Neurons of the graph's neuron and threshold nodes (per image and timestep)."""
    return sum(int(np.asarray(n.v_threshold if hasattr(n, "v_threshold") else n.threshold).size)
               for n in graph.nodes.values() if isinstance(n, NEURON_TYPES + (nir.Threshold,)))


@torch.no_grad()
def interpreter_accuracy(graph: nir.NIRGraph, pixels: torch.Tensor, labels: torch.Tensor, levels: int,
                         progress: bool = False) -> float:
    """Accuracy of the NIR interpreter (float32) on integer ``pixels [N, C, H, W]`` with ``labels [N]``:
    the argmax of the Output averaged over the timesteps, the graph's readout rule."""
    interp = NIRInterpreter(graph)
    n = len(pixels)
    correct = 0
    batches = range(0, n, EVAL_BATCH)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="NIR interpreter (float)", unit="batch", leave=False)
    for start in batches:
        x = pixels[start:start + EVAL_BATCH].to(torch.float32) / levels
        logits = interp.run(x, keep=set()).logits.flatten(1)
        correct += int((logits.argmax(-1) == labels[start:start + EVAL_BATCH]).sum())
    return correct / n if n else math.nan


def nir_summary_name(path: str) -> str:
    """How the summary names the float baseline of a NIR input."""
    return f"the NIR interpreter's float model of {Path(path).name}"
