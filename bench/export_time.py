"""Export time (checkpoint -> artifacts, no simulation) of XOResNet-18/34/50/101 and the bundled models, per
stage, with peak memory, and calibration before/after (the baseline commit's code side by side).

    .venv/bin/python bench/export_time.py --threads 1         # width 1.0, 32x32, T=4, 64 calibration images
    .venv/bin/python bench/export_time.py --archs xoresnet18 --width 0.25 --calib-samples 16 --bundled digits
    .venv/bin/python bench/export_time.py --baseline none --bundled ''   # the presets only, no before/after
    .venv/bin/python bench/export_time.py --json              # machine-readable result on stdout

"Export" is what ``xoresnet-export`` (:mod:`deploy.cli`) does to produce the artifacts, with the
simulations left out. The stages, timed one by one with the library functions the CLI calls:

1. ``load``: :func:`xoresnet.checkpoint.load_model` (weights-only load, validation, sha256, model);
2. ``nir_export``: :func:`xoresnet.nir.export.export_nir`;  ``nir_write``: :func:`write_nir` (``model.nir``);
3. calibration on ``--calib-samples`` images, the steps of
   :func:`deploy.pipeline.calibrate_checkpoint` timed in two parts: ``calib_trace``: the NIR graph
   exported a second time, read as populations and run by the float32 NIR interpreter on the
   images (:func:`calibration.quantize.float_trace`, the float model's spikes);
   ``calib_quantize``: :func:`calibration.quantize.calibrate` (per population: up to 32 threshold
   candidates scored, the chosen one run exactly on all images). ``calibrate`` in the output is
   their sum. ``schedule``: :func:`calibration.schedule.schedule`;
4. ``graph_write``: :func:`calibration.integer_graph.save_integer_graph` (``integer_graph.h5``)
   + ``calibration.json``; ``lava_describe``: :func:`deploy.lava_graph.describe_lava_network` +
   ``lava_graph.json``;
5. ``connectivity``: :func:`hw_targets.connectivity.connectivity`; ``design_rules``:
   :func:`hw_targets.design_rules.check_design_rules` (rules and core packing), target ``loihi2``. A
   network that violates a rule is timed all the same (the CLI would stop there with exit 4); the
   output gives the number of violations and the first.

Left out (simulations): the float evaluation and the NIR-interpreter check over the evaluation
images (CLI stage 2), the integer-reference statistics run (5), the Lava parity run (6) and the
report/manifest writing (7), which needs their results.

Setup (not timed): a checkpoint per architecture is built from ``tests/conftest.firing_model``
(untrained, trained-like firing) and saved with :func:`xoresnet.checkpoint.save_checkpoint` in a
temporary folder, in its own subprocess. Calibration images: ``random_pixels`` (there is no
32x32x3 dataset on this machine; the CLI would take the first N training images).

Memory: every (architecture, round) runs in a **fresh subprocess**, which reports
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak RSS of that process, KiB on Linux) after the
imports (baseline) and after every stage, so the stage that sets the peak is visible; tracemalloc
is not used (it does not see torch's allocations). The calibration keeps the float model's spikes
of every population for all calibration images, 8 to a byte: ``--mem-budget-gib`` caps their
estimated size (``(neurons + gate neurons) x T x N / 8`` bytes, from the NIR graph), and an
architecture whose 64-image trace would exceed it is calibrated on the largest power-of-two N that
fits; the output says so (no extrapolation). ``--stage-timeout`` stops a
worker; its finished stages are still reported and the unfinished one is named.

Bundled models (``--bundled``: digits, digits-qat, mnist, mnist-qat): the checkpoints in ``models/``,
calibrated on the first ``--calib-samples`` training images of their dataset as ``xoresnet-export``
reads them; ``--bundled-repeats`` rounds (they take seconds).

Before/after: ``--baseline REV`` (default :data:`BASELINE_REV`, main with the old calibration, which
scored every candidate by a convolution over all samples) is extracted with ``git archive`` (its
``calibration``, ``deploy``, ``hw_targets``, ``xoresnet`` packages) into the temporary folder; for
the bundled models and ``--baseline-archs`` (default XOResNet-18: the old code takes minutes per
preset) a worker with that code first on ``sys.path`` runs ``load``, ``nir_export`` and
``calibrate`` (:func:`deploy.pipeline.calibrate_checkpoint`, which exports the NIR graph again and
runs the float trace, as ``calib_trace`` + ``calib_quantize`` do), right after the worktree's worker
on the same checkpoint and images. The output gives both calibrations' medians, the speedup
(before / after) and both peak RSS; then the issue's targets (total <= 30 s for XOResNet-18, <= 120 s
for XOResNet-101, peak <= 4 GiB) against the medians.

Threads: on the shared 2-core machine use ``--threads 1`` (torch's default of 2 intra-op threads
spins against the other engineers' processes: XOResNet-18's calibration took 119 s with 2 threads
and 17 s with 1 at the same load, 2026-12-05).

Timing: ``--repeats`` rounds over the architectures (interleaved); medians (min/max shown).
``--skip design_rules`` leaves out the rules and the packing; the output marks skipped stages.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

ARCHS = ("xoresnet18", "xoresnet34", "xoresnet50", "xoresnet101")
STAGES = ("load", "nir_export", "nir_write", "calib_trace", "calib_quantize", "schedule", "graph_write", "lava_describe",
          "connectivity", "design_rules")
#: Stages that make up the calibration (``calibrate``) and those of the design-rule check.
CALIBRATION = ("calib_trace", "calib_quantize")
DESIGN_RULES = ("connectivity", "design_rules")
#: Stages the baseline worker runs (with an older commit's code): calibration and what it needs.
BASELINE_STAGES = ("load", "nir_export", "calibrate")
#: The baseline ``--baseline``: main just before calibration in seconds (every candidate scored by a convolution
#: over all samples, float trace in bool), and the packages taken from it.
BASELINE_REV = "e73040e"
BASELINE_PACKAGES = ("calibration", "deploy", "hw_targets", "xoresnet")
#: The bundled checkpoints (``--bundled``) and the dataset whose first training images calibrate them, as the CLI.
BUNDLED = {"digits": ("models/xoresnet-digits.pt", "digits"), "digits-qat": ("models/xoresnet-digits-qat.pt", "digits"),
           "mnist": ("models/xoresnet18-mnist.pt", "mnist"), "mnist-qat": ("models/xoresnet18-mnist-qat.pt", "mnist")}
#: Issue 9's targets: total export seconds (2 cores, width 1.0, 32x32, 64 images, Lava excluded) and peak memory.
TARGET_SECONDS = {"xoresnet18": 30.0, "xoresnet101": 120.0}
TARGET_PEAK_GIB = 4.0


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------------- subprocess: build a checkpoint

def make_checkpoint(args) -> int:
    """Save a firing_model checkpoint; print its neuron counts (for the memory estimate)."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import nir

    from xoresnet.nir.export import export_nir
    from xoresnet.nir.interpreter import NEURON_TYPES
    from xoresnet.checkpoint import save_checkpoint

    t0 = time.perf_counter()
    firing_model, _ = benchlib.import_test_helpers()
    cfg = benchlib.random_config(args.arch, args.width, args.input_size, args.timesteps)
    model = firing_model(cfg, args.seed)
    save_checkpoint(args.make_checkpoint, model, {"dataset": None, "note": "bench/export_time.py firing_model"})
    g = export_nir(model)
    neurons = sum(int(n.v_threshold.size) for n in g.nodes.values() if isinstance(n, NEURON_TYPES))
    gates = sum(int(n.threshold.size) for n in g.nodes.values() if isinstance(n, nir.Threshold))
    emit({"checkpoint": args.make_checkpoint, "bytes": os.path.getsize(args.make_checkpoint),
          "parameters": sum(p.numel() for p in model.parameters()), "neurons": neurons, "gate_neurons": gates,
          "seconds": time.perf_counter() - t0})
    return 0


