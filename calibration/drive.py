"""One population on the calibration samples: its drive error, integer spikes and spike agreement.

Calibration (:mod:`calibration.quantize`) judges a quantized neuron population by its **drive
error**: at every neuron-step of the calibration samples, the integer drive ``a + bias / 64``
(a-units) minus ``s`` times what the float weights and bias make of the *same* integer inputs,
where ``s`` is the population's scale (a-units per float unit). By linearity this is the drive of
the rounding residuals ``r = w_int 2^exp - s w`` plus the bias residual ``beta = bias / 64 -
s bias_float``: the rounding itself (per weight, per bias with its exponent) is what varies from
one scale to the next and is never extrapolated, every candidate's own integers are scored. The
integer input never wraps its 24 bits (the worst-case current bound every candidate passes) and
the threshold carries no rounding (``s = vth_mant / vth``), so nothing else separates the two
drives. Reported as an RMS in units of the threshold (divided by ``s vth``): the error this
population's own rounding adds, upstream errors excluded (its inputs are the integer spikes of its
quantized sources).

:class:`CandidateScorer` computes it for every scale candidate, and for the chosen one (the
report's ``current_rmse_vth``). A row is one (timestep, image, position) of the population, i.e.
its ``C`` channels there; ``N = T * B * H * W`` rows. When scoring a candidate on all of them
costs at most ``SCORE_MACS`` multiply-adds (every small population; the bundled digits model
throughout), the score is exact: float32 convolutions of the residuals over all samples, squares
summed to ~1e-9 relative (:func:`square_sum`). Otherwise the sum of squares is split per neuron
into ``T B mean^2`` plus the squared deviations from that mean. The per-neuron **mean** over all
``T B`` frames stays exact (by linearity, the drive of the mean input frame: one frame's
multiply-adds); it is the systematic part, which the neuron integrates over the timesteps. The
**deviations** are summed on ``M = SCORE_MACS // (multiply-adds per row)`` rows, one in each of
``M`` equal strata of the row order, at golden-ratio offsets (deterministic, no random numbers),
and scaled by ``N / M``: an unbiased estimate (for rows drawn at random; these are spread evenly).
A candidate then costs one matrix product per synapse instead of a convolution over all samples.

:func:`measure` runs the chosen scale exactly on every sample: the integer current of every
neuron-step (:func:`~calibration.fixed_point.zero_delay_current`, exact integers), the Loihi spikes
(:func:`~calibration.fixed_point.integrate`), their agreement with the float model's, in chunks of
images (memory). Spikes are kept 8 to a byte: :class:`PackedSpikes`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import fixed_point as fx
from .float_graph import FloatPopulation, FloatSynapse
from .integer_graph import INPUT, Population, Synapse

#: Multiply-adds one candidate's sampled rows may cost (see the module docstring).
SCORE_MACS = 1 << 26
#: Neuron-steps per chunk of images in :func:`measure`: its int32/float32 temporaries stay at 16 MiB, below
#: glibc's mmap threshold, so their memory is reused without page faults (2^24 was 25 % slower).
CHUNK_NEURON_STEPS = 1 << 22
#: ``(sqrt(5) - 1) / 2``: offsets ``frac(i * GOLDEN)`` of the sampled rows within their strata.
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # no C library by that name, or not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).

    Calibration keeps each population's integers while it allocates and frees the next one's
    temporaries; glibc leaves the freed pages between long-lived arrays resident, which grew
    XOResNet-101's memory by ~40 MiB per block. Called once per population."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# ---------------------------------------------------------------------- spikes, 8 per byte

@dataclass
class PackedSpikes:
    """Spikes ``[T, B, *shape]`` stored 8 per byte along each frame's flattened neurons."""

    bits: torch.Tensor  # uint8 [T, B, ceil(n / 8)]
    shape: tuple[int, ...]

    @classmethod
    def empty(cls, timesteps: int, images: int, shape: tuple[int, ...]) -> "PackedSpikes":
        """Room for ``[timesteps, images, *shape]`` spikes (all zero), to :meth:`store` into."""
        return cls(torch.zeros((timesteps, images, -(-math.prod(shape) // 8)), dtype=torch.uint8), tuple(shape))

    @classmethod
    def pack(cls, spikes: torch.Tensor) -> "PackedSpikes":
        """``spikes``: ``[T, B, *shape]``, any dtype; a non-zero value is a spike."""
        packed = cls.empty(spikes.shape[0], spikes.shape[1], tuple(spikes.shape[2:]))
        packed.store(0, spikes)
        return packed

    def store(self, b0: int, spikes: torch.Tensor) -> None:
        """Write ``spikes`` ``[T, b, *shape]`` (non-zero: a spike) as images ``b0 .. b0 + b - 1``."""
        spikes = spikes if spikes.dtype == torch.bool else spikes != 0  # (bool != 0 is a slow path in torch)
        flat = spikes.reshape(spikes.shape[0], spikes.shape[1], -1).numpy()
        # bit i of byte k: neuron 8 k + i
        self.bits[:, b0:b0 + flat.shape[1]] = torch.from_numpy(np.packbits(flat, axis=-1, bitorder="little"))

    @property
    def timesteps(self) -> int:
        return int(self.bits.shape[0])

    @property
    def images(self) -> int:
        return int(self.bits.shape[1])

    def unpack(self, b0: int = 0, b1: Optional[int] = None) -> torch.Tensor:
        """Bool spikes ``[T, b1 - b0, *shape]`` of images ``b0:b1``."""
        bits = self.bits[:, b0:b1].numpy()
        flat = np.unpackbits(bits, axis=-1, count=math.prod(self.shape), bitorder="little")
        return torch.from_numpy(flat).view(torch.bool).reshape(tuple(bits.shape[:2]) + self.shape)


# ---------------------------------------------------------------------- what a population sees

@dataclass
class PopulationSamples:
    """The calibration samples as one population sees them: per incoming synapse what the integer
    graph feeds it, the input pixels ``[B, C, H, W]`` (int64 tensor, the same at every step) or the
    integer spikes ``[T, B, *source_shape]`` of its already quantized source (packed), and the float
    model's spikes of the population itself (from its own float inputs)."""

    sources: list[torch.Tensor | PackedSpikes]
    float_spikes: PackedSpikes

    def source(self, i: int, b0: int, b1: int) -> torch.Tensor:
        """Synapse ``i``'s input for images ``b0:b1``: pixels ``[b, C, H, W]`` or bool spikes ``[T, b, ...]``."""
        x = self.sources[i]
        return x.unpack(b0, b1) if isinstance(x, PackedSpikes) else x[b0:b1]

    @property
    def timesteps(self) -> int:
        return self.float_spikes.timesteps

    @property
    def images(self) -> int:
        return self.float_spikes.images


def synapse_drive(syn: FloatSynapse, x: torch.Tensor) -> torch.Tensor:
    """Float synaptic input ``[N, ...]`` of ``syn`` (its float ``weight``) for source values
    ``x [N, ...]`` (any float dtype; the result has it)."""
    w = torch.as_tensor(syn.weight, dtype=x.dtype)
    if syn.kind == "conv":
        return F.conv2d(x, w, stride=syn.stride, padding=syn.padding, groups=syn.groups)
    if syn.kind == "identity":
        return x * w
    return x.flatten(1) @ w.T


def residual_synapses(float_syns: list[FloatSynapse], residuals: list[torch.Tensor]) -> list[FloatSynapse]:
    """The float synapses with their rounding residuals ``w_int 2^exp - scale w`` as weights (a-units
    per input unit, float32)."""
    return [replace(f, weight=r) for f, r in zip(float_syns, residuals)]


def bias_residual(population: Population, pop: FloatPopulation) -> torch.Tensor:
    """``bias / 64 - scale * bias_float`` per neuron (a-units, float64 ``[shape]``)."""
    bias = fx.bias_value(torch.as_tensor(population.bias_mant), torch.as_tensor(population.bias_exp))
    bias = bias.to(torch.float64) / 2 ** fx.ACT_SHIFT
    return bias - torch.as_tensor(pop.bias) * population.scale if pop.bias is not None else bias


def image_chunks(images: int, neuron_steps_per_image: int, budget: Optional[int] = None) -> list[tuple[int, int]]:
    """``[(b0, b1), ...]`` covering ``images`` with at most ``budget`` (default :data:`CHUNK_NEURON_STEPS`)
    neuron-steps per chunk (>= 1 image)."""
    step = max(1, (budget or CHUNK_NEURON_STEPS) // max(1, neuron_steps_per_image))
    return [(b, min(images, b + step)) for b in range(0, images, step)]


# ---------------------------------------------------------------------- the integer spikes of the chosen scale

@dataclass
class Measurement:
    """The integer spikes ``[T, B, *shape]`` (packed; ``None`` unless kept) and the fraction of
    neuron-steps whose integer spike differs from the float model's."""

    spikes: Optional[PackedSpikes]
    spike_mismatch: float


def measure(population: Population, int_syns: list[Synapse], samples: PopulationSamples, *, keep_spikes: bool
            ) -> Measurement:
    """The integer population (``int_syns``) on all samples (zero delay, from zero state per image),
    exactly, in chunks of images."""
    p = population
    T, B = samples.timesteps, samples.images
    weights = [torch.as_tensor(s.weight) for s in int_syns]
    bias = fx.bias_value(torch.as_tensor(p.bias_mant), torch.as_tensor(p.bias_exp))
    spikes = PackedSpikes.empty(T, B, p.shape) if keep_spikes else None
    differ = 0
    for b0, b1 in image_chunks(B, T * p.size):
        src = [samples.source(i, b0, b1) for i in range(len(int_syns))]
        a = fx.zero_delay_current(int_syns, weights, src, p.shape, T, b1 - b0, torch.device("cpu"))
        s = fx.integrate(a, du=p.du_code, dv=p.dv_code, bias=bias, vth=p.vth_mant)[0]
        del a
        differ += int(torch.count_nonzero(s != samples.float_spikes.unpack(b0, b1)))
        if spikes is not None:
            spikes.store(b0, s)
    return Measurement(spikes, differ / (T * B * p.size))


# ---------------------------------------------------------------------- the drive error

def drive_error_squares(residual: list[FloatSynapse], beta: torch.Tensor, sources: list[torch.Tensor], T: int,
                        b: int) -> float:
    """The sum over the neuron-steps of ``b`` images of the squared drive error (a-units^2): the drive
    of the ``residual`` synapses on their ``sources`` (pixels ``[b, C, H, W]`` or spikes
    ``[T, b, ...]``) plus ``beta`` (bias residual ``[shape]``), in float32."""
    err = beta.expand((1, b) + tuple(beta.shape))
    for syn, x in zip(residual, sources):
        if syn.src == INPUT:  # the pixels: one drive, the same at every step
            y = synapse_drive(syn, x.to(torch.float32))
        else:
            y = synapse_drive(syn, x.flatten(0, 1).to(torch.float32))
        err = err + y.view((-1, b) + tuple(beta.shape))  # [T or 1, b, *shape] (dense: flat outputs)
    return (T if err.shape[0] == 1 else 1) * square_sum(err)


def square_sum(x: torch.Tensor, row: int = 1024) -> float:
    """The sum of the squares of ``x`` (float32) to ~1e-9 relative: float32 norms of rows of ``row``
    values, squared and summed in float64 (no temporary of ``x``'s size, unlike ``x.square()``)."""
    flat = x.reshape(-1)
    cut = flat.numel() - flat.numel() % row
    norms = torch.cat([torch.linalg.vector_norm(flat[:cut].view(-1, row), dim=1),
                       torch.linalg.vector_norm(flat[cut:]).view(1)])
    return float(norms.double().square().sum())


def stratified_rows(n: int, m: int) -> torch.Tensor:
    """``m`` distinct indices in ``[0, n)``, ascending: one in each of ``m`` equal strata, at offset
    ``frac(i * GOLDEN)`` of stratum ``i`` (every index when ``m = n``)."""
    i = torch.arange(m, dtype=torch.float64)
    start = torch.floor(i * n / m)
    width = torch.floor((i + 1) * n / m) - start
    return (start + torch.floor(torch.frac(i * GOLDEN) * width)).long()


class CandidateScorer:
    """Scores scale candidates of one neuron population by its drive error on the calibration samples
    (see the module docstring): exactly when every row fits the budget (``rows == total_rows``),
    else from the exact per-neuron mean and the sampled rows' deviations from it.

    Built once per population: exact, it keeps the inputs unpacked in float32 (no more values than
    one candidate's multiply-adds, times the stride's area); sampled, it gathers the inputs of the
    mean frame's and the sampled rows. :meth:`score` per candidate: the convolutions over all
    samples (exact) or one matrix product per synapse (sampled).
    """

    def __init__(self, pop: FloatPopulation, syns: list[FloatSynapse], samples: PopulationSamples,
                 score_macs: int = SCORE_MACS):
        self.pop, self.syns, self.samples = pop, syns, samples
        self.T, self.B = samples.timesteps, samples.images
        self.channels = pop.shape[0]
        self.positions = math.prod(pop.shape[1:])
        self.total_rows = self.T * self.B * self.positions
        per_row = sum(self._row_macs(s) for s in syns) or 1
        self.rows = min(self.total_rows, max(1, score_macs // per_row))
        self.exact = self.rows == self.total_rows
        if self.exact:  # every candidate reads the same inputs: unpacked and in float32 once
            self.chunks = [(b1 - b0, [self.samples.source(i, b0, b1).to(torch.float32) for i in range(len(syns))])
                           for b0, b1 in image_chunks(self.B, self.T * math.prod(pop.shape))]
            return
        P = self.positions
        idx = self.sampled = stratified_rows(self.total_rows, self.rows)  # row = (t * B + b) * P + position
        frame, pos = idx // P, idx % P
        t, b = frame // self.B, frame % self.B
        # rows 0..P-1: the mean input frame at every position; then the sampled rows
        self.pos = torch.cat([torch.arange(P), pos])
        self.row_inputs = []
        for i, s in enumerate(syns):
            x = samples.source(i, 0, self.B)
            graded = s.src == INPUT
            mean = (x.sum(0) if graded else x.flatten(0, 1).sum(0)).to(torch.float64) / (x.shape[0] * (
                1 if graded else x.shape[1]))  # over the B images (the pixels), else over the T * B frames
            zero = torch.zeros(P, dtype=torch.long)
            rows_mean = self._gather(s, mean.to(torch.float32).unsqueeze(0), (zero,), torch.arange(P))
            rows_sampled = self._gather(s, x, (b,) if graded else (t, b), pos)
            self.row_inputs.append(torch.cat([rows_mean, rows_sampled], -2))

    def _row_macs(self, syn: FloatSynapse) -> int:
        if syn.kind == "conv":
            return int(math.prod(syn.weight.shape))  # C_out x C_in / groups x kH x kW
        if syn.kind == "identity":
            return self.channels
        return int(syn.weight.shape[0]) * int(syn.weight.shape[1])  # the row's whole frame

    def _gather(self, syn: FloatSynapse, x: torch.Tensor, frames: tuple[torch.Tensor, ...], pos: torch.Tensor
                ) -> torch.Tensor:
        """The inputs of ``syn`` at rows (source frames ``x[frames]``, positions ``pos`` of the
        population) as float32: conv ``[groups, rows, C_in / groups * kH * kW]`` (receptive fields,
        zero padding), identity ``[rows, C]``, dense ``[rows, n_in]`` (the row's whole frame)."""
        if syn.kind == "conv":
            kh, kw = syn.weight.shape[2:]
            width = self.pop.shape[2]
            y0 = (pos // width) * syn.stride[0] - syn.padding[0]
            x0 = (pos % width) * syn.stride[1] - syn.padding[1]
            yy = y0.view(-1, 1, 1, 1) + torch.arange(kh).view(1, 1, -1, 1)
            xx = x0.view(-1, 1, 1, 1) + torch.arange(kw).view(1, 1, 1, -1)
            inside = (yy >= 0) & (yy < x.shape[-2]) & (xx >= 0) & (xx < x.shape[-1])
            index = tuple(f.view(-1, 1, 1, 1) for f in frames) + (
                torch.arange(x.shape[-3]).view(1, -1, 1, 1), yy.clamp(0, x.shape[-2] - 1), xx.clamp(0, x.shape[-1] - 1))
            patches = (x[index] * inside).to(torch.float32)  # [rows, C_in, kH, kW]
            return patches.view(len(pos), syn.groups, -1).transpose(0, 1).contiguous()
        if syn.kind == "identity":
            flat = x.flatten(-len(self.pop.shape) + 1) if len(self.pop.shape) > 1 else x.unsqueeze(-1)
            return flat[frames + (slice(None), pos)].to(torch.float32)
        return x[frames].flatten(1).to(torch.float32)

    def _row_drive(self, syn: FloatSynapse, rows: torch.Tensor) -> torch.Tensor:
        """``[P + M, C]`` float32: the drive of ``syn`` (residual weights) at the gathered rows."""
        C, P, n = self.channels, self.positions, len(self.pos)
        w = syn.weight
        if syn.kind == "conv":
            g = syn.groups
            y = torch.bmm(rows, w.view(g, C // g, -1).transpose(1, 2))  # [g, rows, C / g]
            return y.transpose(0, 1).reshape(n, C)
        if syn.kind == "identity":
            return rows * w.reshape(C, P)[:, self.pos].T
        return (rows @ w.T).view(n, C, P)[torch.arange(n), :, self.pos]

    def sampled_errors(self, population: Population, residuals: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, rows)`` (a-units, float32; sampled scorers only): ``mean [P, C]``, each neuron's drive
        error averaged over the ``T * B`` frames (position-major), and ``rows [M, C]``, the drive
        error at the sampled rows (``row_positions``)."""
        C, P = self.channels, self.positions
        drive = sum(self._row_drive(syn, rows) for syn, rows in zip(residual_synapses(self.syns, residuals),
                                                                    self.row_inputs))
        beta = bias_residual(population, self.pop).to(torch.float32).reshape(C, P).T
        return drive[:P] + beta, drive[P:] + beta[self.row_positions]

    @property
    def row_positions(self) -> torch.Tensor:
        """The sampled rows' positions (``y * W + x``) in the population."""
        return self.pos[self.positions:]

    def score(self, population: Population, residuals: list[torch.Tensor]) -> float:
        """The drive error (RMS, units of ``vth``) of the quantized population (its synapses' rounding
        ``residuals``): exact, or estimated as described."""
        p = population
        if self.exact:
            residual = residual_synapses(self.syns, residuals)
            beta = bias_residual(p, self.pop).to(torch.float32)
            squares = sum(drive_error_squares(residual, beta, sources, self.T, b) for b, sources in self.chunks)
        else:
            mean, rows = self.sampled_errors(p, residuals)
            deviation = rows - mean[self.row_positions]  # a sampled row's error minus its neurons' mean
            squares = self.T * self.B * square_sum(mean) + self.total_rows / self.rows * square_sum(deviation)
        return math.sqrt(squares / (self.total_rows * self.channels)) / (p.scale * self.pop.vth)
