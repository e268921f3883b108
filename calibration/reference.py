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
  :func:`calibration.schedule.schedule`, population ``p`` emits timestep ``k`` of sample ``n`` at step
  ``n*P + k + 1 + latency(p)``, equal to the zero-delay spikes; other steps hold spikes that no
  in-window input depends on (for instance a bias integrating before the first input arrives),
  and the parity gate compares them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from calibration import fixed_point as fx
from calibration.integer_graph import INPUT, READOUT, IntegerGraph, StreamWindows, Synapse
from calibration.readout import readout_time_weights, scores


@dataclass
class ZeroDelayResult:
    """``spikes[p]``: bool ``[T, B, *shape]`` (a ``partial_sum`` population: its int64 payloads);
    ``logits``: int64 ``[T, B, K]`` (readout bias included).

    ``u``/``v``: post-step current and post-reset voltage per population when recorded.
    """

    spikes: dict[str, torch.Tensor]
    logits: torch.Tensor
    u: dict[str, torch.Tensor] = field(default_factory=dict)
    v: dict[str, torch.Tensor] = field(default_factory=dict)
    time_weights: Optional[np.ndarray] = None  # the readout rule's [T, K] (calibration.readout), None: a sum

    @property
    def predictions(self) -> torch.Tensor:
        return scores(self.logits, self.time_weights).argmax(-1)