# ---------------------------------------------------------------------- subprocess: the export stages

def calibration_images(args):
    """``cfg -> pixels``: the first ``--calib-samples`` training images of ``--dataset`` (as the CLI
    reads them), else ``random_pixels`` (there is no 32x32x3 dataset on this machine)."""
    if args.dataset:
        from deploy.pipeline import calibration_pixels

        return lambda cfg: calibration_pixels(args.dataset, None, args.calib_samples)
    _, random_pixels = benchlib.import_test_helpers()
    return lambda cfg: random_pixels(args.calib_samples, cfg, args.seed + 1)


def run_stages(names: list[str], funcs: dict, profiler=None) -> None:
    """Run ``funcs[name]()`` for each name in order; one JSON line when each starts and ends (seconds, RSS)."""
    for name in names:
        emit({"stage_started": name})
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        funcs[name]()
        if profiler is not None:
            profiler.disable()
        emit({"stage": name, "seconds": time.perf_counter() - t0, "rss_peak_mib": rss_peak_mib(),
              "rss_mib": rss_now_mib()})


def baseline_worker(args) -> int:
    """The stages up to calibration with the packages of ``--code`` (an older commit): ``load``, ``nir_export``,
    ``calibrate`` (:func:`deploy.pipeline.calibrate_checkpoint`, the whole calibration as the CLI calls it)."""
    import torch
    from xoresnet.nir.export import export_nir
    from deploy.pipeline import calibrate_checkpoint
    from xoresnet.checkpoint import load_model

    pixels_of = calibration_images(args)
    emit({"stage": "baseline", "seconds": 0.0, "rss_peak_mib": rss_peak_mib(), "rss_mib": rss_now_mib(),
          "torch_threads": torch.get_num_threads()})
    state: dict = {}

    def s_load():
        state["model"], state["ckpt"] = load_model(args.worker)
        state["pixels"] = pixels_of(state["model"].config)

    def s_nir_export():
        state["nir"] = export_nir(state["model"])

    def s_calibrate():  # exports the NIR graph again, as calib_trace does
        state["cal"] = calibrate_checkpoint(state["model"], state["ckpt"], state["pixels"])

    run_stages(list(BASELINE_STAGES), {"load": s_load, "nir_export": s_nir_export, "calibrate": s_calibrate})
    emit({"done": True, "calib_samples": int(state["pixels"].shape[0]),
          "populations": len(state["cal"].graph.populations)})
    return 0


