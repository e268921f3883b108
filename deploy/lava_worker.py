"""The child process of :func:`deploy.lava_run.run_lava`: runs one Lava simulation, nothing else.

``python -m deploy.lava_worker WORKDIR`` reads from ``WORKDIR``:

* ``graph.h5``: the integer graph (:func:`calibration.integer_graph.save_integer_graph`);
* ``pixels.npy``: the input stream ``[N, C, H, W]`` (integers);
* ``job.json``: ``{"steps": S, "chunk": int, "perturb": dict | null, "parent_pid": int,
  "run_config": "fixed_pt" | "hw", "models": "xoresnet" | "lava", "model_overrides": dict | null,
  "graph_slice": {"populations": [names], "readout": bool} | null}``
  (``run_config``: a key of :data:`RUN_CONFIGS`; ``models``, ``model_overrides``: the process
  models of the ``fixed_pt`` run, :func:`deploy.lava_graph.model_table`; ``graph_slice``: run
  only these populations, :class:`deploy.lava_graph.GraphSlice`);
* ``replay.npz`` (with a graph slice): ``names`` (JSON list) and ``replay_<i>``, the reference's
  values ``[S, *shape]`` of each population the slice reads but does not simulate;

builds the Lava network (:func:`deploy.lava_graph.build_lava_network`), runs ``S`` steps with the
run configuration (``fixed_pt``: Lava's CPU simulator ``Loihi2SimCfg(select_tag="fixed_pt")``
with every process pinned to its model; ``hw``: Loihi 2 hardware, ``Loihi2HwCfg``, which needs
lava-loihi) in chunks of ``chunk`` steps (draining the extractors after each chunk), stops the
runtime, and writes:

* ``result.npz`` (atomically, via a temporary name): ``names`` (JSON list of population names),
  ``spike_<i>`` bool ``[S, *shape]`` in PyTorch layout per population, ``readout`` int64 ``[S, K]``,
  ``phases`` (JSON: seconds per phase, see :class:`deploy.lava_run.LavaRunResult`), ``models``
  (JSON: the process models that ran, :func:`models_that_ran`), ``cpu`` (JSON: CPU seconds per
  process class, :func:`cpu_by_class`);
* ``progress``: ``"<done> <S>"``, rewritten after every chunk;
* ``shm.log``: the name of every POSIX shared-memory segment this process (or a process forked
  from it) creates, one per line, written right after creation; the parent removes the ones a
  killed run leaves behind (see :mod:`deploy.lava_run`);
* ``error.txt``: one line, ``"<what failed>: <ExceptionType>: <message>"``, when it fails (exit
  code 1).

Failures never hang (spec section 4.4: an exception inside a process model deadlocks Lava's
runtime, and ``runtime.stop()`` then waits forever). An :class:`ActorWatch` thread polls Lava's
actor processes while the runtime starts and runs: the first exception one of them reports (Lava
sends it through the actor's pipe before the actor exits), or an actor that dies without one,
ends the run at once with an error naming the Lava process, its class and model, and the
exception. A failure in this process itself is reported the same way. Either way the worker
never calls ``runtime.stop()`` on a failed runtime: it kills its actors, shuts down the
shared-memory manager (which unlinks the segments) and leaves with ``os._exit`` (no exit handler
may join a hung actor); the parent then removes whatever is left (:mod:`deploy.lava_run`). A
``stop()`` after a successful run is bounded by :data:`STOP_TIMEOUT`.

A watchdog thread kills this process group (after removing the segments it logged and the work
directory) if the parent disappears, so a hung Lava never outlives the command that started it.

Importing this module has no side effects; everything happens in :func:`main`.
"""

from __future__ import annotations

import gc
import io
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from xoresnet.files import atomic_write

SHM_LOG = "shm.log"
RESULT = "result.npz"
REPLAY = "replay.npz"
PROGRESS = "progress"
ERROR = "error.txt"
#: Run configurations: name -> (what runs, for messages; the Lava run-config class).
RUN_CONFIGS = {"fixed_pt": ("the Lava simulation", "Loihi2SimCfg(select_tag='fixed_pt')"),
               "hw": ("the Loihi 2 run", "Loihi2HwCfg")}
#: Slots of each channel between two Lava processes (lava's compiler default: 64). Lava's Loihi
#: protocol runs in lockstep (the runtime service starts step t + 1 only when every process has
#: finished step t, receives included), so a channel never holds more than one message; each slot
#: costs the port's full array in shared memory (64 slots: 2.4 GB for XOResNet-34 at width 1.0,
#: more than the machine's memory for XOResNet-101). The extractors' channels to the host keep
#: their own depth (``buffer_size``, the chunk).
CHANNEL_SLOTS = 1
#: Seconds between two looks at Lava's actor processes.
WATCH_POLL = 0.05
#: Seconds the main thread waits for the actor watch to name the process behind a runtime error.
BLAME_WAIT = 2.0
#: Seconds ``runtime.stop()`` may take after a successful run before it counts as hung.
STOP_TIMEOUT = 120.0
#: The worker's exit code when it fails (the parent raises LavaRunError with error.txt's line).
EXIT_FAILED = 1


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


