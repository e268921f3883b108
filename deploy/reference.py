"""The integer reference simulator: what Loihi 2 must compute, bit for bit, for an integer graph.

Arithmetic: :mod:`calibration.fixed_point` (lava-nc 0.10.0 ``fixed_pt``) on int64, or on int32
where the values are provably small enough that no wrap can differ; conv and dense sums run as
float32 or float64 matrix products chosen so every partial sum is an exact integer, cast back to
integers without rounding. Conv outputs wrap to 24 bits, dense/identity sums take their weight
exponent. Batched over samples, on CPU or CUDA.

Two timings of the same graph:

* **zero delay** (:meth:`ReferenceSimulator.run_zero_delay`): every synapse delivers in the step
  its source fires, as PyTorch trains. Each sample runs ``T`` steps from zero state. Delays and
  reset offsets are ignored; relays are memoryless copies.
* **Loihi timing** (:meth:`ReferenceSimulator.run_stream`): the Lava/Loihi pipeline. A stream of
  ``N`` samples, one every ``P = reset_interval`` steps (step numbering from 1, as Lava's);
  the input sends timestep ``k`` of sample ``n`` at step ``n*P + k + 1`` (zeros for ``k >= T``);
  a synapse delivers ``1 + delay`` steps after its source fired; every population resets ``u``
  and ``v`` at the steps ``t`` with ``t % P == (1 + latency) % P`` (Lava's ``LIFReset``), just
  before its first input of a sample arrives. With the delays balanced by
  :func:`deploy.schedule.schedule`, population ``p`` emits timestep ``k`` of sample ``n`` at step
  ``n*P + k + 1 + latency(p)``, equal to the zero-delay spikes; other steps hold spikes that no
  in-window input depends on (for instance a bias integrating before the first input arrives),
  and the parity gate compares them too.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from calibration import fixed_point as fx
from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Synapse


@dataclass
class ZeroDelayResult:
    """``spikes[p]``: bool ``[T, B, *shape]``; ``logits``: int64 ``[T, B, K]`` (readout bias included).

    ``u``/``v``: post-step current and post-reset voltage per population when recorded.
    """

    spikes: dict[str, torch.Tensor]
    logits: torch.Tensor
    u: dict[str, torch.Tensor] = field(default_factory=dict)
    v: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.sum(0).argmax(-1)


class StreamWindows:
    """Where a sample's timesteps sit in a stream (Loihi timing); shared by the reference's and Lava's
    results. Needs ``reset_interval``, ``timesteps``, ``readout_latency``, ``readout`` (steps first)
    and ``readout_bias``."""

    def step_index(self, sample: int, timestep: int, latency: int) -> int:
        """0-based index into the step axis where ``timestep`` of ``sample`` leaves a population."""
        return sample * self.reset_interval + timestep + latency

    def logits(self, sample: int):
        """Per-timestep logits of ``sample``, ``[T, ..., K]`` (readout bias included)."""
        start = self.step_index(sample, 0, self.readout_latency)
        return self.readout[start:start + self.timesteps] + self.readout_bias


@dataclass
class StreamResult(StreamWindows):
    """Loihi timing. ``spikes[p]``: bool ``[S, B, *shape]`` for stream steps 1..S;
    ``readout``: int64 ``[S, B, K]``, the readout synapses' output at each step (no bias)."""

    spikes: dict[str, torch.Tensor]
    readout: torch.Tensor
    samples: int
    reset_interval: int
    timesteps: int
    readout_latency: int
    readout_bias: torch.Tensor
    u: dict[str, torch.Tensor] = field(default_factory=dict)
    v: dict[str, torch.Tensor] = field(default_factory=dict)

    def window(self, population: str, latency: int, sample: int) -> torch.Tensor:
        """Spikes of ``sample``'s ``T`` timesteps, aligned to zero-delay timing: ``[T, B, *shape]``."""
        start = self.step_index(sample, 0, latency)
        return self.spikes[population][start:start + self.timesteps]

    def predictions(self) -> torch.Tensor:
        """``[B, N]``: the argmax of each sample's summed logits."""
        return torch.stack([self.logits(n).sum(0).argmax(-1) for n in range(self.samples)], dim=1)


