"""The memory an export needs, estimated from the network's config before any work is done.

Every stage of ``xoresnet-export`` that simulates the network holds per-neuron, per-timestep state for a
batch of images, so its memory grows with ``T x neurons x images``. Asked for ``--timesteps 3000``, the
export would run out of memory an hour in; :func:`check_export_memory` refuses it up front with the
figure it would need (:class:`~xoresnet.errors.UsageError`, exit 2).

The estimate (:func:`estimate_export_memory`), per image and timestep of a LIF neuron of the network
(:func:`lif_neurons`; the gates and relays of the integer graph add 0.5-1x that many neurons, folded into
the per-neuron figures), takes the largest of the stages, which run one after another:

=================  ==========================================  ===================================
stage              images at once                              bytes per LIF neuron-step-image
=================  ==========================================  ===================================
NIR check          its batch (:func:`nir_check_batch`)          :data:`CHECK_BYTES` (28)
calibration        ``--calib-samples`` (or ``--calib-data``'s)  :data:`CALIBRATION_BYTES` (12)
parity stream      ``--parity-samples``, ~2T steps each        :data:`STREAM_BYTES` (8)
=================  ==========================================  ===================================

plus :data:`BASE_BYTES` for the interpreter, torch and the loaded model. The figures were measured on this
code (peak RSS per stage, ``/proc/self/status`` VmHWM): the digits model at T = 8, 24, 64 (stage 2 at 256
images: 36 B per LIF neuron-step-image at T = 24) and an XOResNet-18 at width 0.25 on 32x32 images at
T = 4 (24 B); calibration of XOResNet-18 / -101 at width 1.0 (``docs/performance.md``: 13 / 6 B). They are
estimates: a refusal says so and names the flags that lower the figure.

The NIR check is the one stage that can trade memory for time without changing any result: it compares
images batch by batch, so :func:`nir_check_batch` halves its batch (at most :data:`NIR_CHECK_MAX_BATCH`)
until the stage fits the memory available. A width-1.0 network thus exports with the default flags on a
machine where 256 images at once would not fit (XOResNet-18 at 32x32, T = 4: about 16 GB at 256 images).

The memory available is the kernel's ``MemAvailable`` (``/proc/meminfo``), lowered to what a cgroup
memory limit leaves (``/sys/fs/cgroup/memory.max`` minus ``memory.current``) when there is one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from xoresnet.config import NetworkConfig
from xoresnet.errors import UsageError
from xoresnet.files import GiB, size_text

BASE_BYTES = GiB // 2
CHECK_BYTES = 28
CALIBRATION_BYTES = 12
STREAM_BYTES = 8
#: Images the NIR check compares at once where memory allows (:func:`nir_check_batch`).
NIR_CHECK_MAX_BATCH = 256


def _conv_out(size: int, stride: int) -> int:
    """Side of a 3x3 convolution's output (padding 1)."""
    return (size - 1) // stride + 1


def lif_neurons(config: NetworkConfig) -> int:
    """LIF neurons of the network of ``config`` per image and timestep: the stem's and every backbone
    convolution's (a ``spike`` shortcut's too), at the resolution of their outputs."""
    side = _conv_out(config.input_size, 2 if config.stem == "conv_s2_orpool" else 1)
    total = config.stem_width() * side * side
    if config.stem == "conv_s2_orpool":
        side //= 2
    cin = config.stem_width()
    for i, (blocks, planes) in enumerate(zip(config.blocks_per_stage, config.stage_widths())):
        for j in range(blocks):
            stride = 2 if (i > 0 and j == 0) else 1
            side = _conv_out(side, stride)
            cout = planes * config.expansion
            widths = [planes, cout] if config.block_type == "basic" else [planes, planes, cout]
            if (stride != 1 or cin != cout) and config.block.shortcut == "spike":
                widths.append(cout)
            total += sum(widths) * side * side
            cin = cout
    return total