def worker(args) -> int:
    """Run the export stages on ``--worker CKPT`` into ``--out``; one JSON line per stage."""
    if args.code:  # the baseline: an older commit's packages shadow the worktree's
        sys.path.insert(0, args.code)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.code:
        return baseline_worker(args)
    from calibration.float_graph import nir_to_float_graph
    from calibration.integer_graph import save_integer_graph
    from calibration.quantize import QuantSpec, calibrate, float_trace
    from deploy.lava_graph import describe_lava_network
    from xoresnet.nir.export import export_nir, write_nir
    from calibration.schedule import schedule
    from hw_targets import get_target
    from hw_targets.connectivity import connectivity
    from hw_targets.design_rules import check_design_rules
    from xoresnet.checkpoint import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = get_target("loihi2")
    pixels_of = calibration_images(args)
    emit({"stage": "baseline", "seconds": 0.0, "rss_peak_mib": rss_peak_mib(), "rss_mib": rss_now_mib(),
          "torch_threads": torch.get_num_threads()})
    state: dict = {}

    def jdump(obj, name):
        from deploy.export_dir import json_text

        (out / name).write_text(json_text(obj))

    def s_load():
        state["model"], state["ckpt"] = load_model(args.worker)
        cfg = state["model"].config
        state["pixels"] = pixels_of(cfg)

    def s_nir_export():
        state["nir"] = export_nir(state["model"])

    def s_nir_write():
        write_nir(state["nir"], out / "model.nir")

    def s_calib_trace():  # calibrate_checkpoint -> calibrate_nir, first part
        graph = export_nir(state["model"])
        state["fg"] = nir_to_float_graph(graph)
        state["trace"] = float_trace(graph, state["fg"], state["pixels"])

    def s_calib_quantize():  # calibrate_nir, second part
        ckpt = state["ckpt"]
        spec = QuantSpec.from_dict(ckpt.quant) if ckpt.quant is not None else None
        state["cal"] = calibrate(state["fg"], state["pixels"], state.pop("trace"), spec=spec)

    def s_schedule():
        state["graph"] = schedule(state["cal"].graph)

    def s_graph_write():
        save_integer_graph(state["graph"], out / "integer_graph.h5")
        jdump({"spec": state["cal"].spec.to_dict(), "report": state["cal"].report}, "calibration.json")

    def s_lava_describe():
        state["lava"] = describe_lava_network(state["graph"])
        jdump(state["lava"], "lava_graph.json")

    def s_connectivity():
        state["conns"] = connectivity(state["graph"])

    def s_design_rules():
        state["drc"] = check_design_rules(state["graph"], target, conns=state["conns"])

    funcs = {"load": s_load, "nir_export": s_nir_export, "nir_write": s_nir_write, "calib_trace": s_calib_trace,
             "calib_quantize": s_calib_quantize,
             "schedule": s_schedule, "graph_write": s_graph_write, "lava_describe": s_lava_describe,
             "connectivity": s_connectivity, "design_rules": s_design_rules}
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    skip = {x for x in (args.skip or "").split(",") if x}
    run_stages([s for s in STAGES if s not in skip], funcs, profiler)
    g, lava, drc = state["graph"], state["lava"]["counts"], state.get("drc")
    emit({"done": True, "files_mib": {p.name: p.stat().st_size / 2**20 for p in sorted(out.iterdir())},
          "calib_samples": int(state["pixels"].shape[0]), "populations": len(g.populations),
          "synapses": len(g.synapses), "neurons": lava["neurons"], "lava_processes": lava["processes"],
          "cores": drc.packing.num_cores if drc else None, "chips": drc.packing.chips if drc else None,
          "violations": len(drc.violations) if drc else None,
          "first_violation": drc.violations[0].message if drc and drc.violations else None,
          "skipped": sorted(skip)})
    if profiler is not None:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(args.profile_top)
        emit({"profile_tottime": buf.getvalue()})
    return 0


