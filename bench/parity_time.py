"""Time of the Lava parity gate per sample, and how it grows with depth.

    .venv/bin/python bench/parity_time.py                   # digits QAT, XOResNet-18 w0.125, depth sweep 18/34/50/101 w0.03125
    .venv/bin/python bench/parity_time.py --sweep xoresnet18,xoresnet34 --repeats 1   # quicker
    .venv/bin/python bench/parity_time.py --json            # machine-readable result on stdout

The parity gate of ``xoresnet-export`` (stage 6) is: the reference in Loihi timing
(:meth:`deploy.reference.ReferenceSimulator.run_stream`, one stream), the Lava run
(:func:`deploy.lava_run.run_lava`, ``Loihi2SimCfg(select_tag='fixed_pt')`` in a child process) and
:func:`deploy.parity.check_parity` on the same ``--samples`` samples (default 2). This benchmark
times the three exactly as the CLI calls them and reports, per model:

* ``parity_s_per_sample`` = (Lava wall + reference stream + check_parity) / samples;
* Lava's stream steps (``stream_steps(graph, N)``), its number of Lava processes and connections
  (:func:`deploy.lava_graph.describe_lava_network`), populations and neurons;
* Lava's per-phase split (``load``/``build``/``start``/``run``/``stop``, from the child) and the
  time outside the phases (interpreter start-up, graph/pixel files, result transfer and cleanup:
  ``wall - sum(phases)``).

Models: the bundled digits model (``models/xoresnet-digits-qat.pt``, digits test images), and
``firing_model`` networks (untrained, trained-like firing rates, random images) at 32x32, T=4:
``--models`` (default XOResNet-18 at width 0.125) and the depth sweep ``--sweep`` (default
XOResNet-18/34/50/101) at ``--sweep-width`` (default 0.03125: the Lava run time is set by the
number of processes and steps, not the width, and 0.03125 keeps the reference and calibration
setup short). Growth: least-squares fits of the ``run`` phase against ``processes x steps``
(seconds per process-step), the ``start`` phase against processes, and the time per sample
against populations.

Timing: ``--repeats`` rounds over all models, interleaved; medians (min/max shown). Setup (model,
calibration on ``--calib-samples`` random images, scheduling) is not timed. Loads are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

PHASES = ("load", "build", "start", "run", "stop")


def linfit(xs: list[float], ys: list[float]) -> dict:
    """Least squares ``y = a + b x`` and its R^2 (None with fewer than 2 distinct x)."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return {"intercept": None, "slope": None, "r2": None, "points": n}
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return {"intercept": a, "slope": b, "r2": 1 - ss_res / ss_tot if ss_tot else None, "points": n}


def proportional(xs: list[float], ys: list[float]) -> dict:
    """Least squares ``y = k x`` through the origin, and the per-point ``y / x``."""
    if not xs:
        return {"k": None, "per_point": []}
    k = sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
    return {"k": k, "per_point": [y / x for x, y in zip(xs, ys)]}


