"""Throughput of the integer reference simulator against Lava's fixed-point simulator, same network.

    .venv/bin/python bench/reference_vs_lava.py                 # XOResNet-18 (w 0.125, 32x32, T=4) + digits QAT
    .venv/bin/python bench/reference_vs_lava.py --samples 2 --repeats 1 --models xoresnet18   # quicker
    .venv/bin/python bench/reference_vs_lava.py --json          # machine-readable result on stdout

Unit: **samples x timesteps per second** (``samples * T / seconds``).

Contenders (same scheduled integer graph, CPU):

* ``reference``: :meth:`calibration.reference.ReferenceSimulator.run_zero_delay` on a batch of
  ``--batch`` (64) samples (zero-delay timing: ``T`` steps per sample, no pipeline), spikes not
  kept (``keep_spikes=False``; the logits are what a user of the batch path gets).
* ``lava``: :func:`deploy.lava_run.run_lava` (``Loihi2SimCfg(select_tag='fixed_pt')`` in a child
  process) with Intel's process models as lava-nc ships them (``models="lava"``: the ratio stays a
  ratio to Lava itself), on one stream of ``--samples`` samples (default 2). Two figures: ``lava_wall`` =
  ``LavaRunResult.seconds`` (the whole child: imports, graph load, building the processes,
  compiling and forking one actor per Lava process, the steps, shutdown) and ``lava_run`` = the
  ``run`` phase only (the steps; excludes process start-up). Lava runs ``graph.stream_steps(N) =
  (N-1)*P + T + readout_latency`` steps for ``N`` samples (pipeline fill and the idle steps
  ``T..P-1`` of each reset interval included): that is what a Lava run costs for ``N`` samples.
* ``ours`` (beside it, not the target): the same Lava run with our process models
  (``models="xoresnet"``, :mod:`deploy.lava_models`): ``ours_wall``, ``ours_run``, and the speed-up
  over Intel's.
* ``reference_stream`` (context, not the target): ``run_stream`` on the same ``N`` samples
  (Loihi timing, ``B = 1``), i.e. exactly the steps Lava runs.

Parity: every repeat checks :func:`deploy.parity.check_parity` on both Lava runs against the
reference stream of the same samples (every population, neuron and step): the comparison is between
two simulators that compute the same thing. ``ratio_* = reference throughput / Lava throughput``;
target: ``>= --target`` (1000) for both.

Timing: one untimed warm-up of the reference per model; then ``--repeats`` rounds, each round
timing, per model, the reference batch (once per ``--threads`` setting: on a 2-core machine with a
background job, torch's default of 2 intra-op threads can be much slower than 1 for these small
integer ops), the Lava run and the reference stream (interleaved); medians over rounds (min/max
shown; ``per round`` ratios pair the reference and Lava of the same round). The machine's load average is printed at start and end.
Network setup (model, calibration on ``--calib-samples`` random images, scheduling) is not timed.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

MODELS = ("xoresnet18", "digits")


def build(name: str, args):
    """``(label, graph, batch pixels [B, ...], stream pixels [N, ...], description)``."""
    if name == "digits":
        cfg, graph, test = benchlib.digits_graph(Path(args.digits_checkpoint))
        reps = -(-args.batch // len(test))
        batch = test.repeat(reps, 1, 1, 1)[: args.batch]
        stream = test[: args.samples]
        desc = (f"{Path(args.digits_checkpoint).name} ({cfg.arch}, width {cfg.width_factor}, "
                f"{cfg.input_size}x{cfg.input_size}x{cfg.in_channels}, T={cfg.timesteps}); digits test images")
        return name, cfg, graph, batch, stream, desc
    cfg, graph = benchlib.random_network_graph(name, args.width, input_size=args.input_size, timesteps=args.timesteps,
                                               seed=args.seed, calib_samples=args.calib_samples)
    batch = benchlib.random_inputs(cfg, args.batch, args.seed + 2)
    stream = benchlib.random_inputs(cfg, args.samples, args.seed + 3)
    desc = (f"{name} width {args.width}, {args.input_size}x{args.input_size}x3, T={args.timesteps} (firing_model seed "
            f"{args.seed}, untrained, trained-like firing); random images")
    return name, cfg, graph, batch, stream, desc


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated: architecture presets (xoresnet18, ...) and/or 'digits'")
    p.add_argument("--width", type=float, default=0.125, help="width factor of the random-weight networks")
    benchlib.add_network_args(p, repeats=3, timeout=1200.0)
    p.add_argument("--batch", type=int, default=64, help="reference zero-delay batch size")
    p.add_argument("--target", type=float, default=1000.0, help="target ratio reference / Lava")
    p.add_argument("--threads", default="1,default",
                   help="comma-separated torch thread counts for the reference ('default' = torch's default); each "
                        "is timed in every round (Lava does not use torch)")
    args = p.parse_args(argv)

    import torch

    default_threads = torch.get_num_threads()
    thread_list = []
    for t in args.threads.split(","):
        n = default_threads if t.strip() == "default" else int(t)
        if n not in thread_list:
            thread_list.append(n)
    from deploy.lava_graph import describe_lava_network
    from deploy.lava_run import run_lava
    from deploy.parity import check_parity
    from calibration.reference import ReferenceSimulator

    machine = benchlib.machine_info()
    log = benchlib.start_log(machine, args.json)

    nets = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        t0 = time.perf_counter()
        label, cfg, graph, batch, stream, desc = build(name, args)
        sim = ReferenceSimulator(graph)
        sim.run_zero_delay(batch, keep_spikes=False)  # warm-up (untimed)
        counts = describe_lava_network(graph)["counts"]
        nets.append(dict(label=label, graph=graph, sim=sim, batch=batch, stream=stream, desc=desc, counts=counts,
                         T=graph.timesteps, steps=graph.stream_steps(int(stream.shape[0])),
                         times={**{f"reference_t{n}": [] for n in thread_list}, "lava_wall": [], "lava_run": [],
                                "ours_wall": [], "ours_run": [], "reference_stream": []},
                         phases=[], parity=[]))
        log(f"setup {label}: {desc}; {counts['populations']} populations, {counts['neurons']} neurons, "
            f"{counts['processes']} Lava processes; {time.perf_counter() - t0:.1f} s (untimed)")

    for r in range(args.repeats):
        for n in nets:
            g, sim = n["graph"], n["sim"]
            for nt in thread_list:
                torch.set_num_threads(nt)
                t0 = time.perf_counter()
                sim.run_zero_delay(n["batch"], keep_spikes=False)
                n["times"][f"reference_t{nt}"].append(time.perf_counter() - t0)
            torch.set_num_threads(default_threads)
            lava = run_lava(g, n["stream"].numpy(), timeout=args.timeout, models="lava")
            n["times"]["lava_wall"].append(lava.seconds)
            n["times"]["lava_run"].append(lava.phases["run"])
            n["phases"].append(dict(lava.phases))
            ours = run_lava(g, n["stream"].numpy(), timeout=args.timeout, models="xoresnet")
            n["times"]["ours_wall"].append(ours.seconds)
            n["times"]["ours_run"].append(ours.phases["run"])
            t0 = time.perf_counter()
            ref = sim.run_stream(n["stream"].unsqueeze(0))
            n["times"]["reference_stream"].append(time.perf_counter() - t0)
            reps = [check_parity(g, ref, run) for run in (lava, ours)]
            n["parity"].append(all(rep.passed for rep in reps))
            log(f"round {r + 1}/{args.repeats} {n['label']}: reference "
                + ", ".join(f"{n['times'][f'reference_t{nt}'][-1]:.3f} s ({nt} thr)" for nt in thread_list) + ", "
                f"Lava {lava.seconds:.2f} s (run {lava.phases['run']:.2f} s), ours {ours.seconds:.2f} s (run "
                f"{ours.phases['run']:.2f} s), reference stream {n['times']['reference_stream'][-1]:.3f} s; "
                + "; ".join(rep.summary() if not rep.passed else "parity passed" for rep in reps))

    machine = benchlib.finish_machine_info(machine)
    results = {}
    for n in nets:
        B, N, T = int(n["batch"].shape[0]), int(n["stream"].shape[0]), n["T"]
        t = {k: benchlib.summary(v) for k, v in n["times"].items()}
        thr = {k: (B if k.startswith("reference_t") else N) * T / t[k]["median"] for k in t}
        phases = {k: benchlib.summary([ph[k] for ph in n["phases"] if k in ph]) for k in
                  ("load", "build", "start", "run", "stop")}
        ratios = {}
        for nt in thread_list:
            ref = f"reference_t{nt}"
            for kind in ("wall", "run"):
                lv = f"lava_{kind}"
                per_round = [(B / a) / (N / w) for a, w in zip(n["times"][ref], n["times"][lv])]  # paired in a round
                ratio = thr[ref] / thr[lv]
                ratios[f"threads{nt}_{kind}"] = {"ratio_of_medians": ratio, "per_round": benchlib.summary(per_round),
                                                 "target_met": ratio >= args.target}
        results[n["label"]] = {
            "description": n["desc"], "counts": n["counts"], "batch": B, "lava_samples": N, "timesteps": T,
            "reset_interval": n["graph"].reset_interval, "lava_steps": n["steps"], "reference_threads": thread_list,
            "seconds": t, "lava_phases_s": phases,
            "throughput_sample_timesteps_per_s": thr,
            "lava_steps_per_s_run_phase": n["steps"] / t["lava_run"]["median"],
            "ratios_reference_over_lava": ratios,
            "ratio_reference_stream_over_lava_run": thr["reference_stream"] / thr["lava_run"],
            "speedup_ours_over_lava": {"wall": thr["ours_wall"] / thr["lava_wall"], "run": thr["ours_run"] / thr["lava_run"]},
            "target_ratio": args.target,
            "parity_passed_all_rounds": all(n["parity"]), "parity_rounds": n["parity"],
        }
    result = {"machine": machine,
              "config": {"models": [n["label"] for n in nets], "width": args.width, "input_size": args.input_size,
                         "timesteps": args.timesteps, "batch": args.batch, "samples": args.samples,
                         "repeats": args.repeats, "calib_samples": args.calib_samples, "seed": args.seed,
                         "reference_threads": thread_list,
                         "peak_rss_mib_parent": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
              "results": results}
    if benchlib.emit_json(result, args.json):
        return result
    print(f"\nthroughput in samples x timesteps / s (median of {args.repeats} rounds; time min-max in brackets)")
    for label, r in results.items():
        s, thr = r["seconds"], r["throughput_sample_timesteps_per_s"]
        print(f"{label}: {r['counts']['processes']} Lava processes, {r['lava_steps']} Lava steps for "
              f"{r['lava_samples']} samples (P={r['reset_interval']}, T={r['timesteps']})")
        for nt in r["reference_threads"]:
            k = f"reference_t{nt}"
            print(f"  reference zero-delay, batch {r['batch']}, {nt} thr: {thr[k]:10.2f}   [{benchlib.fmt_s(s[k])}]")
        print(f"  Lava whole run (wall)            : {thr['lava_wall']:10.4f}   [{benchlib.fmt_s(s['lava_wall'])}]")
        print(f"  Lava 'run' phase only            : {thr['lava_run']:10.4f}   [{benchlib.fmt_s(s['lava_run'])}]")
        sp = r["speedup_ours_over_lava"]
        print(f"  Lava with our models (wall)      : {thr['ours_wall']:10.4f}   [{benchlib.fmt_s(s['ours_wall'])}]  "
              f"({sp['wall']:.1f}x Intel's)")
        print(f"  ... 'run' phase only             : {thr['ours_run']:10.4f}   [{benchlib.fmt_s(s['ours_run'])}]  "
              f"({sp['run']:.1f}x Intel's)")
        print(f"  reference stream, B=1 (context)  : {thr['reference_stream']:10.2f}   "
              f"[{benchlib.fmt_s(s['reference_stream'])}]")
        ph = r["lava_phases_s"]
        print("  Lava phases (median s): " + ", ".join(f"{k} {v['median']:.2f}" for k, v in ph.items() if v["n"]))
        for key, v in r["ratios_reference_over_lava"].items():
            pr = v["per_round"]
            print(f"  ratio reference / Lava [{key.replace('threads', 'ref threads ').replace('_', ', Lava ')}]: "
                  f"{v['ratio_of_medians']:8.1f}x  (per round {pr['min']:.1f}-{pr['max']:.1f}); target >= "
                  f"{args.target:g}x: {'MET' if v['target_met'] else 'NOT met'}")
        print(f"  parity (reference stream == Lava, both model sets, every round): "
              f"{'passed' if r['parity_passed_all_rounds'] else 'FAILED ' + str(r['parity_rounds'])}")
    return result


if __name__ == "__main__":
    main()