def nir_check_batch(timesteps: int, neurons: int, *, eval_images: int, available: Optional[int]) -> int:
    """Images the NIR check of a network of ``neurons`` spiking neurons per image and timestep (a checkpoint's
    :func:`lif_neurons`; a NIR input's neuron and threshold nodes) run for ``timesteps`` compares at once:
    ``min(eval_images, NIR_CHECK_MAX_BATCH)``, halved while its estimated stage (:data:`BASE_BYTES` plus
    :data:`CHECK_BYTES` per neuron-step-image) exceeds ``available`` bytes (None: unknown, no halving); at
    least 1."""
    per_image = CHECK_BYTES * timesteps * neurons
    batch = max(1, min(eval_images, NIR_CHECK_MAX_BATCH))
    while batch > 1 and available is not None and BASE_BYTES + batch * per_image > available:
        batch //= 2
    return batch


def estimate_export_memory(timesteps: int, neurons: int, *, check_batch: int, calib_images: int,
                           parity_images: int) -> tuple[int, str]:
    """``(bytes, what sets them)``: the peak memory an export of a network of ``neurons`` spiking neurons run for
    ``timesteps`` is estimated to need with the NIR check comparing ``check_batch`` images at once, and a phrase
    naming the stage that sets it (see the module docstring)."""
    T, n = timesteps, neurons
    stream_steps = 2 * T  # the reset interval: the next power of two above T plus the pipeline latency
    stages = {
        f"the NIR check of {check_batch} images at once": CHECK_BYTES * check_batch * T,
        f"calibration on {calib_images} images": CALIBRATION_BYTES * calib_images * T,
        f"the parity run of {parity_images} images": STREAM_BYTES * parity_images * stream_steps,
    }
    what = max(stages, key=stages.get)
    return BASE_BYTES + stages[what] * n, f"{what} x {T} timesteps x {n:,} LIF neurons"


def available_memory() -> Optional[int]:
    """Bytes of memory this process can still get (see the module docstring), or None when unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_export_memory(timesteps: int, neurons: int, *, eval_images: int, calib_images: int,
                        parity_images: int) -> None:
    """Raise :class:`~xoresnet.errors.UsageError` (exit 2) when the export of a network of ``neurons`` spiking
    neurons run for ``timesteps`` is estimated to need more memory than the machine has available (with the NIR
    check's batch :func:`nir_check_batch` fitted to it), with both figures and the most timesteps that would fit."""
    have = available_memory()
    batch = nir_check_batch(timesteps, neurons, eval_images=eval_images, available=have)
    images = dict(check_batch=batch, calib_images=calib_images, parity_images=parity_images)
    need, what = estimate_export_memory(timesteps, neurons, **images)
    if have is None or need <= have:
        return
    per_step = estimate_export_memory(1, neurons, **images)[0] - BASE_BYTES
    fits = max(0, (have - BASE_BYTES) // per_step)
    raise UsageError(
        f"T={timesteps}: the export would need about {size_text(need)} of memory ({what}; an estimate), and "
        f"this machine has {size_text(have)} available (at most T={fits} fits with these images): lower --timesteps, "
        "--eval-samples, --calib-samples or --parity-samples")


#: Memory of one Lava actor: lava-nc forks one Python process per Lava process, each with its own
#: interpreter state and buffers. Measured: XOResNet-50 at width 1.0 (752 processes) held 22 of the
#: machine's 23.5 GiB during its run (2026-12-05, ``bench/parity_time.py``), about 30 MiB each.
LAVA_ACTOR_BYTES = 32 * 2**20
#: Lava processes one runtime may hold: lava-nc 0.10's compiler raised ``RecursionError`` on
#: XOResNet-101's 1,681 processes (XOResNet-50's 752 ran).
LAVA_MAX_PROCESSES = 800
#: A runtime always gets at least this many processes (one population with its synapses and probes).
LAVA_MIN_PROCESSES = 32


def lava_process_budget(available: Optional[int]) -> int:
    """The Lava processes one runtime may hold (:func:`deploy.lava_run.run_lava` runs a larger graph
    as a chain of segments): half of ``available`` bytes at :data:`LAVA_ACTOR_BYTES` each, within
    :data:`LAVA_MIN_PROCESSES` .. :data:`LAVA_MAX_PROCESSES` (the maximum when unknown)."""
    if available is None:
        return LAVA_MAX_PROCESSES
    return max(LAVA_MIN_PROCESSES, min(LAVA_MAX_PROCESSES, int(available // 2 // LAVA_ACTOR_BYTES)))
