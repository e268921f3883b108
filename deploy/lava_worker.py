"""The child process of :func:`deploy.lava_run.run_lava`: runs one Lava simulation, nothing else.

``python -m deploy.lava_worker WORKDIR`` reads from ``WORKDIR``:

* ``graph.h5``: the integer graph (:func:`calibration.integer_graph.save_integer_graph`);
* ``pixels.npy``: the input stream ``[N, C, H, W]`` (integers);
* ``job.json``: ``{"steps": S, "chunk": int, "perturb": dict | null, "parent_pid": int,
  "run_config": "fixed_pt" | "hw"}`` (a key of :data:`RUN_CONFIGS`);

builds the Lava network (:func:`deploy.lava_graph.build_lava_network`), runs ``S`` steps with the
run configuration (``fixed_pt``: Lava's CPU simulator ``Loihi2SimCfg(select_tag="fixed_pt")``;
``hw``: Loihi 2 hardware, ``Loihi2HwCfg``, which needs lava-loihi) in chunks of ``chunk`` steps
(draining the extractors after each chunk), always stops the runtime (``try/finally``), and writes:

* ``result.npz`` (atomically, via a temporary name): ``names`` (JSON list of population names),
  ``spike_<i>`` bool ``[S, *shape]`` in PyTorch layout per population, ``readout`` int64 ``[S, K]``,
  ``phases`` (JSON: seconds per phase, see :class:`deploy.lava_run.LavaRunResult`);
* ``progress``: ``"<done> <S>"``, rewritten after every chunk;
* ``shm.log``: the name of every POSIX shared-memory segment this process (or a process forked
  from it) creates, one per line, written right after creation; the parent removes the ones a
  killed run leaves behind (see :mod:`deploy.lava_run`);
* ``error.txt``: ``"<ExceptionType>: <message>"`` when it fails (exit code 1).

A watchdog thread kills this process group (after removing the segments it logged and the work
directory) if the parent disappears, so a hung Lava never outlives the command that started it.

Importing this module has no side effects; everything happens in :func:`main`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

SHM_LOG = "shm.log"
RESULT = "result.npz"
PROGRESS = "progress"
ERROR = "error.txt"
#: Run configurations: name -> (what runs, for messages; the Lava run-config class).
RUN_CONFIGS = {"fixed_pt": ("the Lava simulation", "Loihi2SimCfg(select_tag='fixed_pt')"),
               "hw": ("the Loihi 2 run", "Loihi2HwCfg")}


def record_shared_memory(log_path: Path) -> None:
    """Log the name of every ``multiprocessing.shared_memory.SharedMemory`` created from now on.

    Lava's message infrastructure creates its channel buffers with
    ``multiprocessing.managers.SharedMemoryManager.SharedMemory``, which calls
    ``shared_memory.SharedMemory(None, create=True, size)`` in the calling process. The wrapper is
    installed in this process only (forked Lava actors inherit it); the log is opened with
    ``O_APPEND`` so concurrent writers do not interleave partial lines.
    """
    from multiprocessing import shared_memory

    cls = shared_memory.SharedMemory
    if getattr(cls.__init__, "_xoresnet_recorder", False):
        return
    original = cls.__init__
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def __init__(self, name=None, create=False, size=0):  # noqa: N807 - wraps a dunder
        original(self, name, create, size)
        if create:
            os.write(fd, (self.name.lstrip("/") + "\n").encode())

    __init__._xoresnet_recorder = True
    cls.__init__ = __init__


def logged_segments(log_path: Path) -> list[str]:
    try:
        return [line for line in log_path.read_text().splitlines() if line and "/" not in line]
    except OSError:
        return []


def _watch_parent(parent_pid: int, work: Path) -> None:
    """If the parent dies (its ``run_lava`` can no longer clean up), remove the segments we
    created and the work directory, and SIGKILL our whole process group (us included)."""

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                for name in logged_segments(work / SHM_LOG):
                    try:
                        os.unlink(os.path.join("/dev/shm", name))
                    except OSError:
                        pass
                shutil.rmtree(work, ignore_errors=True)
                os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="xoresnet-parent-watch", daemon=True).start()


def make_run_config(net, name: str):
    """The Lava run configuration called ``name`` (:data:`RUN_CONFIGS`) for the network ``net``:
    ``fixed_pt`` pins every process to its fixed-point model (``LavaNetwork.run_config``); ``hw``
    is ``Loihi2HwCfg()``, which selects the neuro-core models of lava-loihi."""
    if name == "fixed_pt":
        return net.run_config()
    if name == "hw":
        from lava.magma.core.run_configs import Loihi2HwCfg

        return Loihi2HwCfg()
    raise ValueError(f"unknown run configuration {name!r}; known: {', '.join(RUN_CONFIGS)}")


def simulate(graph, pixels, *, steps: int, chunk: int, perturb: Optional[dict] = None,
             on_progress: Optional[Callable[[int, int], None]] = None, phases: Optional[dict] = None,
             run_config: str = "fixed_pt"):
    """Run the Lava network for ``steps`` steps with the run configuration ``run_config``
    (:func:`make_run_config`): ``(spikes {p: bool [S, *shape]}, readout [S, K])``.

    ``phases`` (if given) receives the seconds spent building, starting, running and stopping."""
    import numpy as np

    from deploy.lava_graph import build_lava_network

    phases = {} if phases is None else phases
    t = time.monotonic()
    net = build_lava_network(graph, pixels, perturb=perturb, steps=steps, buffer_size=min(chunk, steps))
    from lava.magma.core.run_conditions import RunSteps

    phases["build"] = time.monotonic() - t
    t = time.monotonic()

    cfg = make_run_config(net, run_config)
    parts_s: dict[str, list] = {name: [] for name in net.probes}
    parts_r = []
    done = 0
    try:
        net.root.create_runtime(run_cfg=cfg)  # compile, allocate channels, fork one actor per process
        phases["start"] = time.monotonic() - t
        t = time.monotonic()
        while done < steps:
            n = min(chunk, steps - done)
            net.root.run(condition=RunSteps(num_steps=n, blocking=True), run_cfg=cfg)
            s, r = net.receive(n)
            for name, arr in s.items():
                parts_s[name].append(arr)
            parts_r.append(r)
            done += n
            if on_progress:
                on_progress(done, steps)
        phases["run"] = time.monotonic() - t
    finally:
        t = time.monotonic()
        net.root.stop()
        phases["stop"] = time.monotonic() - t
    spikes = {name: np.concatenate(v) for name, v in parts_s.items()}
    return spikes, np.concatenate(parts_r)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m deploy.lava_worker WORKDIR", file=sys.stderr)
        return 2
    work = Path(argv[0])
    job = json.loads((work / "job.json").read_text())
    record_shared_memory(work / SHM_LOG)
    if job.get("parent_pid"):
        _watch_parent(int(job["parent_pid"]), work)

    def progress(done: int, total: int) -> None:
        tmp = work / (PROGRESS + ".tmp")
        tmp.write_text(f"{done} {total}\n")
        os.replace(tmp, work / PROGRESS)

    try:
        t = time.monotonic()
        import numpy as np  # the worker never imports torch: it would double the cost of Lava's fork()s

        from calibration.integer_graph import load_integer_graph

        graph = load_integer_graph(work / "graph.h5")
        pixels = np.load(work / "pixels.npy")
        phases = {"load": time.monotonic() - t}
        spikes, readout = simulate(graph, pixels, steps=int(job["steps"]), chunk=int(job["chunk"]),
                                   perturb=job.get("perturb"), on_progress=progress, phases=phases,
                                   run_config=job["run_config"])
        names = list(spikes)
        arrays = {f"spike_{i}": spikes[n] for i, n in enumerate(names)}
        tmp = work / "result.tmp.npz"
        np.savez(tmp, names=np.array(json.dumps(names)), readout=readout, phases=np.array(json.dumps(phases)),
                 **arrays)
        os.replace(tmp, work / RESULT)
        return 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises LavaRunError
        msg = " ".join(str(e).split()) or repr(e)
        (work / ERROR).write_text(f"{type(e).__name__}: {msg[:2000]}\n")
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