@dataclass
class StreamResult(StreamWindows):
    """Loihi timing. ``spikes[p]``: bool ``[S, B, *shape]`` for stream steps 1..S (a ``partial_sum``
    population: its int64 payloads);
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
    time_weights: Optional[np.ndarray] = None

    def window(self, population: str, latency: int, sample: int) -> torch.Tensor:
        """Spikes of ``sample``'s ``T`` timesteps, aligned to zero-delay timing: ``[T, B, *shape]``."""
        start = self.step_index(sample, 0, latency)
        return self.spikes[population][start:start + self.timesteps]

    def predictions(self) -> torch.Tensor:
        """``[B, N]``: the argmax of each sample's readout scores (its logits summed over time with the
        readout rule's weights)."""
        return torch.stack([scores(self.logits(n), self.time_weights).argmax(-1) for n in range(self.samples)],
                           dim=1)


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
        self.time_weights = readout_time_weights(graph)

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
            a = fx.zero_delay_current(syns, [self.weights[s.name] for s in syns], sources, p.shape, T, B, self.device)
            if p.kind == "partial_sum":  # GradedVec: its summed input, sent unchanged
                spikes[p.name] = a.to(torch.int64)
                continue
            s_seq, u_seq, v_seq = fx.integrate(a, du=p.du_code, dv=p.dv_code, bias=self.bias[p.name], vth=p.vth_mant,
                                               record_state=record_state)
            spikes[p.name] = s_seq
            if record_state:
                us[p.name], vs[p.name] = u_seq, v_seq
        logits = self.readout_bias.expand(T, B, -1).clone()
        for syn in self.readout_syns:
            logits += self.synapse_output(syn, spikes[syn.src].flatten(0, 1)).view(T, B, -1)
        if not keep_spikes:
            spikes = {}
        return ZeroDelayResult(spikes, logits, us, vs, self.time_weights)

    # ------------------------------------------------------------------ Loihi timing
    def source_stream(self, syn: Synapse, x: torch.Tensor, spikes: dict[str, torch.Tensor], S: int) -> torch.Tensor:
        """``[S, B, *out]``: the output of ``syn`` computed at each stream step from its source's
        value at that step (pixels ``x [B, N, C, H, W]`` for the input, in the stream layout of
        :meth:`run_stream`; else the source's spikes ``[S, B, ...]``), before any delay."""
        if syn.src != INPUT:
            src = spikes[syn.src]
            out = self.synapse_output(syn, src.flatten(0, 1))
            return out.view((S,) + tuple(src.shape[1:2]) + tuple(out.shape[1:]))
        P, T = self.graph.reset_interval, self.graph.timesteps
        B, N = x.shape[:2]
        out = None
        for n in range(N):  # the sample's pixels at its T steps, zeros elsewhere (zero in, zero out)
            steps = [j for j in range(n * P, min(n * P + T, S))]
            if not steps:
                break
            y = self.synapse_output(syn, x[:, n])
            if out is None:
                out = torch.zeros((S,) + tuple(y.shape), dtype=y.dtype, device=self.device)
            out[steps] = y
        if out is None:
            y = self.synapse_output(syn, torch.zeros_like(x[:, 0]))
            out = torch.zeros((S,) + tuple(y.shape), dtype=y.dtype, device=self.device)
        return out

    def _integrate_windows(self, p, a: torch.Tensor, record_state: bool) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The LIF of population ``p`` over the stream input ``a [S, B, *shape]``: ``(spikes, u, v)``
        as :func:`calibration.fixed_point.integrate` returns them (``u``, ``v`` only with
        ``record_state``).

        ``u`` and ``v`` are zeroed before every 0-based step ``r`` with ``r % P == latency % P``
        (Lava's ``LIFReset`` at ``t % P == (1 + latency) % P``, ``t = r + 1``), so the stream splits
        into independent runs from zero state: the steps before the first reset, then windows of
        ``P`` steps (the last one padded with zero input after its real steps, which cannot change
        them). A window whose input equals the previous window's has the same output (the steps
        between samples, while the pipeline fills and drains, repeat one pattern): only the others
        are integrated, all at once as a batch."""
        S, B = a.shape[:2]
        P = self.graph.reset_interval
        first = min(S, p.latency % P)
        n_win = -(-(S - first) // P)
        lif = dict(du=p.du_code, dv=p.dv_code, bias=self.bias[p.name], vth=p.vth_mant, record_state=record_state)
        head = fx.integrate(a[:first], **lif) if first else None
        tail = None
        if n_win:
            w = a[first:]
            if w.shape[0] < n_win * P:
                w = torch.cat([w, torch.zeros((n_win * P - w.shape[0],) + tuple(w.shape[1:]), dtype=w.dtype,
                                              device=w.device)])
            w = w.view((n_win, P) + tuple(w.shape[1:]))
            sums = w.flatten(1).sum(1).tolist()  # different sums: different windows, no full comparison
            distinct = [0] + [i for i in range(1, n_win) if sums[i] != sums[i - 1] or not torch.equal(w[i], w[i - 1])]
            source = torch.zeros(n_win, dtype=torch.int64, device=w.device)  # window -> its distinct window
            source[distinct] = 1
            source = source.cumsum(0) - 1
            batch = w[distinct].transpose(0, 1).flatten(1, 2)  # [P, distinct * B, ...]
            tail = [None if r is None else
                    r.view((P, len(distinct)) + tuple(a.shape[1:])).transpose(0, 1)[source].flatten(0, 1)[: S - first]
                    for r in fx.integrate(batch, **lif)]
        parts = [x for x in (head, tail) if x is not None]
        return tuple(None if parts[0][i] is None else torch.cat([part[i] for part in parts]) for i in range(3))

    @torch.no_grad()
    def run_stream(self, pixels: torch.Tensor | np.ndarray, *, steps: Optional[int] = None,
                   record_state: bool = False) -> StreamResult:
        """``pixels``: ``[B, N, C, H, W]``: ``B`` independent streams of ``N`` samples each.

        Runs ``steps`` stream steps (default: until the last sample has left the readout).

        The graph is feed-forward with every hop delayed by ``1 + delay`` steps, so each
        population's whole stream depends only on its sources' whole streams: populations run in
        topological order, each synapse over all ``S`` steps at once (one batched convolution, not
        ``S``), then the LIF through time, every reset interval at once
        (:meth:`_integrate_windows`). The integers are those of a step-by-step loop.
        """
        g = self.graph
        if not g.scheduled:
            raise ValueError("Loihi timing needs a scheduled graph (calibration.schedule.schedule)")
        P, T = g.reset_interval, g.timesteps
        x = self._input(pixels)
        B, N = x.shape[:2]
        readout_latency = g.readout_latency()
        S = steps or g.stream_steps(N)
        dev = self.device
        spikes: dict[str, torch.Tensor] = {}
        us: dict[str, torch.Tensor] = {}
        vs: dict[str, torch.Tensor] = {}

        def delivered(syn: Synapse, into: Optional[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
            """``into`` plus what ``syn`` delivers at each step (its output of ``1 + delay`` steps
            before, broadcast to ``shape``); ``into`` None: a new ``[S, B, *shape]`` tensor (int32 if
            the output is, else int64)."""
            out = self.source_stream(syn, x, spikes, S)
            if into is None:
                into = torch.zeros((S, B) + tuple(shape), dtype=out.dtype, device=dev)
            elif into.dtype != out.dtype:
                into = into.to(torch.int64)
            d = 1 + syn.delay
            if d < S:
                into[d:] += out[: S - d]
            return into

        for p in self.pops:  # topological order: every source's stream is complete
            syns = self.incoming[p.name]
            a = None
            for syn in syns:  # int32 outputs are below 2^23: sums of up to 255 of them fit int32
                a = delivered(syn, a if a is None or len(syns) <= 255 else a.to(torch.int64), p.shape)
            if a is None:
                a = torch.zeros((S, B) + p.shape, dtype=torch.int64, device=dev)
            if p.kind == "partial_sum":  # GradedVec: its summed input, sent in the step it arrives
                spikes[p.name] = a.to(torch.int64)
                continue
            spikes[p.name], u, v = self._integrate_windows(p, a, record_state)
            if record_state:
                us[p.name], vs[p.name] = u, v
        readout = torch.zeros((S, B, g.num_classes), dtype=torch.int64, device=dev)
        for syn in g.readout:
            readout = delivered(syn, readout, (g.num_classes,))
        return StreamResult(spikes, readout, N, P, T, readout_latency, self.readout_bias, us, vs, self.time_weights)


