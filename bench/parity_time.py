"""Time of the Lava parity gate per image at full width, and what dominates it.

    .venv/bin/python bench/parity_time.py                          # XOResNet-18/34/50/101 at width 1.0, 1 image each
    .venv/bin/python bench/parity_time.py --archs xoresnet18 --cache out/bench-graphs   # quicker; keeps the graphs
    .venv/bin/python bench/parity_time.py --json                   # machine-readable result on stdout

The parity gate of ``xoresnet-export`` (stage 6) is: the reference in Loihi timing
(:meth:`calibration.reference.ReferenceSimulator.run_stream`, one stream), the Lava run
(:func:`deploy.lava_run.run_lava`, ``Loihi2SimCfg(select_tag='fixed_pt')`` in a child process, with
the process models of ``--models``: ``xoresnet``, ours where we have one, or ``lava``, Intel's as
lava-nc ships them, which cannot run convolutions of 128 or more channels) and
:func:`deploy.parity.check_parity` on the same ``--samples`` images (default 1). This benchmark
times the three exactly as the CLI calls them and reports, per network:

* ``parity_s_per_image`` = (Lava wall + reference stream + check_parity) / images, against the
  targets of issue 9 at width 1.0, 32x32, T = 4: XOResNet-18 <= 180 s, XOResNet-101 <= 900 s;
* Lava's stream steps, processes, populations and neurons; Lava's phases (``load``/``build``/
  ``start``/``run``/``stop``, summed over the runtimes of a graph run in slices: ``run_lava``
  slices a graph with more Lava processes than one runtime holds, each slice fed the reference's
  values at its inputs) and the CPU seconds of its actor processes per process class;
* the parity verdict and its coverage (populations that spiked, spikes compared).

Networks: ``firing_model`` networks (untrained, trained-like firing rates, random images) of
``--archs`` at ``--width``, calibrated on ``--calib-samples`` random images (default 4: calibration
takes minutes at width 1.0 and parity does not depend on which images calibrated the scales) and
mapped onto the cores as ``xoresnet-export`` maps them (:func:`deploy.pipeline.map_to_cores`: the
readout of XOResNet-50/101 is fan-in split, every population cut as the core plan says); building
is never timed, and ``--cache DIR`` keeps the graphs between runs. ``--plan whole`` drops the core
plan (one Lava process per population, as before channel partitions): the cost of the partition
in Lava processes and time, measured side by side.

Also (``--conv-table``): one step of one 3x3 convolution (stride 1, padding 1, 20% binary input) of
XOResNet-18's stage shapes at 32x32 (64 channels at 32x32, 128 at 16x16, 256 at 8x8, 512 at 4x4), as
Intel's ``PyConvModelFixed.run_spk`` computes it (``lava.proc.conv.utils.conv`` + ``signed_clamp``,
called with Python-integer geometry: the model itself overflows its int8 Vars at 128) and as ours
does (:class:`deploy.lava_models.arith.ExactConv`); medians of ``--conv-calls`` calls, one BLAS thread
as in the Lava child.

Timing: ``--repeats`` rounds over all networks, interleaved; medians (min/max shown). Loads are printed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in the Lava child (deploy.lava_run.CHILD_THREADS)

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

PHASES = ("load", "build", "start", "run", "stop")
#: Seconds per parity image at width 1.0, 32x32, T = 4 (issue 9).
TARGETS = {"xoresnet18": 180.0, "xoresnet101": 900.0}
#: XOResNet-18's 3x3 stage convolutions at 32x32: (channels, spatial size).
CONV_SHAPES = ((64, 32), (128, 16), (256, 8), (512, 4))


def linfit(xs: list[float], ys: list[float]) -> dict:
    """Least squares ``y = a + b x`` and its R^2 (None with fewer than 2 distinct x)."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return {"intercept": None, "slope": None, "r2": None, "points": n}
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return {"intercept": a, "slope": b, "r2": 1 - ss_res / ss_tot if ss_tot else None, "points": n}


