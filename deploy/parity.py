"""The bit-exact parity gate: Lava must reproduce the integer reference exactly, or nothing ships.

:func:`check_parity` compares a Lava run (:class:`deploy.lava_run.LavaRunResult`) with the
reference's Loihi-timing stream (:meth:`calibration.reference.ReferenceSimulator.run_stream`, one
stream, ``B = 1``) on every population, every neuron and every stream step (which covers every
sample and timestep, and the steps in between), plus the readout values and the predicted classes.
A population cut into several Lava processes (:mod:`calibration.core_plan`) is compared whole (the
Lava run puts its parts back together); a fan-in split's partial sums (``partial_sum``
populations, Lava ``GradedVec``) are compared by their integer payloads, so a fault in one part of
a split is found at that part before it reaches the layer.

A verdict on a network that never spikes proves little, so the report also says what the
comparison covered (:func:`parity_coverage`, from the reference's spikes in each sample's window:
equal to Lava's when parity holds): how many populations spiked, how many spikes were compared,
the fraction of neurons that spiked at least once, and which populations stayed silent in every
parity image (the verdict line warns about those).

On failure, :attr:`ParityReport.first_divergence` localizes the problem: the earliest stream step
with any mismatch, at the earliest population (topological order) that differs at that step, the
first differing neuron there, its sample and timestep (from the population's latency and the
reset interval ``P``), and the "recent inputs" of that neuron: for every incoming synapse, the
source's spikes (or pixels) at the neuron's receptive field over the steps just before, from
Lava and from the reference, so one can see whether the inputs already differed (then the bug is
upstream or in the synapse) or not (then it is in the neuron).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from calibration.integer_graph import INPUT, READOUT, IntegerGraph, Synapse
from xoresnet.errors import ParityError

from .lava_worker import RUN_CONFIGS

#: Source steps shown per incoming synapse in ``recent_inputs``.
RECENT_STEPS = 4
#: At most this many differing source elements are listed for a dense synapse.
MAX_LISTED = 20
#: At most this many silent populations are named on the verdict line (all are in the report).
MAX_SILENT_NAMED = 5


@dataclass
class ParityReport:
    passed: bool
    samples: int
    steps: int
    populations: int
    neuron_steps_compared: int
    mismatching_neuron_steps: int
    readout_equal: bool
    predictions: dict[str, list[int]]
    mismatches_by_population: dict[str, int] = field(default_factory=dict)
    readout_mismatching_steps: int = 0
    problems: list[str] = field(default_factory=list)
    first_divergence: Optional[dict[str, Any]] = None
    coverage: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions_equal(self) -> bool:
        return self.predictions.get("lava") == self.predictions.get("reference")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["predictions_equal"] = self.predictions_equal
        return d

    def summary(self) -> str:
        """One line for the CLI."""
        if self.passed:
            return (f"parity passed: Lava equals the integer reference bit for bit on {self.populations} populations "
                    f"x {self.steps} steps ({self.neuron_steps_compared} neuron-steps, {self.samples} samples), "
                    f"readout and predictions included" + coverage_text(self.coverage))
        parts = []
        fd = self.first_divergence
        if fd:
            where = f"sample {fd['sample']}, timestep {fd['timestep']}" if fd.get("sample") is not None else \
                f"stream step {fd['step']}"
            if fd.get("sample") is not None and not fd.get("in_window", True):
                where += f" ({fd['window_note']})"
            parts.append(f"first divergence at {where}, population {fd['population']}, neuron "
                         f"{fd['neuron_str']}: Lava {fd['lava']}, reference {fd['reference']}")
        if self.mismatching_neuron_steps:
            parts.append(f"{self.mismatching_neuron_steps} of {self.neuron_steps_compared} neuron-steps differ in "
                         f"{len(self.mismatches_by_population)} of {self.populations} populations")
        parts.append("readout equal" if self.readout_equal else
                     f"readout differs at {self.readout_mismatching_steps} steps")
        if not self.predictions_equal:
            parts.append(f"predictions Lava {self.predictions['lava']} vs reference {self.predictions['reference']}")
        parts += self.problems
        return "parity FAILED: " + "; ".join(parts)


# ---------------------------------------------------------------------- coverage

def parity_coverage(graph: IntegerGraph, reference) -> dict[str, Any]:
    """What a parity run exercised, from ``reference`` (the reference's one-stream
    :class:`~calibration.reference.StreamResult`), counted in each sample's ``T``-step window (the steps
    a parity image drives):

    ``populations``, ``populations_spiked`` (at least one spike in some image), ``spikes_compared``
    (all spikes of all populations in the images' windows), ``neurons``, ``neurons_spiked`` and
    ``neurons_spiked_fraction`` (neurons that spiked at least once), ``spikes_by_population``
    (name -> spikes), ``silent_populations`` (names: no spike in any parity image, in topological
    order). The stream's other steps (pipeline fill and drain) are compared too but not counted here.
    """
    spikes_by_pop: dict[str, int] = {}
    neurons = neurons_spiked = 0
    for name, pop in graph.populations.items():
        fired = None
        for n in range(int(reference.samples)):
            w = reference.window(name, pop.latency, n)[:, 0]  # [T, *shape]
            w = w != 0 if pop.kind == "partial_sum" else w  # graded spikes: nonzero payloads
            any_t = w.any(0) if w.shape[0] else None
            if any_t is not None:
                fired = any_t if fired is None else fired | any_t
            spikes_by_pop[name] = spikes_by_pop.get(name, 0) + int(w.sum())
        spikes_by_pop.setdefault(name, 0)
        neurons += int(pop.size)
        neurons_spiked += int(fired.sum()) if fired is not None else 0
    silent = [name for name, k in spikes_by_pop.items() if k == 0]
    return {"populations": len(graph.populations), "populations_spiked": len(graph.populations) - len(silent),
            "spikes_compared": int(sum(spikes_by_pop.values())), "neurons": neurons,
            "neurons_spiked": neurons_spiked, "neurons_spiked_fraction": neurons_spiked / neurons if neurons else 0.0,
            "spikes_by_population": spikes_by_pop, "silent_populations": silent}


def coverage_text(coverage: dict[str, Any]) -> str:
    """``"; coverage: ..."`` for the verdict line (empty without coverage), with a warning naming the
    populations silent in every parity image."""
    if not coverage:
        return ""
    c = coverage
    text = (f"; coverage: {c['populations_spiked']} of {c['populations']} populations spiked, "
            f"{c['spikes_compared']} spikes compared, {100 * c['neurons_spiked_fraction']:.1f}% of neurons spiked "
            f"at least once")
    silent = c["silent_populations"]
    if silent:
        named = ", ".join(silent[:MAX_SILENT_NAMED]) + (f", ... ({len(silent) - MAX_SILENT_NAMED} more)"
                                                         if len(silent) > MAX_SILENT_NAMED else "")
        text += (f"; WARNING: {len(silent)} of {c['populations']} population{'s' if len(silent) > 1 else ''} silent "
                 f"in every parity image ({named}): parity says nothing about {'them' if len(silent) > 1 else 'it'}")
    return text


# ---------------------------------------------------------------------- helpers

def _neuron_str(idx: tuple[int, ...]) -> str:
    if len(idx) == 3:
        return f"(c={idx[0]}, y={idx[1]}, x={idx[2]})"
    return "(" + ", ".join(f"i={i}" for i in idx) + ")"


def _sample_timestep(step0: int, latency: int, P: int, T: int, N: int) -> dict[str, Any]:
    """Which sample/timestep a 0-based stream step index holds for a population of ``latency``."""
    rel = step0 - latency
    n, k = divmod(rel, P)
    if rel < 0:
        note = f"{-rel} step(s) before sample 0's window, while the pipeline fills"
        return dict(sample=0, timestep=rel, in_window=False, window_note=note)
    if n >= N:
        note = f"after the last sample's window (sample {n} does not exist)"
        return dict(sample=int(n), timestep=int(k), in_window=False, window_note=note)
    if k >= T:
        note = f"outside the sample's {T} timesteps (step {k} of the reset interval {P})"
        return dict(sample=int(n), timestep=int(k), in_window=False, window_note=note)
    return dict(sample=int(n), timestep=int(k), in_window=True, window_note="")


def _input_at(pixels: Optional[np.ndarray], step0: int, P: int, T: int, shape) -> Optional[np.ndarray]:
    """The graded input sent at 0-based step ``step0`` (the reference's stream layout)."""
    if pixels is None:
        return None
    n, k = divmod(step0, P)
    if 0 <= n < pixels.shape[0] and k < T:
        return np.asarray(pixels[n])
    return np.zeros(shape, dtype=np.int64)


def _receptive_field(syn: Synapse, src_shape: tuple[int, ...], dst_shape: tuple[int, ...],
                     neuron: tuple[int, ...]):
    """Index tuple (into a source array) of the elements feeding ``neuron`` through ``syn``, plus a
    JSON-able description of the region."""
    if syn.kind == "identity":
        return tuple(np.array([i]) for i in neuron), {"element": list(neuron)}
    if syn.kind == "conv":
        c, y, x = neuron
        C_out, cin_g, kH, kW = syn.weight.shape
        g = c // (C_out // syn.groups)
        sy, sx = syn.stride
        py, px = syn.padding
        _, H, W = src_shape
        y0, x0 = y * sy - py, x * sx - px
        rows = [r for r in range(y0, y0 + kH) if 0 <= r < H]
        cols = [q for q in range(x0, x0 + kW) if 0 <= q < W]
        chans = list(range(g * cin_g, (g + 1) * cin_g))
        region = {"channels": [chans[0], chans[-1]], "rows": [rows[0], rows[-1]] if rows else [],
                  "cols": [cols[0], cols[-1]] if cols else []}
        return np.ix_(chans, rows, cols), region
    # dense: the sources with a nonzero weight to this neuron
    row = int(np.ravel_multi_index(neuron, dst_shape))
    flat = np.flatnonzero(syn.weight[row])
    return np.unravel_index(flat, src_shape), {"nonzero_weight_sources": int(flat.size)}


def _recent_inputs(graph: IntegerGraph, reference, lava, dst: str, neuron: tuple[int, ...], step0: int,
                   window: int) -> list[dict[str, Any]]:
    P, T = graph.reset_interval, graph.timesteps
    pixels = getattr(lava, "pixels", None)
    out = []
    for syn in graph.incoming(dst):
        src_shape = graph.read_shape(syn)
        dst_shape = (graph.num_classes,) if dst == READOUT else graph.populations[dst].shape
        idx, region = _receptive_field(syn, src_shape, dst_shape, neuron)
        if syn.src_channels is not None:  # indices into the read range -> into the whole source
            idx = (np.asarray(idx[0]) + syn.src_channels[0],) + tuple(idx[1:])
            src_shape = graph.source_shape(syn.src)
        last = step0 - 1 - syn.delay  # the latest source step that reaches the neuron by step0
        entry: dict[str, Any] = {"synapse": syn.name, "kind": syn.kind, "source": syn.src, "delay": int(syn.delay),
                                 "region": region, "steps": []}
        if syn.src == INPUT:
            entry["note"] = ("input pixels: the same stream feeds Lava and the reference (not recorded)"
                             if pixels is not None else "input pixels not available")
        if syn.kind == "dense":
            sources = np.ravel_multi_index(idx, src_shape)  # PyTorch flat indices of the listed sources
        for j in range(max(0, last - window + 1), last + 1):
            if syn.src == INPUT:
                x = _input_at(pixels, j, P, T, src_shape)
                if x is None:
                    break
                rec = {"step": j + 1, "pixels": np.asarray(x)[idx].tolist()}
            else:
                lv = np.asarray(lava.spikes[syn.src][j])[idx].astype(np.int64)
                rv = np.asarray(reference.spikes[syn.src][j, 0].cpu().numpy())[idx].astype(np.int64)
                rec = {"step": j + 1, "equal": bool(np.array_equal(lv, rv))}
                if syn.kind == "dense":
                    diff = np.flatnonzero(lv.ravel() != rv.ravel())
                    rec.update(active_lava=int(lv.sum()), active_reference=int(rv.sum()),
                               differing_sources=[int(sources[i]) for i in diff[:MAX_LISTED]])
                else:
                    rec.update(lava=lv.tolist(), reference=rv.tolist())
            entry["steps"].append(rec)
        out.append(entry)
    return out


# ---------------------------------------------------------------------- the gate

def check_parity(graph: IntegerGraph, reference, lava, *, recent_steps: int = RECENT_STEPS) -> ParityReport:
    """Compare ``lava`` (:class:`~deploy.lava_run.LavaRunResult`) with ``reference``
    (:class:`~calibration.reference.StreamResult` of one stream) over every population, neuron and step."""
    if reference.spikes and next(iter(reference.spikes.values())).shape[1] != 1:
        raise ValueError("check_parity compares one stream: run the reference with B = 1")
    P, T = graph.reset_interval, graph.timesteps
    N = int(lava.samples)
    problems = []
    if int(reference.samples) != N:
        problems.append(f"the reference ran {reference.samples} samples, Lava {N}")
    S_ref = int(reference.readout.shape[0])
    S_lava = int(lava.readout.shape[0])
    S = min(S_ref, S_lava)
    if S_ref != S_lava:
        problems.append(f"the reference ran {S_ref} steps, Lava {S_lava} (compared the first {S})")

    compared = mismatching = 0
    by_pop: dict[str, int] = {}
    first: Optional[tuple[int, int, str]] = None  # (step, topo position, population)
    order = list(graph.populations)
    for pos, name in enumerate(order):
        if name not in lava.spikes or name not in reference.spikes:
            problems.append(f"population {name} missing from the {'Lava' if name not in lava.spikes else 'reference'} "
                            f"result")
            continue
        kind = np.int64 if graph.populations[name].kind == "partial_sum" else bool  # payloads / spikes
        ref = reference.spikes[name][:S, 0].cpu().numpy().astype(kind)
        got = np.asarray(lava.spikes[name][:S]).astype(kind)
        if ref.shape != got.shape:
            problems.append(f"population {name}: Lava shape {list(got.shape)} vs reference {list(ref.shape)}")
            continue
        diff = ref != got
        compared += diff.size
        bad = int(diff.sum())
        if bad:
            mismatching += bad
            by_pop[name] = bad
            step = int(np.flatnonzero(diff.reshape(S, -1).any(1))[0])
            if first is None or (step, pos) < first[:2]:
                first = (step, pos, name)

    ref_ro = reference.readout[:S, 0].cpu().numpy().astype(np.int64)
    lava_ro = np.asarray(lava.readout[:S]).astype(np.int64)
    ro_diff = (ref_ro != lava_ro).any(-1) if ref_ro.shape == lava_ro.shape else np.ones(S, bool)
    readout_equal = ref_ro.shape == lava_ro.shape and not ro_diff.any() and S_ref == S_lava

    ref_pred = [int(x) for x in reference.predictions()[0].cpu().numpy().tolist()]
    lava_pred = [int(x) for x in lava.predictions().tolist()]

    fd = None
    if first is not None:
        step0, _pos, name = first
        pop = graph.populations[name]
        kind = np.int64 if pop.kind == "partial_sum" else bool
        ref = reference.spikes[name][step0, 0].cpu().numpy().astype(kind)
        got = np.asarray(lava.spikes[name][step0]).astype(kind)
        neuron = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero((ref != got).ravel())[0]), pop.shape))
        own = [{"step": j + 1, "lava": int(lava.spikes[name][j][neuron]),
                "reference": int(reference.spikes[name][j, 0][neuron])}
               for j in range(max(0, step0 - recent_steps), step0 + 1)]
        fd = dict(step=step0 + 1, population=name, kind=pop.kind, op=pop.op, latency=int(pop.latency),
                  neuron=list(neuron), neuron_str=_neuron_str(neuron), lava=int(got[neuron]),
                  reference=int(ref[neuron]),
                  **_sample_timestep(step0, pop.latency, P, T, N), recent_outputs=own,
                  recent_inputs=_recent_inputs(graph, reference, lava, name, neuron, step0, recent_steps))
    elif ro_diff.any():
        step0 = int(np.flatnonzero(ro_diff)[0])
        k = int(np.flatnonzero(ref_ro[step0] != lava_ro[step0])[0]) if ref_ro.shape == lava_ro.shape else 0
        fd = dict(step=step0 + 1, population=READOUT, kind="readout", op=None, latency=int(lava.readout_latency),
                  neuron=[k], neuron_str=f"(class={k})", lava=int(lava_ro[step0, k]) if lava_ro.ndim == 2 else None,
                  reference=int(ref_ro[step0, k]),
                  **_sample_timestep(step0, int(lava.readout_latency), P, T, N),
                  recent_inputs=_recent_inputs(graph, reference, lava, READOUT, (k,), step0, recent_steps))
    passed = (mismatching == 0 and readout_equal and ref_pred == lava_pred and not problems)
    coverage = parity_coverage(graph, reference) if int(reference.samples) == N and S_ref == S_lava else {}
    return ParityReport(coverage=coverage, passed=passed, samples=N, steps=S, populations=len(order), neuron_steps_compared=int(compared),
                        mismatching_neuron_steps=int(mismatching), readout_equal=bool(readout_equal),
                        predictions={"lava": lava_pred, "reference": ref_pred}, mismatches_by_population=by_pop,
                        readout_mismatching_steps=int(ro_diff.sum()), problems=problems, first_divergence=fd)