def lava_conv_cost(graph, steps: int, *, rate: float = 0.2, calls: int = 3, seed: int = 0) -> dict:
    """Serial CPU seconds Lava's fixed-point ``Conv`` models spend computing over ``steps`` steps.

    Times, in this process, the function ``PyConvModelFixed.run_spk`` calls every step
    (``lava.proc.conv.utils.conv``: ``C_out x C_in`` ``scipy.signal.convolve2d`` calls) on every
    conv synapse of ``graph``, with random binary spikes at ``rate`` (graded pixels for the input
    synapse), median of ``calls`` calls, times ``steps``. ``groups`` is passed as a Python int (the
    Lava model passes its int8 Var: see docs/performance.md). Messaging is not included."""
    import statistics

    import numpy as np

    from deploy.lava_compat import lava_ready
    from deploy.lava_graph import conv_weight_to_lava, lava_shape, xy

    lava_ready()
    from lava.proc.conv import utils

    rng = np.random.default_rng(seed)
    per_step, pairs = 0.0, 0
    for syn in graph.synapses:
        if syn.kind != "conv":
            continue
        w = conv_weight_to_lava(syn.weight).astype(np.int32)
        shape = lava_shape(graph.source_shape(syn.src))
        x = (rng.integers(0, graph.input_levels + 1, shape) if syn.graded else rng.random(shape) < rate).astype(
            np.int32 if syn.graded else bool)
        ks = np.array(w.shape[1:3], dtype=np.int8)
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            utils.conv(x, w, ks, np.array(xy(syn.stride), np.int8), np.array(xy(syn.padding), np.int8),
                       np.array([1, 1], np.int8), int(syn.groups))
            ts.append(time.perf_counter() - t0)
        per_step += statistics.median(ts)
        pairs += int(w.shape[0]) * int(w.shape[3])
    return {"conv_cpu_s_per_step": per_step, "conv_cpu_s_total": per_step * steps,
            "convolve2d_calls_per_step": pairs}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--digits", action=argparse.BooleanOptionalAction, default=True, help="include the digits model")
    p.add_argument("--models", default="xoresnet18", help="comma-separated architectures at --width ('' for none)")
    p.add_argument("--width", type=float, default=0.125, help="width factor of --models")
    p.add_argument("--sweep", default="xoresnet18,xoresnet34,xoresnet50,xoresnet101",
                   help="comma-separated architectures of the depth sweep at --sweep-width ('' for none)")
    p.add_argument("--sweep-width", type=float, default=0.03125, help="width factor of the depth sweep")
    benchlib.add_network_args(p, repeats=2, timeout=1800.0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--conv-cost", action=argparse.BooleanOptionalAction, default=True,
                   help="estimate the CPU time of Lava's Conv models in this process (what dominates the run phase)")
    args = p.parse_args(argv)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from deploy.lava_graph import describe_lava_network
    from deploy.lava_run import run_lava
    from deploy.parity import check_parity
    from deploy.reference import ReferenceSimulator, stream_steps

    machine = benchlib.machine_info()
    log = (lambda *a, **k: None) if args.json else (lambda *a, **k: print(*a, **k, flush=True))
    log(benchlib.machine_line(machine))
    log(f"load at start: {machine['uptime_start']}")

    specs = []
    if args.digits:
        specs.append(("digits", None, None))
    specs += [(f"{a}-w{args.width:g}", a, args.width) for a in args.models.split(",") if a.strip()]
    specs += [(f"{a}-w{args.sweep_width:g}", a, args.sweep_width) for a in args.sweep.split(",") if a.strip()]
    nets, seen = [], set()
    for label, arch, width in specs:
        if label in seen:
            continue
        seen.add(label)
        t0 = time.perf_counter()
        if arch is None:
            cfg, graph, test = benchlib.digits_graph(Path(args.digits_checkpoint))
            pixels = test[: args.samples]
            desc = f"{Path(args.digits_checkpoint).name} ({cfg.arch}, 8x8x1, T={cfg.timesteps}), digits test images"
        else:
            cfg, graph = benchlib.random_network_graph(arch, width, input_size=args.input_size,
                                                       timesteps=args.timesteps, seed=args.seed,
                                                       calib_samples=args.calib_samples)
            pixels = benchlib.random_inputs(cfg, args.samples, args.seed + 3)
            desc = f"{arch} width {width:g}, {args.input_size}x{args.input_size}x3, T={args.timesteps}, random images"
        counts = describe_lava_network(graph)["counts"]
        conv = lava_conv_cost(graph, stream_steps(graph, int(pixels.shape[0])), seed=args.seed) \
            if args.conv_cost else None
        nets.append(dict(conv=conv, label=label, arch=arch or cfg.arch, width=width or cfg.width_factor, desc=desc, graph=graph,
                         sim=ReferenceSimulator(graph), pixels=pixels, counts=counts,
                         steps=stream_steps(graph, int(pixels.shape[0])),
                         t={"lava_wall": [], "reference_stream": [], "check_parity": [], "total": []},
                         phases=[], parity=[]))
        log(f"setup {label}: {desc}; {counts['populations']} populations ({counts['relays']} relays), "
            f"{counts['neurons']} neurons, {counts['processes']} Lava processes, {counts['connections']} connections, "
            f"{nets[-1]['steps']} steps; {time.perf_counter() - t0:.1f} s (untimed)")

    for r in range(args.repeats):
        for n in nets:
            g = n["graph"]
            t0 = time.perf_counter()
            ref = n["sim"].run_stream(n["pixels"].unsqueeze(0))
            t1 = time.perf_counter()
            lava = run_lava(g, n["pixels"].numpy(), timeout=args.timeout)
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
            n["parity"].append(rep.passed)
            log(f"round {r + 1}/{args.repeats} {n['label']}: Lava {lava.seconds:.1f} s ("
                + ", ".join(f"{k} {ph[k]:.1f}" for k in PHASES if k in ph)
                + f"), reference stream {t1 - t0:.2f} s, check_parity {t3 - t2:.3f} s; "
                + ("parity passed" if rep.passed else rep.summary()))

    machine = benchlib.finish_machine_info(machine)
    results = {}
    for n in nets:
        N = int(n["pixels"].shape[0])
        t = {k: benchlib.summary(v) for k, v in n["t"].items()}
        phases = {k: benchlib.summary([ph[k] for ph in n["phases"] if k in ph]) for k in PHASES + ("outside_phases",)}
        c = n["counts"]
        results[n["label"]] = {
            "description": n["desc"], "arch": n["arch"], "width": n["width"], "samples": N, "steps": n["steps"],
            "processes": c["processes"], "connections": c["connections"], "populations": c["populations"],
            "relays": c["relays"], "neurons": c["neurons"], "by_class": c["by_class"],
            "seconds": t, "lava_phases_s": phases,
            "parity_s_per_sample": t["total"]["median"] / N,
            "lava_share_of_parity": t["lava_wall"]["median"] / t["total"]["median"],
            "run_s_per_step": phases["run"]["median"] / n["steps"],
            "run_ms_per_process_step": 1e3 * phases["run"]["median"] / (n["steps"] * c["processes"]),
            "start_ms_per_process": 1e3 * phases["start"]["median"] / c["processes"],
            "parity_passed_all_rounds": all(n["parity"]), "parity_rounds": n["parity"],
            "lava_conv_estimate": n["conv"],
            "conv_cpu_share_of_run_phase": (n["conv"]["conv_cpu_s_total"] / phases["run"]["median"]
                                            if n["conv"] else None),
        }
    sweep = [r for r in results.values() if r["width"] == args.sweep_width and r["arch"].startswith("xoresnet")
             and r["arch"] in [a.strip() for a in args.sweep.split(",")]]
    growth = {}
    if len(sweep) >= 2:
        growth = {
            "models": [f"{r['arch']}-w{r['width']:g}" for r in sweep],
            "run_vs_process_steps": linfit([r["processes"] * r["steps"] for r in sweep],
                                           [r["lava_phases_s"]["run"]["median"] for r in sweep]),
            "run_per_process_step_through_origin": proportional([r["processes"] * r["steps"] for r in sweep],
                                                                [r["lava_phases_s"]["run"]["median"] for r in sweep]),
            "start_vs_processes": linfit([r["processes"] for r in sweep],
                                         [r["lava_phases_s"]["start"]["median"] for r in sweep]),
            "parity_per_sample_vs_populations": linfit([r["populations"] for r in sweep],
                                                       [r["parity_s_per_sample"] for r in sweep]),
            "parity_per_sample_vs_processes": linfit([r["processes"] for r in sweep],
                                                     [r["parity_s_per_sample"] for r in sweep]),
        }
    result = {"machine": machine,
              "config": {"samples": args.samples, "repeats": args.repeats, "width": args.width,
                         "sweep_width": args.sweep_width, "input_size": args.input_size, "timesteps": args.timesteps,
                         "calib_samples": args.calib_samples, "seed": args.seed},
              "results": results, "growth": growth}
    if benchlib.emit_json(result, args.json):
        return result
    print(f"\nparity gate on {args.samples} samples, median of {args.repeats} rounds (s; min-max in brackets)")
    hdr = (f"{'model':22s} {'procs':>5s} {'pops':>4s} {'steps':>5s} {'s/sample':>9s} {'total':>8s} {'Lava':>8s} "
           f"{'ref':>6s} {'check':>6s} | {'load':>5s} {'build':>6s} {'start':>6s} {'run':>7s} {'stop':>5s} "
           f"{'other':>5s} | {'ms/proc-step':>12s} parity")
    print(hdr)
    for label, r in results.items():
        s, ph = r["seconds"], r["lava_phases_s"]
        print(f"{label:22s} {r['processes']:5d} {r['populations']:4d} {r['steps']:5d} {r['parity_s_per_sample']:9.2f} "
              f"{s['total']['median']:8.2f} {s['lava_wall']['median']:8.2f} {s['reference_stream']['median']:6.2f} "
              f"{s['check_parity']['median']:6.3f} | {ph['load']['median']:5.2f} {ph['build']['median']:6.2f} "
              f"{ph['start']['median']:6.2f} {ph['run']['median']:7.2f} {ph['stop']['median']:5.2f} "
              f"{ph['outside_phases']['median']:5.2f} | {r['run_ms_per_process_step']:12.2f} "
              f"{'passed' if r['parity_passed_all_rounds'] else 'FAILED'}")
        conv = r["lava_conv_estimate"]
        print(f"{'':22s} spread of total: {s['total']['min']:.2f}-{s['total']['max']:.2f} s (n={s['total']['n']})"
              + (f"; Lava Conv compute {conv['conv_cpu_s_total']:.2f} CPU-s ({conv['convolve2d_calls_per_step']} "
                 f"convolve2d calls/step) = {100 * r['conv_cpu_share_of_run_phase']:.0f}% of the run phase wall"
                 if conv else ""))
    if growth:
        f, g0, st, pp = (growth["run_vs_process_steps"], growth["run_per_process_step_through_origin"],
                         growth["start_vs_processes"], growth["parity_per_sample_vs_populations"])
        print(f"\ngrowth over {', '.join(growth['models'])}:")
        print(f"  run phase = {f['intercept']:.2f} s + {1e3 * f['slope']:.3f} ms x (processes x steps)  (R^2 {f['r2']:.3f}); "
              f"through the origin {1e3 * g0['k']:.3f} ms per process-step "
              f"(per model: {', '.join(f'{1e3 * v:.2f}' for v in g0['per_point'])})")
        print(f"  start phase = {st['intercept']:.2f} s + {1e3 * st['slope']:.1f} ms x processes  (R^2 {st['r2']:.3f})")
        print(f"  parity time per sample = {pp['intercept']:.1f} s + {pp['slope']:.2f} s x populations  "
              f"(R^2 {pp['r2']:.3f}); steps grow with depth too, so the run phase grows ~ quadratically in depth")
    return result


if __name__ == "__main__":
    main()