def conv_table(calls: int, seed: int = 0) -> list[dict]:
    """Seconds per step of Intel's Conv arithmetic and of ours on :data:`CONV_SHAPES` (same inputs,
    results checked equal)."""
    import numpy as np

    from deploy.lava_compat import lava_ready
    from deploy.lava_models.arith import ExactConv

    lava_ready()
    from lava.proc.conv import utils

    rng = np.random.default_rng(seed)
    rows = []
    for channels, size in CONV_SHAPES:
        w = rng.integers(-128, 128, (channels, 3, 3, channels)).astype(np.int32)
        x = (rng.random((size, size, channels)) < 0.2).astype(np.int32)
        ours = ExactConv(w, (1, 1), (1, 1), (1, 1), 1)
        t_ours, t_intel = [], []
        for _ in range(calls):
            t0 = time.perf_counter()
            got = ours(x, binary=True)
            t_ours.append(time.perf_counter() - t0)
        for _ in range(max(1, calls // 5) if channels >= 256 else calls):  # Intel's takes seconds there
            t0 = time.perf_counter()
            want = utils.signed_clamp(utils.conv(x.astype(bool), w, (3, 3), (1, 1), (1, 1), (1, 1), 1), 24)
            t_intel.append(time.perf_counter() - t0)
        if not np.array_equal(got, want):
            raise AssertionError(f"conv {channels}x{size}: our model differs from Intel's arithmetic")
        rows.append({"channels": channels, "size": size, "convolve2d_calls": channels * channels,
                     "intel_s": statistics.median(t_intel), "ours_s": statistics.median(t_ours),
                     "speedup": statistics.median(t_intel) / statistics.median(t_ours)})
    return rows


def network(arch: str, args) -> tuple:
    """``(cfg, scheduled integer graph, pixels [N, C, H, W], graph file or None)``; the graph from
    ``--cache`` when it is there, else built (and saved there with ``--cache``)."""
    from calibration.integer_graph import load_integer_graph, save_integer_graph

    cfg = benchlib.random_config(arch, args.width, args.input_size, args.timesteps)
    pixels = benchlib.random_inputs(cfg, args.samples, args.seed + 3)
    path = Path(args.cache) / (f"{arch}-w{args.width:g}-{args.input_size}px-T{args.timesteps}-calib"
                               f"{args.calib_samples}-seed{args.seed}-mapped.h5") if args.cache else None
    if path is not None and path.exists():
        return cfg, load_integer_graph(path), pixels, path
    cfg, graph = benchlib.random_network_graph(arch, args.width, input_size=args.input_size, timesteps=args.timesteps,
                                               seed=args.seed, calib_samples=args.calib_samples)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_integer_graph(graph, path)
    return cfg, graph, pixels, path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--archs", default="xoresnet18,xoresnet34,xoresnet50,xoresnet101",
                   help="comma-separated architecture presets ('' for none)")
    p.add_argument("--width", type=float, default=1.0, help="width factor")
    p.add_argument("--digits", action=argparse.BooleanOptionalAction, default=False,
                   help="also the bundled digits model (digits test images)")
    p.add_argument("--models", default="xoresnet", choices=("xoresnet", "lava"),
                   help="Lava process models: ours where we have one, or Intel's only")
    p.add_argument("--cache", help="folder keeping the built integer graphs between runs")
    p.add_argument("--plan", default="packer", help="core plan: the packer's (channel parts, as the export), 'whole' "
                   "(one Lava process per population), or both, comma-separated (side by side in each round)")
    p.add_argument("--conv-table", action=argparse.BooleanOptionalAction, default=True,
                   help="time one step of Intel's Conv arithmetic and of ours at 64/128/256/512 channels")
    p.add_argument("--conv-calls", type=int, default=10, help="calls per contender in the conv table")
    benchlib.add_network_args(p, repeats=1, timeout=3600.0)
    p.set_defaults(samples=1, calib_samples=4)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    args = p.parse_args(argv)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from deploy.lava_graph import describe_lava_network
    from deploy.lava_run import run_lava
    from deploy.parity import check_parity
    from calibration.reference import ReferenceSimulator

    machine = benchlib.machine_info()
    log = benchlib.start_log(machine, args.json)

    convs = conv_table(args.conv_calls, args.seed) if args.conv_table else []
    for row in convs:
        log(f"conv 3x3 {row['channels']} -> {row['channels']} channels at {row['size']}x{row['size']}: Intel's "
            f"{row['intel_s']:.3f} s/step ({row['convolve2d_calls']} convolve2d calls), ours "
            f"{1e3 * row['ours_s']:.2f} ms/step: {row['speedup']:.0f}x")

    nets = []
    specs = ([("digits", None)] if args.digits else []) + [(a.strip(), a.strip()) for a in args.archs.split(",")
                                                            if a.strip()]
    for label, arch in specs:
        t0 = time.perf_counter()
        path = None
        if arch is None:
            cfg, graph, test = benchlib.digits_graph(Path(args.digits_checkpoint))
            pixels = test[: args.samples]
            desc = f"{Path(args.digits_checkpoint).name} ({cfg.arch}, 8x8x1, T={cfg.timesteps}), digits test images"
        else:
            cfg, graph, pixels, path = network(arch, args)
            desc = (f"{arch} width {args.width:g}, {args.input_size}x{args.input_size}x3, T={args.timesteps}, random "
                    f"images, calibrated on {args.calib_samples} random images")
            label = f"{arch}-w{args.width:g}"
        for plan in args.plan.split(","):
            if plan not in ("packer", "whole"):
                p.error(f"--plan: unknown plan {plan!r} (packer, whole)")
            kept = graph.core_plan
            if plan == "whole":
                graph.core_plan = None
            counts = describe_lava_network(graph, args.models)["counts"]
            graph.core_plan = kept
            steps = graph.stream_steps(int(pixels.shape[0]))
            name = label + ("" if plan == "packer" else "-whole")
            nets.append(dict(label=name, arch=arch or cfg.arch, desc=desc, graph=None if path else graph, path=path,
                             plan=plan, core_plan=None if plan == "whole" else graph.core_plan, pixels=pixels, counts=counts, steps=steps,
                             t={"lava_wall": [], "reference_stream": [], "check_parity": [], "total": []},
                             phases=[], cpu=[], parity=[], coverage=None, models=None))
            log(f"setup {name}: {desc}; core plan {plan}; {counts['populations']} populations ({counts['relays']} "
                f"relays, {counts['partial_sums']} partial sums), {counts['neurons']} neurons, {counts['processes']} "
                f"Lava processes ({counts['population_processes']} for populations), {counts['connections']} "
                f"connections, {steps} steps; {time.perf_counter() - t0:.1f} s (untimed)")

    from calibration.integer_graph import load_integer_graph

    for r in range(args.repeats):
        for n in nets:  # a cached graph is read again each time: one network's arrays in memory at a time
            g = n["graph"] or load_integer_graph(n["path"])
            g.core_plan = n["core_plan"]
            sim = ReferenceSimulator(g)
            t0 = time.perf_counter()
            ref = sim.run_stream(n["pixels"].unsqueeze(0))
            t1 = time.perf_counter()
            lava = run_lava(g, n["pixels"].numpy(), timeout=args.timeout, models=args.models, reference=ref)
            t2 = time.perf_counter()
            rep = check_parity(g, ref, lava)
            t3 = time.perf_counter()
            n["t"]["reference_stream"].append(t1 - t0)
            n["t"]["lava_wall"].append(lava.seconds)
            n["t"]["check_parity"].append(t3 - t2)
            n["t"]["total"].append(lava.seconds + (t1 - t0) + (t3 - t2))
            ph = dict(lava.phases)
            ph["outside_phases"] = lava.seconds - sum(ph.get(k, 0.0) for k in PHASES)
            n["phases"].append(ph)
            n["cpu"].append(lava.cpu_seconds)
            n["parity"].append(rep.passed)
            n["coverage"] = {k: v for k, v in rep.coverage.items() if k != "spikes_by_population"}
            n["models"] = lava.process_models
            n["slices"] = lava.slices
            log(f"round {r + 1}/{args.repeats} {n['label']}: Lava {lava.seconds:.1f} s in {len(lava.slices)} "
                f"runtime(s) of at most {max(x['processes'] for x in lava.slices)} processes ("
                + ", ".join(f"{k} {ph[k]:.1f}" for k in PHASES if k in ph)
                + f"), reference stream {t1 - t0:.1f} s, check_parity {t3 - t2:.1f} s; " + rep.summary())
            del g, sim, ref, lava

    machine = benchlib.finish_machine_info(machine)
    results = {}
    for n in nets:
        N = int(n["pixels"].shape[0])
        t = {k: benchlib.summary(v) for k, v in n["t"].items()}
        phases = {k: benchlib.summary([ph[k] for ph in n["phases"] if k in ph]) for k in PHASES + ("outside_phases",)}
        cpu = {k: statistics.median(c.get(k, 0.0) for c in n["cpu"]) for k in (n["cpu"][0] if n["cpu"] else {})}
        c = n["counts"]
        per_image = t["total"]["median"] / N
        target = TARGETS.get(n["arch"]) if (args.width == 1.0 and args.input_size == 32 and args.timesteps == 4) \
            else None
        results[n["label"]] = {
            "description": n["desc"], "arch": n["arch"], "samples": N, "steps": n["steps"],
            "processes": c["processes"], "connections": c["connections"], "populations": c["populations"],
            "relays": c["relays"], "partial_sums": c["partial_sums"], "neurons": c["neurons"],
            "population_processes": c["population_processes"], "core_plan": n["plan"], "by_class": c["by_class"],
            "seconds": t, "lava_phases_s": phases, "lava_cpu_s_by_class": cpu,
            "parity_s_per_image": per_image, "target_s_per_image": target,
            "target_met": None if target is None else per_image <= target,
            "run_ms_per_process_step": 1e3 * phases["run"]["median"] / (n["steps"] * c["processes"]),
            "start_ms_per_process": 1e3 * phases["start"]["median"] / c["processes"],
            "parity_passed_all_rounds": all(n["parity"]), "parity_rounds": n["parity"],
            "coverage": n["coverage"], "process_models": n["models"], "slices": n.get("slices"),
        }
    sweep = [r for label, r in results.items() if label != "digits"]
    growth = {}
    if len(sweep) >= 2:
        growth = {
            "models": [r["arch"] for r in sweep],
            "run_vs_process_steps": linfit([r["processes"] * r["steps"] for r in sweep],
                                           [r["lava_phases_s"]["run"]["median"] for r in sweep]),
            "start_vs_processes": linfit([r["processes"] for r in sweep],
                                         [r["lava_phases_s"]["start"]["median"] for r in sweep]),
        }
    result = {"machine": machine,
              "config": {"samples": args.samples, "repeats": args.repeats, "width": args.width, "models": args.models,
                         "input_size": args.input_size, "timesteps": args.timesteps,
                         "calib_samples": args.calib_samples, "seed": args.seed, "plan": args.plan},
              "conv_table": convs, "results": results, "growth": growth}
    if benchlib.emit_json(result, args.json):
        return result
    print(f"\nparity gate on {args.samples} image(s), median of {args.repeats} round(s) (s); Lava models: {args.models}")
    print(f"{'model':18s} {'procs':>5s} {'pops':>4s} {'steps':>5s} {'s/image':>8s} {'target':>7s} {'Lava':>7s} "
          f"{'ref':>6s} {'check':>6s} | {'load':>5s} {'build':>6s} {'start':>6s} {'run':>7s} {'stop':>6s} | parity")
    for label, r in results.items():
        s, ph = r["seconds"], r["lava_phases_s"]
        tgt = f"{r['target_s_per_image']:.0f}" if r["target_s_per_image"] else "-"
        print(f"{label:18s} {r['processes']:5d} {r['populations']:4d} {r['steps']:5d} {r['parity_s_per_image']:8.1f} "
              f"{tgt:>7s} {s['lava_wall']['median']:7.1f} {s['reference_stream']['median']:6.1f} "
              f"{s['check_parity']['median']:6.1f} | {ph['load']['median']:5.1f} {ph['build']['median']:6.1f} "
              f"{ph['start']['median']:6.1f} {ph['run']['median']:7.1f} {ph['stop']['median']:6.1f} | "
              f"{'passed' if r['parity_passed_all_rounds'] else 'FAILED'}"
              + ("" if r["target_met"] is None else f", target {'MET' if r['target_met'] else 'NOT met'}"))
        cov = r["coverage"] or {}
        print(f"{'':18s} Lava CPU s by class: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                             sorted(r["lava_cpu_s_by_class"].items(),
                                                                    key=lambda kv: -kv[1]))
              + (f"; coverage: {cov.get('populations_spiked')} of {cov.get('populations')} populations spiked, "
                 f"{cov.get('spikes_compared')} spikes, {100 * cov.get('neurons_spiked_fraction', 0):.1f}% of neurons"
                 if cov else ""))
    if growth:
        f, st = growth["run_vs_process_steps"], growth["start_vs_processes"]
        print(f"\ngrowth over {', '.join(growth['models'])}: run phase = {f['intercept']:.1f} s + "
              f"{1e3 * f['slope']:.3f} ms x (processes x steps) (R^2 {f['r2']:.3f}); start phase = "
              f"{st['intercept']:.1f} s + {1e3 * st['slope']:.1f} ms x processes (R^2 {st['r2']:.3f})")
    return result


if __name__ == "__main__":
    main()