def require_parity(report: ParityReport) -> None:
    """Raise :class:`ParityError` (exit code 5) with the report's summary unless parity holds."""
    if not report.passed:
        raise ParityError(report.summary())


def lava_section(graph, lava, reference) -> dict[str, Any]:
    """The ``lava`` section: per population, the spikes the Lava run ``lava``
    (:class:`~deploy.lava_run.LavaRunResult`) recorded in each sample's window, beside those of the
    reference's Loihi-timing stream ``reference`` (:class:`~calibration.reference.StreamResult`, one
    stream) on the same samples (:meth:`~calibration.integer_graph.StreamWindows.window_spike_counts`); plain
    data for the report."""
    got, ref = lava.window_spike_counts(graph), reference.window_spike_counts(graph)
    layers = [{"name": name, "spikes_per_sample": got[name], "reference_spikes_per_sample": ref[name],
               "equal": got[name] == ref[name]} for name in graph.populations]
    return {"run_config": RUN_CONFIGS[lava.run_config][1], "process_models": dict(lava.process_models),
            "samples": int(lava.samples),
            "timesteps": int(lava.timesteps), "steps": int(lava.steps), "seconds": round(float(lava.seconds), 2),
            "layers": layers, "equal": all(layer["equal"] for layer in layers),
            "predictions": [int(x) for x in lava.predictions()],
            "reference_predictions": [int(x) for x in reference.predictions()[0]]}
