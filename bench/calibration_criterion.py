"""How faithful the sampled scale score of calibration is (``calibration.drive.CandidateScorer``).

    .venv/bin/python bench/calibration_criterion.py               # XOResNet-18 width 1.0, 64 images; digits
    .venv/bin/python bench/calibration_criterion.py --width 0.25 --calib-samples 16       # quicker
    .venv/bin/python bench/calibration_criterion.py --score-macs 4194304,67108864 --json  # several budgets

1. **Regret** on a random-weight preset (``tests/conftest.firing_model``, random images): the
   calibration runs as :func:`calibration.quantize.calibrate` does (populations in topological
   order, each on the integer spikes of its sources at the scales the sampled score chose). At
   every neuron population :func:`calibration.quantize.choose_scale` scores the candidates twice,
   by the exact drive error (every row: one convolution over all images per candidate, what
   calibration did before) and by the sampled score at each ``--score-macs``; the regret of a
   budget is the exact drive error of the candidate it chose over the smallest exact drive error,
   minus 1 (0: the same choice as the exact criterion, or one as good); its estimate error is the
   sampled score of that candidate over its exact drive error, minus 1 (the population's
   ``current_rmse_vth`` in the report is that score).
2. **Accuracy** of the bundled digits model (``models/xoresnet-digits.pt``, calibrated on the first
   64 training images as ``xoresnet-eval --integer`` does): integer accuracy on the 450 test images
   for each budget (the default scores every digits population exactly; smaller budgets force
   sampling) and with no search at all (the largest scales).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402


def regret(args, budgets: list[int]) -> dict:
    from calibration.drive import CandidateScorer, PopulationSamples, measure
    from calibration.float_graph import nir_to_float_graph
    from calibration.integer_graph import INPUT
    from calibration.quantize import DEFAULT_CANDIDATES, choose_scale, float_trace, quantize_population
    from xoresnet.nir.export import export_nir

    firing_model, random_pixels = benchlib.import_test_helpers()
    cfg = benchlib.random_config(args.arch, args.width, args.input_size, args.timesteps)
    model = firing_model(cfg, args.seed)
    pixels = random_pixels(args.calib_samples, cfg, args.seed + 1)
    graph = export_nir(model)
    fg = nir_to_float_graph(graph)
    trace = float_trace(graph, fg, pixels)
    int_spikes, rows = {}, []
    for name, pop in fg.populations.items():
        syns = fg.incoming(name)
        view = PopulationSamples([pixels if s.src == INPUT else int_spikes[s.src] for s in syns], trace[name])
        if pop.kind == "gate":
            q = quantize_population(pop, syns, fg.input_levels, None)
        else:
            t0 = time.perf_counter()
            exact, entry = choose_scale(pop, syns, fg.input_levels, CandidateScorer(pop, syns, view, 1 << 62),
                                        fixed=None, candidates=DEFAULT_CANDIDATES)
            row = {"population": name, "shape": list(pop.shape), "exact_vth_mant": exact.population.vth_mant,
                   "exact_seconds": time.perf_counter() - t0, "budgets": {}}
            scores = {r["vth_mant"]: r["current_rmse_vth"] for r in entry["candidates"] if "current_rmse_vth" in r}
            best = min(scores.values())
            row["spread"] = max(scores.values()) / best - 1 if best > 0 else 0.0
            for macs in budgets:  # the population goes on at the scale of the last budget
                t0 = time.perf_counter()
                scorer = CandidateScorer(pop, syns, view, macs)
                q, sampled = choose_scale(pop, syns, fg.input_levels, scorer, fixed=None, candidates=DEFAULT_CANDIDATES)
                chosen = scores[q.population.vth_mant]
                estimate = next(r["current_rmse_vth"] for r in sampled["candidates"]
                                if r["vth_mant"] == q.population.vth_mant and "current_rmse_vth" in r)
                row["budgets"][macs] = {"vth_mant": q.population.vth_mant, "rows": scorer.rows,
                                        "total_rows": scorer.total_rows, "seconds": time.perf_counter() - t0,
                                        "regret": chosen / best - 1 if best > 0 else 0.0,
                                        "estimate_error": estimate / chosen - 1 if chosen > 0 else 0.0}
            rows.append(row)
        int_spikes[name] = measure(q.population, q.synapses, view, keep_spikes=True).spikes
    return {"arch": args.arch, "width": args.width, "calib_samples": args.calib_samples, "populations": rows}


def digits_accuracy(budgets: list[int]) -> dict:
    import torch

    from calibration.quantize import calibrate_nir
    from xoresnet.nir.export import export_nir
    from deploy.pipeline import calibration_pixels
    from calibration.reference import ReferenceSimulator
    from xoresnet.checkpoint import load_model
    from xoresnet.data import load_dataset

    model, _ = load_model(benchlib.REPO / "models" / "xoresnet-digits.pt")
    test = load_dataset("digits", "test")
    pixels = calibration_pixels("digits", None, 64)
    graph = export_nir(model)
    labels = torch.as_tensor(test.labels)

    def accuracy(cal) -> float:
        pred = ReferenceSimulator(cal.graph).run_zero_delay(test.pixels, keep_spikes=False).predictions
        return float((pred == labels).double().mean())

    out = {}
    for macs in budgets:
        cal = calibrate_nir(graph, pixels, score_macs=macs)
        neurons = [e for e in cal.report["populations"].values() if e["kind"] == "neuron"]
        out[macs] = {"accuracy": accuracy(cal), "sampled_populations": sum(e["scored_rows"] < e["total_rows"]
                                                                           for e in neurons),
                     "populations": len(neurons),
                     "smallest_row_fraction": min(e["scored_rows"] / e["total_rows"] for e in neurons)}
    return {"budgets": out, "no_search_accuracy": accuracy(calibrate_nir(graph, pixels[:0])), "test_images": len(labels)}


def main(argv: list[str] | None = None) -> dict:
    from calibration.drive import SCORE_MACS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="xoresnet18", help="preset for the regret")
    p.add_argument("--width", type=float, default=1.0, help="width factor")
    p.add_argument("--input-size", type=int, default=32, help="input height = width")
    p.add_argument("--timesteps", type=int, default=4, help="T")
    p.add_argument("--calib-samples", type=int, default=64, help="calibration images (the CLI's default is 64)")
    p.add_argument("--score-macs", default=f"{SCORE_MACS >> 4},{SCORE_MACS}",
                   help="comma-separated budgets (multiply-adds per candidate); the last one carries the calibration")
    p.add_argument("--digits-score-macs", default=f"{SCORE_MACS},{1 << 22},{1 << 20},{1 << 18}",
                   help="comma-separated budgets for the digits accuracy")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the calibration images")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = p.parse_args(argv)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    machine = benchlib.machine_info()
    log = benchlib.start_log(machine, args.json)
    budgets = [int(x) for x in args.score_macs.split(",")]
    result = {"machine": machine, "regret": regret(args, budgets),
              "digits": digits_accuracy([int(x) for x in args.digits_score_macs.split(",")])}
    result["machine"] = benchlib.finish_machine_info(machine)
    if benchlib.emit_json(result, args.json):
        return result
    r = result["regret"]
    print(f"\nregret of the sampled score, {r['arch']} width {r['width']:g}, {r['calib_samples']} images "
          "(exact drive error of its choice / the smallest - 1)")
    print(f"{'population':28s} {'spread':>7s} " + " ".join(f"{'2^%d' % (m.bit_length() - 1):>22s}" for m in budgets))
    for row in r["populations"]:
        cells = [f"{b['regret']:8.5f} ({b['rows']:>6d}/{b['total_rows']})" for b in row["budgets"].values()]
        print(f"{row['population'][-28:]:28s} {row['spread']:7.3f} " + " ".join(f"{c:>22s}" for c in cells))
    for m in budgets:
        regrets = [row["budgets"][m]["regret"] for row in r["populations"]]
        same = sum(row["budgets"][m]["vth_mant"] == row["exact_vth_mant"] for row in r["populations"])
        errors = [abs(row["budgets"][m]["estimate_error"]) for row in r["populations"]]
        print(f"score_macs 2^{m.bit_length() - 1}: regret max {max(regrets):.5f}, mean "
              f"{sum(regrets) / len(regrets):.6f}; the exact choice in {same}/{len(regrets)} populations; "
              f"|estimate error| max {max(errors):.4f}, mean {sum(errors) / len(errors):.4f}; scoring "
              f"{sum(row['budgets'][m]['seconds'] for row in r['populations']):.1f} s (exact: "
              f"{sum(row['exact_seconds'] for row in r['populations']):.1f} s)")
    d = result["digits"]
    print(f"\ndigits model, integer accuracy on {d['test_images']} test images (calibrated on 64 training images)")
    for m, v in d["budgets"].items():
        print(f"score_macs 2^{m.bit_length() - 1}: {100 * v['accuracy']:.2f} % ({v['sampled_populations']}/"
              f"{v['populations']} populations sampled, smallest row fraction {v['smallest_row_fraction']:.4f})")
    print(f"no search (the largest scales): {100 * d['no_search_accuracy']:.2f} %")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