class ReferenceSimulator:
    def __init__(self, graph: IntegerGraph, device: str | torch.device = "cpu"):
        self.graph = graph
        self.device = torch.device(device)
        dev = self.device
        self.pops = list(graph.populations.values())
        self.bias = {p.name: fx.bias_value(torch.as_tensor(p.bias_mant, dtype=torch.int64, device=dev),
                                           torch.as_tensor(p.bias_exp, dtype=torch.int64, device=dev))
                     for p in self.pops}
        self.weights = {s.name: torch.as_tensor(s.weight, dtype=torch.float64 if s.kind != "identity" else torch.int64,
                                                device=dev) for s in graph.synapses}
        self.incoming = {p.name: graph.incoming(p.name) for p in self.pops}
        self.readout_syns = graph.readout
        self.readout_bias = torch.as_tensor(graph.readout_bias, dtype=torch.int64, device=dev)

    # ------------------------------------------------------------------ synapses
    def synapse_output(self, syn: Synapse, src: torch.Tensor) -> torch.Tensor:
        """Integer output of ``syn`` for source values ``src`` ``[N, *src_shape]`` (spikes or pixels)."""
        shape = None if syn.dst == READOUT else self.graph.populations[syn.dst].shape
        return fx.synapse_current(syn, src, self.weights[syn.name], shape)

    def _input(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(pixels, device=self.device).to(torch.int64)

    # ------------------------------------------------------------------ zero delay
    @torch.no_grad()
    def run_zero_delay(self, pixels: torch.Tensor | np.ndarray, *, record_state: bool = False,
                       keep_spikes: bool = True) -> ZeroDelayResult:
        """``pixels``: integers ``[B, C, H, W]`` in 0..input_levels. Runs ``T`` steps per sample."""
        g = self.graph
        T = g.timesteps
        x = self._input(pixels)
        B = x.shape[0]
        spikes: dict[str, torch.Tensor] = {}
        us, vs = {}, {}
        for p in self.pops:  # topological: sources are complete sequences already
            syns = self.incoming[p.name]
            sources = [x if s.src == INPUT else spikes[s.src] for s in syns]
            a = zero_delay_current(syns, [self.weights[s.name] for s in syns], sources, p.shape, T, B, self.device)
            s_seq, u_seq, v_seq = fx.integrate(a, du=p.du, dv=p.dv, bias=self.bias[p.name], vth=p.vth,
                                               record_state=record_state)
            spikes[p.name] = s_seq
            if record_state:
                us[p.name], vs[p.name] = u_seq, v_seq
        logits = self.readout_bias.expand(T, B, -1).clone()
        for syn in self.readout_syns:
            logits += self.synapse_output(syn, spikes[syn.src].flatten(0, 1)).view(T, B, -1)
        if not keep_spikes:
            spikes = {}
        return ZeroDelayResult(spikes, logits, us, vs)

    # ------------------------------------------------------------------ Loihi timing
    @torch.no_grad()
    def run_stream(self, pixels: torch.Tensor | np.ndarray, *, steps: Optional[int] = None,
                   record_state: bool = False) -> StreamResult:
        """``pixels``: ``[B, N, C, H, W]``: ``B`` independent streams of ``N`` samples each.

        Runs ``steps`` stream steps (default: until the last sample has left the readout).
        """
        g = self.graph
        if not g.scheduled:
            raise ValueError("Loihi timing needs a scheduled graph (deploy.schedule.schedule)")
        P, T = g.reset_interval, g.timesteps
        x = self._input(pixels)
        B, N = x.shape[:2]
        readout_latency = readout_latency_of(g)
        S = steps or stream_steps(g, N)
        dev = self.device
        state = {p.name: (torch.zeros((B,) + p.shape, dtype=torch.int64, device=dev),
                          torch.zeros((B,) + p.shape, dtype=torch.int64, device=dev)) for p in self.pops}
        fifos: dict[str, deque] = {}
        for syn in g.synapses:
            shape = (B, g.num_classes) if syn.dst == READOUT else (B,) + g.populations[syn.dst].shape
            fifos[syn.name] = deque(torch.zeros(shape, dtype=torch.int64, device=dev) for _ in range(syn.delay + 1))
        spikes = {p.name: torch.zeros((S, B) + p.shape, dtype=torch.bool, device=dev) for p in self.pops}
        us = {p.name: torch.zeros((S, B) + p.shape, dtype=torch.int64, device=dev) for p in self.pops} \
            if record_state else {}
        vs = {p.name: torch.zeros((S, B) + p.shape, dtype=torch.int64, device=dev) for p in self.pops} \
            if record_state else {}
        readout = torch.zeros((S, B, g.num_classes), dtype=torch.int64, device=dev)
        reset_phase = {p.name: (1 + p.latency) % P for p in self.pops}
        zero_in = torch.zeros((B,) + tuple(g.input_shape), dtype=torch.int64, device=dev)
        for t in range(1, S + 1):
            delivered = {name: q.popleft() for name, q in fifos.items()}
            for p in self.pops:
                u, v = state[p.name]
                if t % P == reset_phase[p.name]:
                    u, v = torch.zeros_like(u), torch.zeros_like(v)
                a = torch.zeros_like(u)
                for syn in self.incoming[p.name]:
                    a += delivered[syn.name]
                u, _h, s, v = fx.lif_step(u, v, a, du=p.du, dv=p.dv, bias=self.bias[p.name], vth=p.vth)
                state[p.name] = (u, v)
                spikes[p.name][t - 1] = s
                if record_state:
                    us[p.name][t - 1], vs[p.name][t - 1] = u, v
            for syn in g.readout:
                readout[t - 1] += delivered[syn.name]
            n, k = divmod(t - 1, P)
            inp = x[:, n] if (n < N and k < T) else zero_in
            for syn in g.synapses:
                src = inp if syn.src == INPUT else spikes[syn.src][t - 1]
                fifos[syn.name].append(self.synapse_output(syn, src))
        return StreamResult(spikes, readout, N, P, T, readout_latency, self.readout_bias, us, vs)


def zero_delay_current(syns: list[Synapse], weights: list[torch.Tensor], sources: list[torch.Tensor],
                       shape: tuple[int, ...], T: int, B: int, device: torch.device) -> torch.Tensor:
    """Zero-delay synaptic input ``a [T, B, *shape]`` (a-units, int64 or int32: see
    :func:`calibration.fixed_point.synapse_current`; summed over ``syns``) of a
    population of ``shape``. ``weights[i]``: ``syns[i].weight`` as a tensor; ``sources[i]``: the
    input pixels ``[B, C, H, W]`` (the same at every step) for a synapse from the input, else its
    source population's spikes ``[T, B, *source_shape]``."""
    size = (T, B) + tuple(shape)
    a = None
    for syn, w, x in zip(syns, weights, sources):
        every_step = syn.src == INPUT  # the pixels: one current, added at every step
        y = fx.synapse_current(syn, x if every_step else x.flatten(0, 1), w, shape)
        y = y.view((1,) + tuple(y.shape)) if every_step else y.view((T, B) + tuple(y.shape[1:]))
        if a is None and tuple(y.shape) == size:
            a = y  # a new tensor: the sum starts from it
        else:
            a = torch.zeros(size, dtype=y.dtype, device=device) if a is None else a
            if a.dtype != y.dtype:
                a = a.to(torch.int64)  # int32 outputs are below 2^23: sums of a few fit, wider ones widen
            a += y  # broadcasts a current of one step (the pixels) over all steps
    return a if a is not None else torch.zeros(size, dtype=torch.int64, device=device)


def readout_latency_of(graph: IntegerGraph) -> int:
    """Steps from a sample's first input step to its first readout value (after scheduling)."""
    lat = {graph.populations[s.src].latency + 1 + s.delay for s in graph.readout}
    if len(lat) != 1:
        raise ValueError(f"readout synapses arrive at different latencies {sorted(lat)}: graph not scheduled")
    return lat.pop()


def stream_steps(graph: IntegerGraph, samples: int) -> int:
    """Stream steps until the last timestep of the last of ``samples`` samples reaches the readout."""
    return (samples - 1) * graph.reset_interval + graph.timesteps + readout_latency_of(graph)
