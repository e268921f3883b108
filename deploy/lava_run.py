"""Run an integer graph in Lava safely: in a child process, with a timeout, and without leaking
processes or shared memory. One runner for both run configurations of
:data:`deploy.lava_worker.RUN_CONFIGS`: Lava's CPU simulator (``fixed_pt``, the parity check) and
Loihi 2 hardware (``hw``, ``Loihi2HwCfg``: :meth:`hw_targets.loihi2.Loihi2Target.dispatch`).

Why a child process: Lava hangs instead of raising on some errors (an exception inside a
model's ``run_spk`` deadlocks the runtime, and its ``stop()`` then waits forever; spec section
4.4), and a killed Lava leaks its shared-memory channel buffers. The child reports such an
exception within about a second, naming the Lava process (:mod:`deploy.lava_worker`), and
leaves; the timeout remains for runs that are slow or hang without an exception. :func:`run_lava` therefore runs the simulation in
``python -m deploy.lava_worker`` (:mod:`deploy.lava_worker`) started with
``start_new_session=True``: the child and everything it forks (Lava's actor processes, the
``SharedMemoryManager`` server, the watchdog monitors and ``multiprocessing``'s resource
trackers, none of which calls ``setsid``) share one session and process group whose id is the
child's pid, and a Ctrl-C on the terminal does not reach them directly.

How lava-nc 0.10.0 allocates shared memory (read in ``lava/magma/runtime/message_infrastructure/
{multiprocessing,shared_memory_manager}.py`` and ``lava/magma/compiler/channels/pypychannel.py``):
every channel (``PyPyChannel``) gets one buffer from
``multiprocessing.managers.SharedMemoryManager.SharedMemory(size)``, which creates a POSIX segment
``/dev/shm/psm_<8 hex>`` *in the calling process* (the runtime, i.e. our child) and asks the
manager server process to unlink it at ``shutdown()``. Python 3.11 also registers every segment
with the ``multiprocessing`` resource tracker (a helper process that ignores SIGINT/SIGTERM and
unlinks what is still registered when its last client dies). The channel semaphores are
``multiprocessing.Semaphore`` under the ``fork`` start method, which unlinks its ``sem.*`` name at
creation, so they never leak; the manager's sockets live in ``$TMPDIR/pymp-*``, which we point
into our temporary directory. A normal run (``runtime.stop()``) unlinks everything; a killed run
leaves the segments behind if the manager and the trackers die with it.

Cleanup policy (never touches other users' segments):

1. Before starting, snapshot the names in ``/dev/shm``.
2. The child logs the name of every segment it creates, right after creating it
   (``deploy.lava_worker.record_shared_memory``).
3. To stop a child (timeout, Ctrl-C, or stragglers after it exited), freeze its session with
   SIGSTOP, collect the ``/dev/shm`` files its processes have open or mapped (``/proc/PID/fd``,
   ``/proc/PID/maps``; this covers a segment created but not yet logged), then SIGTERM (+SIGCONT),
   a short grace, and SIGKILL, until no live process of the session is left.
4. Remove the segments that are in (logged | held by the session) and were *not* in the snapshot.
   A segment is only removed if our child created it or its processes held it; entries that
   existed before the run, or that other programs create meanwhile, are left alone (a snapshot
   diff alone would delete a concurrent Lava run's segments).

The temporary directory (graph, pixels, results, logs, ``$TMPDIR``) is removed in every case the parent
can run code, and by the next run when the parent was killed (:func:`remove_stale_scratch`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from calibration.integer_graph import IntegerGraph, save_integer_graph
from calibration.readout import readout_time_weights, scores
from deploy import lava_worker
from calibration.integer_graph import StreamWindows
from deploy.lava_graph import GraphSlice, lava_plan, plan_slices
from deploy.memory import available_memory, lava_process_budget
from xoresnet.errors import LavaRunError

SHM_DIR = Path("/dev/shm")
#: Most steps per ``run()`` call in the child (the extractors' channel depth).
DEFAULT_CHUNK = 64
#: Shared memory the extractors' channels to the host may take (one byte per neuron and slot with
#: our spike extractor): the chunk shrinks below :data:`DEFAULT_CHUNK` for networks so large.
EXTRACTOR_BYTES = 256 << 20
#: Seconds between SIGTERM and SIGKILL when stopping the child's session.
KILL_GRACE = 1.0
#: Seconds a finished child's helper processes get to exit on their own.
EXIT_GRACE = 3.0
#: The scratch folder of a run: ``$TMPDIR/xoresnet-lava-<parent pid>-<random>`` (:func:`remove_stale_scratch`).
SCRATCH_PREFIX = "xoresnet-lava-"
#: Environment of the child: one BLAS/OpenMP thread per process. Lava runs one OS process per
#: Lava process, all at once; multi-threaded BLAS in each of them oversubscribes the cores (a
#: float32 product of 64x2304 by 2304x256 took 118 ms with OpenBLAS's threads on 2 loaded cores, 2
#: ms with one).
CHILD_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class LavaRunResult(StreamWindows):
    """One Lava run over a single stream of ``samples`` samples.

    ``spikes[p]``: bool ``[S, *shape]`` (PyTorch layout) for stream steps 1..S;
    ``readout``: int64 ``[S, K]``, the summed readout synapse outputs per step (no bias);
    ``seconds``: wall time of the child process (start to exit, including Lava's startup);
    ``cleanup``: ``session`` (the child's pid = session id), ``processes_killed`` (processes of
    the session still alive when it was stopped; after a normal exit, helpers that lingered),
    ``segments_created``/``segments_logged`` (the shared-memory segments the child created) and
    ``segments_removed`` (those we had to unlink; empty when Lava cleaned up itself);
    ``phases``: seconds spent in the child per phase (``load``:
    imports and graph reading, ``build``: process objects, ``start``: compile, channels and one
    forked actor per Lava process, ``run``: the steps, ``stop``: runtime shutdown);
    ``run_config``: the key of :data:`deploy.lava_worker.RUN_CONFIGS` it ran with;
    ``process_models``: the process models that ran, ``{process class: {"model": dotted path,
    "origin": "xoresnet" (ours, :mod:`deploy.lava_models`) | "lava" (Intel's), "processes": n}}``
    (:func:`deploy.lava_worker.models_that_ran`; empty for a hardware run); ``cpu_seconds``: CPU
    seconds of Lava's actor processes per process class, of its runtime service and of the host side
    (:func:`deploy.lava_worker.cpu_by_class`); ``slices``: the Lava runtimes it took, one per slice
    of the graph (:func:`run_lava`): populations simulated and replayed, readout, processes, seconds
    (one entry for an unsliced run). ``seconds``, ``phases`` and ``cpu_seconds`` are summed over them.
    """

    spikes: dict[str, np.ndarray]
    readout: np.ndarray
    steps: int
    seconds: float
    samples: int
    reset_interval: int
    timesteps: int
    readout_latency: int
    readout_bias: np.ndarray
    cleanup: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    pixels: Optional[np.ndarray] = None  # the input stream [N, C, H, W] (for divergence reports)
    run_config: str = "fixed_pt"
    process_models: dict[str, dict[str, Any]] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    slices: list[dict[str, Any]] = field(default_factory=list)
    time_weights: Optional[np.ndarray] = None  # the readout rule's [T, K] (calibration.readout), None: a sum

    def predictions(self) -> np.ndarray:
        """``[N]``: the argmax of each sample's readout scores (``StreamResult.predictions()[0]``)."""
        return np.array([int(np.argmax(scores(self.logits(n), self.time_weights))) for n in range(self.samples)],
                        dtype=np.int64)


# ---------------------------------------------------------------------- processes and segments

def _shm_names() -> set[str]:
    try:
        return set(os.listdir(SHM_DIR))
    except OSError:
        return set()


def _proc_stat(pid: int) -> Optional[tuple[str, int, int]]:
    """``(state, pgid, sid)`` of ``pid`` or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[3])


def session_members(sid: int, *, include_zombies: bool = False) -> list[int]:
    """Pids of the processes in session ``sid`` (zombies excluded: they hold no resources)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st and st[2] == sid and (include_zombies or st[0] not in ("Z", "X")):
            out.append(int(entry))
    return out


def _held_segments(pids: list[int]) -> set[str]:
    """``/dev/shm`` entries that ``pids`` have open or mapped."""
    names: set[str] = set()
    prefix = str(SHM_DIR) + "/"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(prefix):
                    names.add(target[len(prefix):].split(" ")[0])
        except OSError:
            pass
        try:
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else ""
                if path.startswith(prefix):
                    names.add(path[len(prefix):].split(" ")[0])
        except OSError:
            pass
    return {n for n in names if n and "/" not in n}


def _signal_session(sid: int, sig: int) -> None:
    try:
        os.killpg(sid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in session_members(sid):  # in case a member changed its process group
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_session(sid: int, *, grace: Optional[float] = None) -> tuple[int, set[str]]:
    """Stop every process of session ``sid``: SIGSTOP, note the segments they hold, SIGTERM
    (+SIGCONT), ``grace`` seconds (default :data:`KILL_GRACE`), SIGKILL until none is left alive.
    ``grace <= 0`` skips SIGTERM. Returns (processes found, segments held)."""
    members = session_members(sid)
    if not members:
        return 0, set()
    _signal_session(sid, signal.SIGSTOP)
    held = _held_segments(session_members(sid))
    grace = KILL_GRACE if grace is None else grace
    if grace > 0:
        _signal_session(sid, signal.SIGTERM)
        _signal_session(sid, signal.SIGCONT)
        deadline = time.monotonic() + grace
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.05)
    deadline = time.monotonic() + 10.0
    while session_members(sid) and time.monotonic() < deadline:
        _signal_session(sid, signal.SIGKILL)
        time.sleep(0.05)
    return len(members), held


def _remove_segments(candidates: set[str], before: set[str]) -> list[str]:
    removed = []
    for name in sorted(candidates - before):
        try:
            os.unlink(SHM_DIR / name)
            removed.append(name)
        except FileNotFoundError:
            pass
        except OSError:
            pass
    return removed


# ---------------------------------------------------------------------- the run

def _last_error_line(work: Path) -> str:
    try:
        text = (work / lava_worker.ERROR).read_text().strip()
        if text:
            return text.splitlines()[-1]
    except OSError:
        pass
    try:
        lines = [ln.strip() for ln in (work / "stderr.log").read_text(errors="replace").splitlines()]
    except OSError:
        return "no error output"
    lines = [ln for ln in lines if ln and "resource_tracker" not in ln and not ln.startswith("warnings.warn")]
    return lines[-1] if lines else "no error output"


def _progress(work: Path) -> int:
    """Steps the child has finished (0 before the first chunk)."""
    try:
        return int((work / lava_worker.PROGRESS).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _report_progress(work: Path, shown: list, start: float) -> None:
    try:
        done, total = (int(x) for x in (work / lava_worker.PROGRESS).read_text().split())
    except (OSError, ValueError):
        return
    if shown and shown[-1] == done:
        return
    shown.append(done)
    end = "\n" if done >= total or not sys.stderr.isatty() else "\r"
    print(f"lava: step {done}/{total} ({time.monotonic() - start:.1f} s)", end=end, file=sys.stderr, flush=True)


def default_chunk(graph: IntegerGraph) -> int:
    """Steps per ``run()`` call: :data:`DEFAULT_CHUNK`, fewer when the extractors' slots (one byte
    per neuron) would exceed :data:`EXTRACTOR_BYTES`."""
    neurons = max(1, sum(p.size for p in graph.populations.values()))
    return int(min(DEFAULT_CHUNK, max(1, EXTRACTOR_BYTES // neurons)))


def run_lava(graph: IntegerGraph, pixels: np.ndarray, *, timeout: float, perturb: Optional[dict] = None,
             progress: bool = False, chunk: Optional[int] = None, validate: bool = True,
             run_config: str = "fixed_pt", models: str = "xoresnet",
             model_overrides: Optional[dict[str, str]] = None, reference: Optional[StreamWindows] = None,
             max_processes: Optional[int] = None) -> LavaRunResult:
    """Run ``graph`` in Lava on one stream of ``pixels [N, C, H, W]`` (integers), in a child
    process, for ``graph.stream_steps(N)`` steps.

    ``run_config``: ``"fixed_pt"`` (``Loihi2SimCfg(select_tag="fixed_pt")``, the CPU simulator) or
    ``"hw"`` (``Loihi2HwCfg``, Loihi 2 hardware through lava-loihi); see
    :data:`deploy.lava_worker.RUN_CONFIGS`. ``models``: the process models of a ``fixed_pt`` run
    (:data:`deploy.lava_graph.MODEL_SETS`: ``"xoresnet"``, ours where we have one, else Intel's;
    ``"lava"``, Intel's as lava-nc ships them), ``model_overrides``: ``{process class name:
    dotted path of a ProcessModel}`` on top (tests inject a failing model with it).
    ``timeout``: wall-clock seconds for the whole child (Lava's startup included); on expiry the
    child's session is killed and :class:`LavaRunError` raised. An exception inside any Lava
    process ends the run within about a second with :class:`LavaRunError` naming the process and
    the exception (:mod:`deploy.lava_worker`). ``perturb``: fault injection
    (``{"synapse", "index", "delta"}``, see :func:`deploy.lava_graph.build_lava_network`).
    ``chunk``: steps per ``run()`` call in the child (the extractors' depth; default
    :func:`default_chunk`). ``validate``: check the graph against Loihi's ranges first (an out-of-range delay would make
    Lava hang rather than fail); only tests turn it off.

    **Slices.** A ``fixed_pt`` graph of more Lava processes than one runtime holds (``max_processes``;
    default :func:`deploy.memory.lava_process_budget` of the memory available: lava-nc forks one
    Python process of about 30 MiB per Lava process) runs as a chain of slices
    (:func:`deploy.lava_graph.plan_slices`), one child each, in topological order: each simulates its
    populations and replays the populations it reads from the integer reference's values at the
    same steps (``reference``: the reference stream of the same ``pixels``, required then). If every
    slice equals the reference on its populations, so does the whole graph (by induction over the
    slices, each fed exactly what the previous ones computed); a divergence stays in the slice
    where it arises. ``LavaRunResult.slices`` lists them. Hardware runs are never sliced.
    """
    if not graph.scheduled:
        raise ValueError("run_lava needs a scheduled graph (calibration.schedule.schedule)")
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != tuple(graph.input_shape):
        raise ValueError(f"pixels must be [N, {', '.join(map(str, graph.input_shape))}], got {list(pixels.shape)}")
    if pixels.shape[0] < 1:
        raise ValueError("pixels must hold at least one sample")
    if not np.issubdtype(pixels.dtype, np.integer):
        if not np.all(pixels == np.round(pixels)):
            raise ValueError("pixels must be integers (0..input_levels)")
    pixels = pixels.astype(np.int64)
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"pixels must be in 0..255 (8-bit graded spikes), got {pixels.min()}..{pixels.max()}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if run_config not in lava_worker.RUN_CONFIGS:
        raise ValueError(f"unknown run configuration {run_config!r}; known: {', '.join(lava_worker.RUN_CONFIGS)}")
    what = lava_worker.RUN_CONFIGS[run_config][0]
    from deploy.lava_graph import model_table

    model_table(models, model_overrides)  # an unknown model set or process class fails here
    if validate:
        graph.validate()
    if perturb is not None and perturb.get("synapse") not in {s.name for s in graph.synapses}:
        raise ValueError(f"perturb: no synapse named {perturb.get('synapse')!r}")
    N = int(pixels.shape[0])
    S = graph.stream_steps(N)

    chunk = default_chunk(graph) if chunk is None else chunk
    budget = lava_process_budget(available_memory()) if max_processes is None else int(max_processes)
    slices = plan_slices(graph, budget) if run_config == "fixed_pt" else [GraphSlice.whole(graph)]
    if len(slices) > 1 and reference is None:
        raise ValueError(f"the graph needs {len(slices)} Lava runtimes of at most {budget} processes; running it in "
                         "slices needs the reference stream of the same pixels (reference=...)")
    deadline = time.monotonic() + timeout
    runs, described = [], []
    for k, piece in enumerate(slices):
        if time.monotonic() >= deadline:
            raise LavaRunError(f"{what} did not finish within {timeout:g} s ({k} of {len(slices)} slices done); "
                               "a longer stream needs a longer timeout.")
        sliced = len(slices) > 1
        replay = {name: np.asarray(reference.spikes[name])[:, 0] for name in piece.replayed(graph)} if sliced else None
        try:
            run = _run_child(graph, pixels, steps=S, chunk=chunk, perturb=perturb, progress=progress,
                             run_config=run_config, models=models, model_overrides=model_overrides, timeout=timeout,
                             deadline=deadline, what=what, graph_slice=piece if sliced else None, replay=replay)
        except LavaRunError as e:
            if sliced:
                e.args = (f"{e.args[0]} (slice {k + 1} of {len(slices)})",) + e.args[1:]
            raise
        runs.append(run)
        described.append({"populations": len(piece.populations), "replayed": len(piece.replayed(graph)),
                          "readout": piece.readout, "processes": len(lava_plan(graph, piece)[0]),
                          "seconds": round(run["seconds"], 2)})
    return LavaRunResult(spikes={k: v for run in runs for k, v in run["spikes"].items()},
                         readout=next(run["readout"] for run, piece in zip(runs, slices) if piece.readout)
                         if graph.readout else runs[-1]["readout"],
                         steps=S, seconds=sum(run["seconds"] for run in runs), samples=N,
                         reset_interval=graph.reset_interval, timesteps=graph.timesteps,
                         readout_latency=graph.readout_latency(),
                         readout_bias=np.asarray(graph.readout_bias, dtype=np.int64), cleanup=runs[-1]["cleanup"],
                         phases=_summed(run["phases"] for run in runs), pixels=pixels, run_config=run_config,
                         process_models=_merged_models(run["ran"] for run in runs),
                         cpu_seconds=_summed(run["cpu"] for run in runs), time_weights=readout_time_weights(graph),
                         slices=described)


def _summed(dicts) -> dict[str, float]:
    """Per key, the sum over ``dicts`` of numbers."""
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _merged_models(tables) -> dict[str, dict[str, Any]]:
    """The process models that ran in several runtimes: per process class, its model and origin and
    the processes summed."""
    out: dict[str, dict[str, Any]] = {}
    for table in tables:
        for cls, entry in table.items():
            if cls in out:
                out[cls] = {**out[cls], "processes": out[cls]["processes"] + entry["processes"]}
            else:
                out[cls] = dict(entry)
    return out


def _run_child(graph: IntegerGraph, pixels: np.ndarray, *, steps: int, chunk: int, perturb: Optional[dict],
               progress: bool, run_config: str, models: str, model_overrides: Optional[dict[str, str]],
               timeout: float, deadline: float, what: str, graph_slice: Optional[GraphSlice] = None,
               replay: Optional[dict[str, np.ndarray]] = None) -> dict[str, Any]:
    """One child (:mod:`deploy.lava_worker`) running ``graph`` (or its ``graph_slice``, replaying
    ``replay``) for ``steps`` steps until ``deadline`` (``time.monotonic()``; ``timeout``: the
    seconds the caller allowed the whole run, for the message): ``spikes``, ``readout``,
    ``phases``, ``ran``, ``cpu``, ``seconds``, ``cleanup`` (see :class:`LavaRunResult`). Raises
    :class:`LavaRunError`."""
    N = int(pixels.shape[0])
    S = steps
    remove_stale_scratch()
    work = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
    child: Optional[subprocess.Popen] = None
    before = _shm_names()
    cleanup: dict[str, Any] = {"session": None, "workdir": str(work), "processes_killed": 0, "segments_created": 0,
                               "segments_logged": [], "segments_removed": []}
    try:
        save_integer_graph(graph, work / "graph.h5")
        np.save(work / "pixels.npy", pixels)
        job = {"steps": S, "chunk": int(max(1, chunk)), "perturb": perturb, "parent_pid": os.getpid(),
               "run_config": run_config, "models": models, "model_overrides": model_overrides, "graph_slice": None}
        if graph_slice is not None:
            job["graph_slice"] = {"populations": sorted(graph_slice.populations), "readout": graph_slice.readout}
            names = list(replay or {})
            np.savez(work / lava_worker.REPLAY, names=np.array(json.dumps(names)),
                     **{f"replay_{i}": replay[n] for i, n in enumerate(names)})
        (work / "job.json").write_text(json.dumps(job))
        (work / "tmp").mkdir()
        env = dict(os.environ)
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["TMPDIR"] = str(work / "tmp")  # multiprocessing's pymp-* socket dirs land here
        env.update(CHILD_THREADS)
        env.setdefault("PYTHONUNBUFFERED", "1")
        start = time.monotonic()
        with open(work / "stdout.log", "wb") as out_f, open(work / "stderr.log", "wb") as err_f:
            child = subprocess.Popen([sys.executable, "-m", "deploy.lava_worker", str(work)], cwd=work, env=env,
                                     stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f, start_new_session=True)
        cleanup["session"] = child.pid
        shown: list[int] = []
        try:
            while True:
                try:
                    rc = child.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if progress:
                    _report_progress(work, shown, start)
                if time.monotonic() > deadline:
                    raise TimeoutError
        except TimeoutError:
            killed, held = stop_session(child.pid)
            child.wait()
            cleanup.update(_cleanup_segments(work, held, before), processes_killed=killed)
            done = _progress(work)
            err = LavaRunError(
                f"{what} did not finish within {timeout:g} s ({done} of {S} steps done for {N} samples; no Lava "
                f"process reported an error); it was stopped and cleaned up. A longer stream needs a longer "
                f"timeout.")
            err.cleanup = cleanup
            raise err from None
        seconds = time.monotonic() - start
        # The child is gone; its helpers (resource trackers, the manager) exit on their own shortly.
        deadline = time.monotonic() + EXIT_GRACE
        while session_members(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        killed, held = stop_session(child.pid)
        cleanup.update(_cleanup_segments(work, held, before), processes_killed=killed)
        if progress:
            _report_progress(work, shown, start)
        if rc != 0:
            err = LavaRunError(f"{what} failed (exit code {rc}): {_last_error_line(work)}")
            err.cleanup = cleanup
            raise err
        try:
            with np.load(work / lava_worker.RESULT) as z:
                names = json.loads(str(z["names"]))
                spikes = {name: z[f"spike_{i}"] for i, name in enumerate(names)}
                readout = z["readout"].astype(np.int64)
                phases = json.loads(str(z["phases"])) if "phases" in z else {}
                ran = json.loads(str(z["models"])) if "models" in z else {}
                cpu = json.loads(str(z["cpu"])) if "cpu" in z else {}
        except (OSError, KeyError, ValueError) as e:
            raise LavaRunError(f"{what} exited without a readable result ({e})") from None
    except BaseException:
        # Ctrl-C (KeyboardInterrupt) or any other failure in the parent: the child must not outlive us.
        if child is not None and (child.poll() is None or session_members(child.pid)):
            killed, held = stop_session(child.pid)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            cleanup.update(_cleanup_segments(work, held, before), processes_killed=killed)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"spikes": spikes, "readout": readout, "phases": phases, "ran": ran, "cpu": cpu, "seconds": seconds,
            "cleanup": cleanup}


def remove_stale_scratch() -> list[str]:
    """Remove the scratch folders (``$TMPDIR/xoresnet-lava-PID-*``, holding a ``job.json``) of dead parents.

    The folder dies with its parent: :func:`run_lava` removes it in every case it can run code (a signal
    is an exception, see :mod:`xoresnet.interrupts`), the child's watchdog when the parent disappears during
    the run; a parent killed (SIGKILL) after its child exited leaves it, and the next run removes it here.
    Returns the names removed."""
    removed = []
    root = Path(tempfile.gettempdir())
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(SCRATCH_PREFIX):].split("-")[0]
        if not (entry.name.startswith(SCRATCH_PREFIX) and pid.isdigit() and entry.is_dir(follow_symlinks=False)):
            continue
        try:
            os.kill(int(pid), 0)
            continue  # the parent lives
        except ProcessLookupError:
            pass
        except OSError:
            continue
        if (Path(entry.path) / "job.json").is_file():
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _cleanup_segments(work: Path, held: set[str], before: set[str]) -> dict[str, Any]:
    logged = set(lava_worker.logged_segments(work / lava_worker.SHM_LOG))
    removed = _remove_segments(logged | held, before)
    return {"segments_created": len(logged), "segments_logged": sorted(logged), "segments_removed": removed}