def make_run_config(net, name: str, models: str = "xoresnet", overrides: Optional[dict] = None):
    """The Lava run configuration called ``name`` (:data:`RUN_CONFIGS`) for the network ``net``:
    ``fixed_pt`` pins every process to its model in the model set ``models`` with ``overrides``
    (``LavaNetwork.run_config``); ``hw`` is ``Loihi2HwCfg()``, which selects the neuro-core models
    of lava-loihi."""
    if name == "fixed_pt":
        return net.run_config(models, overrides)
    if name == "hw":
        from lava.magma.core.run_configs import Loihi2HwCfg

        return Loihi2HwCfg()
    raise ValueError(f"unknown run configuration {name!r}; known: {', '.join(RUN_CONFIGS)}")


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _qualname(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _py_processes(runtime) -> list:
    """``[(process, builder)]`` of the runtime's Python processes, in the order Lava starts their
    actors (``Runtime._build_processes``); the runtime services' actors come after them."""
    from lava.magma.compiler.builders.py_builder import PyProcessBuilder

    return [(p, b) for p, b in runtime._executable.proc_builders.items() if isinstance(b, PyProcessBuilder)]


def models_that_ran(runtime) -> dict:
    """``{process class: {"model": dotted path, "origin": "xoresnet" | "lava" | "other", "processes": n}}``
    for the Python processes of a started runtime (what Lava's compiler actually chose)."""
    from deploy.lava_graph import model_origin

    out: dict = {}
    for proc, builder in _py_processes(runtime):
        path = _qualname(builder.proc_model)
        entry = out.setdefault(type(proc).__name__, {"model": path, "origin": model_origin(path), "processes": 0})
        if entry["model"] != path:  # instances of one class on different models: list them all
            entry["model"] = ", ".join(sorted(set(entry["model"].split(", ")) | {path}))
            entry["origin"] = "mixed"
        entry["processes"] += 1
    return dict(sorted(out.items()))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0.0 if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_class(runtime) -> dict:
    """CPU seconds so far of the runtime's actors, summed per process class, plus ``"runtime
    service"`` (Lava's step coordinator) and ``"host"`` (this process: building, compiling, reading
    the extractors). Read from ``/proc`` while the actors are alive (before ``stop()``)."""
    procs = _py_processes(runtime)
    out: dict = {}
    for i, actor in enumerate(list(runtime._messaging_infrastructure.actors)):
        key = type(procs[i][0]).__name__ if i < len(procs) else "runtime service"
        out[key] = out.get(key, 0.0) + _cpu_seconds(actor.pid)
    out["host"] = _cpu_seconds(os.getpid())
    return {k: round(v, 2) for k, v in out.items()}


def _informational(fn, runtime) -> dict:
    """``fn(runtime)``, or ``{}`` if the runtime does not have what it reads (a record, never a
    reason for a run to fail)."""
    try:
        return fn(runtime)
    except (AttributeError, KeyError, IndexError, OSError, TypeError):
        return {}


class LavaProcessFailure(Exception):
    """A Lava actor process raised or died; the message names the process (one line)."""


class ActorWatch(threading.Thread):
    """Polls the actor processes of ``root``'s Lava runtime every :data:`WATCH_POLL` seconds and
    calls ``on_failure(message)`` (once) when one reports an exception or dies without one.

    Lava runs every process model in a forked actor (``SystemProcess``) that sends ``None``
    (clean exit after STOP) or ``(exception, traceback)`` through its pipe before it exits. The
    watch starts before the runtime exists (it waits for ``root._runtime`` and follows its actor
    list as Lava builds it) and must be stopped (:meth:`stop`) before ``runtime.stop()``, which
    closes those pipes.
    """

    def __init__(self, root, on_failure: Callable[[str], None]):
        super().__init__(name="xoresnet-actor-watch", daemon=True)
        self.root = root
        self.on_failure = on_failure
        self.failures: list[str] = []
        self._stop_event = threading.Event()
        self._labels: Optional[list[str]] = None
        self._seen: set[int] = set()  # actors whose end was seen

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()

    def _label(self, runtime, index: int) -> str:
        if self._labels is None:
            self._labels = [f"Lava process {p.name!r} ({type(p).__name__}, model {_qualname(b.proc_model)})"
                           for p, b in _py_processes(runtime)]
        if index < len(self._labels):
            return self._labels[index]
        return "Lava's runtime service"

    def check(self) -> list[str]:
        """Look at every actor once; the failures found (also appended to :attr:`failures`)."""
        runtime = getattr(self.root, "_runtime", None)
        infra = getattr(runtime, "_messaging_infrastructure", None) if runtime is not None else None
        if infra is None:
            return []
        found = []
        for i, actor in enumerate(list(infra.actors)):
            if i in self._seen:
                continue
            try:
                if getattr(actor, "_is_done", False):  # Lava joined it and kept its report
                    code, report = None, actor._exception
                else:
                    code = actor.exitcode  # first: an actor that has exited has already sent its report
                    report = actor._pconn.recv() if actor._pconn.poll() else None
            except (EOFError, OSError, ValueError):  # a pipe or process Lava closed meanwhile
                continue
            if report is not None or code is not None:
                self._seen.add(i)
            if report:  # (exception, traceback)
                exc = report[0]
                found.append(f"{self._label(runtime, i)} raised {type(exc).__name__}: {one_line(exc) or repr(exc)}")
            elif code is not None and code != 0:
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                found.append(f"{self._label(runtime, i)} died ({how}) without reporting an exception")
        self.failures += found
        return found

    def describe(self) -> str:
        first, more = self.failures[0], len(self.failures) - 1
        return first + (f" (and {more} more Lava process{'es' if more > 1 else ''} failed)" if more else "")

    def run(self) -> None:
        while not self._stop_event.is_set():
            if self.check():
                self._stop_event.wait(0.2)  # let the other failures of the same step arrive
                self.check()
                self.on_failure(self.describe())
                return
            self._stop_event.wait(WATCH_POLL)


def abandon_runtime(root) -> None:
    """Free what a failed Lava runtime holds without ``runtime.stop()`` (which may hang): SIGKILL
    its actor processes and shut down its shared-memory manager (which unlinks the segments)."""
    runtime = getattr(root, "_runtime", None)
    infra = getattr(runtime, "_messaging_infrastructure", None) if runtime is not None else None
    if infra is None:
        return
    for actor in list(infra.actors):
        try:
            if actor.pid and actor.exitcode is None:
                os.kill(actor.pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
    try:
        if infra.smm is not None:
            infra.smm.shutdown()
    except Exception:  # noqa: BLE001 - best effort: the parent removes what is left
        pass
    if runtime is not None:
        runtime._is_started = False  # Runtime.__del__ must not call stop()


def simulate(graph, pixels, *, steps: int, chunk: int, perturb: Optional[dict] = None,
             on_progress: Optional[Callable[[int, int], None]] = None, phases: Optional[dict] = None,
             run_config: str = "fixed_pt", models: str = "xoresnet", model_overrides: Optional[dict] = None,
             on_failure: Optional[Callable[[str, Any], None]] = None, ran: Optional[dict] = None,
             cpu: Optional[dict] = None, graph_slice=None, replay: Optional[dict] = None):
    """Run the Lava network (of ``graph_slice``, the populations it reads replayed from ``replay``:
    :class:`deploy.lava_graph.GraphSlice`; default the whole graph) for ``steps`` steps with the run
    configuration ``run_config`` (:func:`make_run_config`): ``(spikes {p: bool [S, *shape]}, readout [S, K])``.

    ``graph``'s synapse weights are released once the Lava processes are built (:func:`release_memory`).
    ``phases`` (if given) receives the seconds spent building, starting, running and stopping;
    ``ran`` (if given) the process models that ran (:func:`models_that_ran`), ``cpu`` (if given) the
    CPU seconds per process class (:func:`cpu_by_class`, read before ``stop()``). When a Lava actor
    fails, or ``runtime.stop()`` exceeds :data:`STOP_TIMEOUT`, ``on_failure(message, root)`` is
    called from another thread (it must abandon the runtime of ``root``, :func:`abandon_runtime`, and
    end the process: the main thread may be blocked in Lava forever); without ``on_failure`` the
    failure is raised as :class:`LavaProcessFailure` once the main thread returns from Lava (which
    it may never do).
    Any other failure of the runtime is raised after the watch had :data:`BLAME_WAIT` seconds to
    name the Lava process behind it; the runtime is then abandoned, never stopped."""
    import numpy as np

    from deploy.lava_graph import build_lava_network

    phases = {} if phases is None else phases
    t = time.monotonic()
    net = build_lava_network(graph, pixels, perturb=perturb, steps=steps, buffer_size=min(chunk, steps),
                             graph_slice=graph_slice, replay=replay)
    del replay  # the RingBuffers hold their copies
    from lava.magma.core.run_conditions import RunSteps

    release_memory(graph)
    phases["build"] = time.monotonic() - t
    t = time.monotonic()

    cfg = make_run_config(net, run_config, models, model_overrides)
    parts_s: dict[str, list] = {name: [] for name in net.probes}
    parts_r = []
    done = 0
    report = (lambda message: on_failure(message, net.root)) if on_failure else (lambda message: None)
    watch = ActorWatch(net.root, report)
    watch.start()
    try:
        gc.freeze()  # the actors fork from here: their garbage collector must not touch (copy) our objects
        net.root.create_runtime(run_cfg=cfg, compile_config={"pypy_channel_size": CHANNEL_SLOTS})
        # (compile, allocate the channels, fork one actor per process)
        phases["start"] = time.monotonic() - t
        if ran is not None:
            ran.update(_informational(models_that_ran, net.root._runtime))
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
        if cpu is not None:
            cpu.update(_informational(cpu_by_class, net.root._runtime))
        watch.stop()
        if watch.failures:
            raise LavaProcessFailure(watch.describe())
    except BaseException as e:
        watch.join(BLAME_WAIT)  # the watch names the failed actor (and, with on_failure, ends the process)
        watch.stop()
        abandon_runtime(net.root)
        if watch.failures and not isinstance(e, LavaProcessFailure):
            raise LavaProcessFailure(watch.describe()) from e
        raise
    t = time.monotonic()
    guard = threading.Timer(STOP_TIMEOUT, report,
                            args=(f"runtime.stop() did not return within {STOP_TIMEOUT:g} s after a successful run",))
    guard.daemon = True
    guard.start()
    net.root.stop()
    guard.cancel()
    phases["stop"] = time.monotonic() - t
    spikes = {name: np.concatenate(v) for name, v in parts_s.items()}
    return spikes, np.concatenate(parts_r)


def release_memory(graph) -> None:
    """Drop ``graph``'s synapse weights (the Lava processes hold their own copies) and return freed
    memory to the OS. Every actor is forked from this process: ``fork()`` copies the page tables
    of all its memory (75 ms per actor at 1.4 GB), and each actor writes to some of those pages."""
    for syn in graph.synapses:
        syn.weight = None
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory stays with the allocator
        pass


def _hard_exit(code: int) -> None:
    """Leave now: no exit handler runs (``multiprocessing`` would join Lava's actors, and a Lava
    ``Runtime``'s ``__del__`` calls ``stop()``, either of which may hang)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


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
        atomic_write(work / PROGRESS, f"{done} {total}\n")

    failed = threading.Lock()

    def fail(message: str, root=None) -> None:
        """Report ``message`` (one line) as the run's error, abandon ``root``'s Lava runtime and
        leave at once (from any thread; the first caller wins, the others wait for the exit)."""
        if not failed.acquire(blocking=False):
            while True:
                time.sleep(1)
        (work / ERROR).write_text(one_line(message, 2000) + "\n")
        print(f"lava worker: {message}", file=sys.stderr, flush=True)
        if root is not None:
            abandon_runtime(root)
        _hard_exit(EXIT_FAILED)

    try:
        t = time.monotonic()
        import numpy as np  # the worker never imports torch: it would double the cost of Lava's fork()s

        from calibration.integer_graph import load_integer_graph
        from deploy.lava_graph import GraphSlice

        graph = load_integer_graph(work / "graph.h5")
        pixels = np.load(work / "pixels.npy")
        graph_slice, replay = None, None
        if job.get("graph_slice") is not None:
            graph_slice = GraphSlice(frozenset(job["graph_slice"]["populations"]), bool(job["graph_slice"]["readout"]))
            with np.load(work / REPLAY) as z:
                replay = {name: z[f"replay_{i}"] for i, name in enumerate(json.loads(str(z["names"])))}
        phases = {"load": time.monotonic() - t}
        ran: dict = {}
        cpu: dict = {}
        spikes, readout = simulate(graph, pixels, steps=int(job["steps"]), chunk=int(job["chunk"]),
                                   perturb=job.get("perturb"), on_progress=progress, phases=phases,
                                   run_config=job["run_config"], models=job.get("models", "xoresnet"),
                                   model_overrides=job.get("model_overrides"), on_failure=fail, ran=ran,
                                   cpu=cpu, graph_slice=graph_slice, replay=replay)
        names = list(spikes)
        arrays = {f"spike_{i}": spikes[n] for i, n in enumerate(names)}
        result = io.BytesIO()
        np.savez(result, names=np.array(json.dumps(names)), readout=readout, phases=np.array(json.dumps(phases)),
                 models=np.array(json.dumps(ran)), cpu=np.array(json.dumps(cpu)), **arrays)
        atomic_write(work / RESULT, result.getvalue())
        return 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises LavaRunError
        traceback.print_exc()
        if isinstance(e, LavaProcessFailure):
            fail(str(e))
        fail(f"{type(e).__name__}: {one_line(e) or repr(e)}")
        return EXIT_FAILED  # not reached: fail() leaves the process


if __name__ == "__main__":
    sys.exit(main())