# ---------------------------------------------------------------------- parent

def run_json_lines(cmd: list[str], timeout: float, on_line=None) -> tuple[list[dict], str, bool, int]:
    """Run ``cmd``; return (its JSON lines, stderr tail, timed out, return code). Lines are read as
    they come (``on_line(obj)`` is called for each), so a stopped worker still reports its stages."""
    import selectors

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=benchlib.REPO)
    lines, err = [], []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    timed_out = False
    open_streams = 2
    while open_streams:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            proc.kill()
            break
        for key, _ in sel.select(timeout=min(left, 1.0)):
            line = key.fileobj.readline()
            if not line:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            if key.fileobj is proc.stdout:
                try:
                    lines.append(json.loads(line))
                    if on_line is not None:
                        on_line(lines[-1])
                except json.JSONDecodeError:
                    err.append(line)
            else:
                err.append(line)
    rc = proc.wait()
    return lines, "".join(err[-20:]), timed_out, rc


def calib_samples_for(info: dict, args) -> tuple[int, float]:
    """Largest power-of-two N <= --calib-samples whose estimated calibration trace fits the budget."""
    per_image = (info["neurons"] + info["gate_neurons"]) * args.timesteps / 8
    n = args.calib_samples
    budget = args.mem_budget_gib * 2**30
    while n > 1 and per_image * n > budget:
        n = 1 << ((n - 1).bit_length() - 1) if n & (n - 1) else n // 2
    return n, per_image * n / 2**30


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated architecture presets")
    p.add_argument("--width", type=float, default=1.0, help="width factor")
    p.add_argument("--input-size", type=int, default=32, help="input height = width")
    p.add_argument("--timesteps", type=int, default=4, help="T")
    p.add_argument("--calib-samples", type=int, default=64, help="calibration images (the CLI's default is 64)")
    p.add_argument("--mem-budget-gib", type=float, default=8.0,
                   help="cap on the estimated calibration trace; larger models get fewer calibration images")
    p.add_argument("--repeats", type=int, default=1, help="rounds over the architectures (interleaved)")
    p.add_argument("--stage-timeout", type=float, default=3600.0, help="wall-clock limit of one worker (s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the calibration images")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the workers (default: torch's)")
    p.add_argument("--profile", action="store_true", help="cProfile the stages in the first round (slows them)")
    p.add_argument("--profile-top", type=int, default=25, help="functions listed per profile")
    p.add_argument("--skip", default="", help="comma-separated stages not to run (only design_rules and/or "
                                                 "connectivity,design_rules make sense: nothing depends on them)")
    p.add_argument("--baseline", default=BASELINE_REV,
                   help="commit whose calibration runs side by side with this worktree's ('none': no baseline)")
    p.add_argument("--baseline-archs", default="xoresnet18",
                   help="presets also calibrated with the baseline (minutes each: 113-805 s for 18..101)")
    p.add_argument("--bundled", default=",".join(BUNDLED),
                   help="bundled checkpoints exported too, calibrated on their dataset's first training images "
                        "('' for none)")
    p.add_argument("--bundled-repeats", type=int, default=3, help="rounds over the bundled checkpoints")
    p.add_argument("--keep", help="keep the checkpoints and artifacts in this folder (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    # internal: the subprocesses
    p.add_argument("--make-checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--code", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.make_checkpoint:
        return make_checkpoint(args)
    if args.worker:
        return worker(args)

    machine = benchlib.machine_info()
    if args.threads is not None:
        machine["torch_threads"] = args.threads
    log = benchlib.start_log(machine, args.json, " [torch threads of the workers]")
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="xoresnet-bench-export-"))
    tmp.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    bad = {x for x in args.skip.split(",") if x} - {"connectivity", "design_rules"}
    if bad or ("connectivity" in args.skip.split(",") and "design_rules" not in args.skip.split(",")):
        raise SystemExit(f"--skip: only design_rules or connectivity,design_rules can be skipped (got {args.skip!r})")
    common = ["--skip", args.skip, "--width", str(args.width), "--input-size", str(args.input_size),
              "--timesteps", str(args.timesteps), "--seed", str(args.seed)]
    common += ["--threads", str(args.threads)] if args.threads is not None else []
    info: dict[str, dict] = {}
    code = None
    if args.baseline != "none":  # the baseline's packages, as that commit has them (read-only git archive)
        code = tmp / "baseline-code"
        code.mkdir(exist_ok=True)
        archive = subprocess.run(["git", "archive", args.baseline, *BASELINE_PACKAGES], cwd=benchlib.REPO,
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            raise SystemExit(f"--baseline {args.baseline}: git archive failed: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    baseline_archs = {a.strip() for a in args.baseline_archs.split(",") if a.strip()} if code else set()
    bundled = [b.strip() for b in args.bundled.split(",") if b.strip()]
    unknown = [b for b in bundled if b not in BUNDLED]
    if unknown:
        raise SystemExit(f"--bundled: unknown model(s) {unknown}; known: {', '.join(BUNDLED)}")
    try:
        for arch in archs:
            ckpt = tmp / f"{arch}-w{args.width:g}.pt"
            lines, err, to, rc = run_json_lines(me + ["--make-checkpoint", str(ckpt), "--arch", arch] + common,
                                                args.stage_timeout)
            if rc != 0 or not lines:
                raise SystemExit(f"building the {arch} checkpoint failed (rc {rc}): {err}")
            info[arch] = dict(lines[-1], path=str(ckpt), repeats=args.repeats, baseline=arch in baseline_archs)
            n, est = calib_samples_for(info[arch], args)
            info[arch].update(calib_samples=n, trace_estimate_gib=est)
            log(f"setup {arch} width {args.width:g}: {info[arch]['parameters']:,} parameters, "
                f"{info[arch]['neurons']:,} neurons + {info[arch]['gate_neurons']:,} gate neurons per timestep; "
                f"checkpoint {info[arch]['bytes'] / 2**20:.1f} MiB in {info[arch]['seconds']:.1f} s (untimed); "
                f"calibration on {n} images (estimated trace {est:.2f} GiB"
                + (f"; {args.calib_samples} would need {est * args.calib_samples / n:.1f} GiB > budget "
                   f"{args.mem_budget_gib:g} GiB)" if n < args.calib_samples else ")"))
        for name in bundled:
            path, dataset = BUNDLED[name]
            info[name] = {"path": str(benchlib.REPO / path), "dataset": dataset, "calib_samples": args.calib_samples,
                          "repeats": args.bundled_repeats, "baseline": code is not None}
        runs: dict[str, dict[str, list[dict]]] = {u: {"new": [], "old": []} for u in info}
        profiles: dict[str, str] = {}
        for r in range(max((u["repeats"] for u in info.values()), default=0)):
            for unit, u in info.items():
                if r >= u["repeats"]:
                    continue
                for variant in ("new", "old") if u["baseline"] else ("new",):  # side by side
                    out = tmp / f"{unit}-{variant}-out-{r}"
                    profiled = args.profile and r == 0 and variant == "new"
                    cmd = (me + ["--worker", u["path"], "--out", str(out), "--calib-samples", str(u["calib_samples"])]
                           + common + (["--dataset", u["dataset"]] if u.get("dataset") else [])
                           + (["--code", str(code)] if variant == "old" else []) + (["--profile"] if profiled else []))
                    t0 = time.perf_counter()

                    def live(d, label=f"{unit} ({variant})"):
                        if "stage" in d and d["stage"] != "baseline":
                            log(f"    {label}: {d['stage']} {d['seconds']:.2f} s, peak RSS {d['rss_peak_mib']:.0f} "
                                f"MiB ({time.strftime('%H:%M:%S')}, load {benchlib.load_average()[0]:.2f})")

                    lines, err, to, rc = run_json_lines(cmd, args.stage_timeout, live)
                    wall = time.perf_counter() - t0
                    stages = {d["stage"]: d for d in lines if "stage" in d}
                    started = [d["stage_started"] for d in lines if "stage_started" in d]
                    done = next((d for d in lines if d.get("done")), None)
                    unfinished = next((s for s in started if s not in stages), None)
                    rec = {"round": r, "stages": stages, "done": done, "timed_out": to, "rc": rc,
                           "unfinished_stage": unfinished, "subprocess_wall_s": wall, "profiled": profiled,
                           "stderr_tail": err if rc else ""}
                    runs[unit][variant].append(rec)
                    prof = next((d["profile_tottime"] for d in lines if "profile_tottime" in d), None)
                    if prof:
                        profiles[unit] = prof
                    status = ("ok" if done else f"STOPPED in stage {unfinished} after {wall:.0f} s"
                              + (" (timeout)" if to else f" (rc {rc})"))
                    log(f"round {r + 1}/{u['repeats']} {unit} ({variant}): {status}; "
                        + ", ".join(f"{k} {v['seconds']:.2f}" for k, v in stages.items() if k != "baseline")
                        + (f"; peak RSS {max(v['rss_peak_mib'] for v in stages.values()):.0f} MiB" if stages else "")
                        + (" [profiled]" if profiled else ""))
                    if rc and not to:
                        log(err)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    machine = benchlib.finish_machine_info(machine)
    results = {unit: summarize(u, runs[unit], args) for unit, u in info.items()}
    result = {"machine": machine,
              "config": {"archs": archs, "bundled": bundled, "width": args.width, "input_size": args.input_size,
                         "timesteps": args.timesteps, "calib_samples": args.calib_samples,
                         "mem_budget_gib": args.mem_budget_gib, "repeats": args.repeats,
                         "bundled_repeats": args.bundled_repeats, "baseline": args.baseline,
                         "baseline_archs": sorted(baseline_archs), "seed": args.seed,
                         "skip": args.skip, "stage_timeout_s": args.stage_timeout,
                         "memory_measure": "ru_maxrss of a fresh subprocess per (model, variant, round)"},
              "targets": {"total_seconds": TARGET_SECONDS, "peak_rss_gib": TARGET_PEAK_GIB},
              "results": results, "profiles": profiles}
    if benchlib.emit_json(result, args.json):
        return result
    print_tables(result, args)
    return result


def summarize(u: dict, runs: dict[str, list[dict]], args) -> dict:
    """Medians over the rounds of one model: every stage of the new code, and, with a baseline, the
    baseline's calibration and peak memory beside it (``before_after``: the medians and their ratios)."""
    ok = [x for x in runs["new"] if x["done"] and not x["profiled"]] or [x for x in runs["new"] if x["done"]]
    use = ok or runs["new"]
    per_stage = {s: benchlib.summary([x["stages"][s]["seconds"] for x in use if s in x["stages"]]) for s in STAGES}

    def per_round(recs, stages):  # the summed seconds of ``stages`` in each round (those that ran them all)
        return benchlib.summary([sum(x["stages"][s]["seconds"] for s in stages) for x in recs
                                 if all(s in x["stages"] for s in stages)])

    def peaks(recs):
        return benchlib.summary([max(v["rss_peak_mib"] for v in x["stages"].values()) for x in recs if x["stages"]])

    per_stage["calibrate"] = per_round(use, CALIBRATION)
    base = [x["stages"]["baseline"]["rss_peak_mib"] for x in use if "baseline" in x["stages"]]
    # which stage raised the peak RSS the most (median over rounds of the per-stage increase)
    raise_by = {}
    for s in STAGES:
        incs = []
        for x in use:
            seq = ["baseline"] + [t for t in STAGES if t in x["stages"]]
            if s in x["stages"]:
                prev = seq[seq.index(s) - 1]
                incs.append(x["stages"][s]["rss_peak_mib"] - x["stages"][prev]["rss_peak_mib"])
        raise_by[s] = benchlib.summary(incs)["median"] if incs else None
    last = use[-1] if use else {"done": None, "unfinished_stage": None}
    calib_samples = last["done"]["calib_samples"] if last["done"] else u["calib_samples"]
    out = {
        "width": args.width if "dataset" not in u else None, "dataset": u.get("dataset"), "checkpoint": u["path"],
        "parameters": u.get("parameters"), "neurons_per_timestep": u.get("neurons"),
        "gate_neurons_per_timestep": u.get("gate_neurons"), "calib_samples": calib_samples,
        "calib_samples_requested": args.calib_samples,
        "calibration_trace_estimate_gib": u.get("trace_estimate_gib"),
        "complete": bool(ok), "rounds_used": len(use), "skipped_stages": [x for x in args.skip.split(",") if x],
        "unfinished_stage": None if ok else last["unfinished_stage"],
        "stage_seconds": per_stage,
        "total_seconds": benchlib.summary([sum(x["stages"][s]["seconds"] for s in STAGES if s in x["stages"])
                                           for x in use]),
        "total_without_design_rules_seconds": per_round(use, [x for x in STAGES if x not in DESIGN_RULES]),
        "calibrate_seconds_per_image": (per_stage["calibrate"]["median"] / calib_samples
                                        if per_stage["calibrate"]["n"] else None),
        "peak_rss_mib": peaks(use), "baseline_rss_mib": benchlib.summary(base),
        "peak_rss_increase_mib_by_stage": raise_by,
        "graph": ({k: last["done"][k] for k in ("populations", "synapses", "neurons", "lava_processes", "cores",
                                                "chips", "violations", "first_violation")} if last["done"] else None),
        "files_mib": last["done"]["files_mib"] if last["done"] else None,
        "rounds": runs["new"],
    }
    old = [x for x in runs["old"] if x["done"]]
    if runs["old"]:
        before = {"calibrate_seconds": per_round(old, ("calibrate",)), "peak_rss_mib": peaks(old),
                  "complete": bool(old), "rounds": runs["old"]}
        after_s, before_s = per_stage["calibrate"]["median"], before["calibrate_seconds"]["median"]
        after_m, before_m = out["peak_rss_mib"]["median"], before["peak_rss_mib"]["median"]
        before["speedup"] = before_s / after_s if before_s and after_s else None
        before["peak_ratio"] = after_m / before_m if before_m and after_m else None
        out["before"] = before
    return out


def print_tables(result: dict, args) -> None:
    """The stage table (medians), the before/after table (medians and ratios) and the targets."""
    results = result["results"]
    print(f"\nexport stages (s, median of the rounds: {args.repeats} per preset, {args.bundled_repeats} per bundled "
          "model); calib = c_trace + c_quant; no_drc = total without conn and drc (the design rules and packing); "
          "peak RSS = ru_maxrss of a fresh process per model")
    cols = ("load", "nir_export", "nir_write", "calib_trace", "calib_quantize", "calibrate", "schedule", "graph_write",
            "lava_describe", "connectivity", "design_rules")
    short = ("load", "nir", "nir_w", "c_trace", "c_quant", "calib", "sched", "h5_w", "lava_d", "conn", "drc")
    print(f"{'model':14s} {'N':>3s} " + " ".join(f"{c:>7s}" for c in short)
          + f" {'total':>8s} {'no_drc':>8s} {'peak':>9s} {'base':>6s}")
    for name, r in results.items():
        st = r["stage_seconds"]
        cells = [f"{st[c]['median']:7.2f}" if st[c]["n"] else (f"{'skip':>7s}" if c in r["skipped_stages"] else
                                                                f"{'-':>7s}") for c in cols]
        no_drc = r["total_without_design_rules_seconds"]
        print(f"{name:14s} {r['calib_samples']:3d} " + " ".join(cells)
              + (f" {r['total_seconds']['median']:8.1f} " if r["total_seconds"]["n"] else f" {'-':>8s} ")
              + (f"{no_drc['median']:8.1f}" if no_drc["n"] else f"{'-':>8s}")
              + (f" {r['peak_rss_mib']['median']:6.0f}MiB" if r["peak_rss_mib"]["n"] else f" {'-':>9s}")
              + (f" {r['baseline_rss_mib']['median']:6.0f}" if r["baseline_rss_mib"]["n"] else f" {'-':>6s}")
              + ("" if r["complete"] else f"  INCOMPLETE: stopped in {r['unfinished_stage']}"))
    compared = {n: r for n, r in results.items() if "before" in r}
    if compared:
        print(f"\ncalibration before ({args.baseline}, the code of that commit) and after (this worktree), side by "
              "side in the same rounds: median seconds (min-max), speedup = before / after; peak RSS of the "
              "process (before: up to the end of calibration)")
        print(f"{'model':14s} {'N':>3s} {'before s':>22s} {'after s':>22s} {'speedup':>8s} {'peak before':>12s} "
              f"{'peak after':>11s}")
        for name, r in compared.items():
            b = r["before"]
            cell = (lambda s: f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})" if s["n"] else "-")
            print(f"{name:14s} {r['calib_samples']:3d} {cell(b['calibrate_seconds']):>22s} "
                  f"{cell(r['stage_seconds']['calibrate']):>22s} "
                  + (f"{b['speedup']:7.1f}x" if b["speedup"] else f"{'-':>8s}")
                  + (f" {b['peak_rss_mib']['median'] / 1024:10.2f}GiB" if b["peak_rss_mib"]["n"] else f" {'-':>12s}")
                  + (f" {r['peak_rss_mib']['median'] / 1024:9.2f}GiB" if r["peak_rss_mib"]["n"] else f" {'-':>11s}"))
    print("\ntargets (issue 9; total = every stage above, Lava excluded):")
    for name, r in results.items():
        if r["dataset"] is not None or not r["total_seconds"]["n"]:
            continue
        total, peak = r["total_seconds"]["median"], r["peak_rss_mib"]["median"] / 1024
        limit = TARGET_SECONDS.get(name)
        print(f"  {name}: total {total:.1f} s" + (f" (target <= {limit} s: {'met' if total <= limit else 'MISSED'})"
                                                    if limit else "")
              + f", peak {peak:.2f} GiB (target <= {TARGET_PEAK_GIB} GiB: "
              + ("met)" if peak <= TARGET_PEAK_GIB else "MISSED)"))
    for name, r in results.items():
        inc = r["peak_rss_increase_mib_by_stage"]
        top = max((k for k in inc if inc[k] is not None), key=lambda k: inc[k], default=None)
        g = r["graph"] or {}
        print(f"{name}: total {benchlib.fmt_s(r['total_seconds'])}; calibration {r['calib_samples']} images"
              + (f" (of {r['calib_samples_requested']} requested: estimated trace "
                 f"{r['calibration_trace_estimate_gib'] * r['calib_samples_requested'] / r['calib_samples']:.1f} GiB"
                 f" > {args.mem_budget_gib:g} GiB budget)" if r["calib_samples"] < r["calib_samples_requested"] else "")
              + (f"; peak RSS raised most by {top} (+{inc[top]:.0f} MiB)" if top else ""))
        if g:
            cores = f"{g['cores']} cores on {g['chips']} chip(s)" if g["cores"] is not None else "no packing (skipped)"
            if g.get("violations"):
                cores += f", {g['violations']} design-rule violations (first: {g['first_violation']})"
            print(f"    graph: {g['populations']} populations, {g['synapses']} synapses, {g['neurons']:,} neurons, "
                  f"{g['lava_processes']} Lava processes, {cores}; files "
                  + ", ".join(f"{k} {v:.1f} MiB" for k, v in r["files_mib"].items()))
    for name, prof in result["profiles"].items():
        print(f"\nprofile of {name} (first round, all stages, by own time):\n{prof}")


if __name__ == "__main__":
    rv = main()
    sys.exit(rv if isinstance(rv, int) else 0)
