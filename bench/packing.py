"""Design rules before calibration and core packing of XOResNet-18/34/50/101 at width 1.0.

Per preset and input size (28, 32, 84 px; the 84 px stem is conv stride 2 + OR pooling): the time
of ``xoresnet-export``'s architecture check (:func:`deploy.pipeline.architecture_check`: float
graph, architecture graph at 8-bit weights, scheduling, connectivity, design rules and packing;
the NIR export before it timed apart) and of the packing alone (:func:`hw_targets.packing.pack`),
and what they find: cores, chips of 120 cores, the smallest system that fits, the lower bound
(per layer ``max(neurons / 4096, distinct-weight SynMem / 12000)``), the ratio, the tile rule's
minimum (per layer the fewest cores lava-loihi's rule gives it on its own,
:func:`hw_targets.packing.rule_minimum`) and the cores' ratio to it, fan-in splits, and
the core plan (populations cut into channel parts, identity synapses lowered as depthwise
convolutions, Lava processes); beside them the cores and ratio of the same graph packed without
channel partitions (``pack(..., partition=False)``: every population one process, every identity
synapse ``Sparse``, as before the core plan).

The networks are untrained with every batch-norm scale set to 1 (a zero-initialised batch norm
would make a conv kernel all zero, which the checks would rightly cost at 1 bit); nothing here
depends on the weights' values beyond that. One round (each check takes seconds): timings on a
shared machine are noisy, the load is printed.

    .venv/bin/python bench/packing.py [--archs xoresnet18,...] [--sizes 28,32,84] [--json]
"""

from __future__ import annotations

import argparse
import time

from benchlib import emit_json, finish_machine_info, machine_info, machine_line

PRESETS = ("xoresnet18", "xoresnet34", "xoresnet50", "xoresnet101")


def model_of(arch: str, size: int):
    import torch

    from xoresnet.config import NetworkConfig
    from xoresnet.network import build_network

    model = build_network(NetworkConfig.preset(arch, input_size=size)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
    return model


def measure(arch: str, size: int) -> dict:
    from calibration.architecture import architecture_graph
    from calibration.float_graph import nir_to_float_graph
    from deploy.lava_graph import describe_lava_network
    from xoresnet.nir.export import export_nir
    from deploy.pipeline import architecture_check, map_to_cores
    from hw_targets import get_target
    from hw_targets.packing import pack

    target = get_target("loihi2")
    model = model_of(arch, size)
    t0 = time.perf_counter()
    nir_graph = export_nir(model)
    t1 = time.perf_counter()
    check = architecture_check(nir_graph, target)
    t2 = time.perf_counter()
    graph = map_to_cores(architecture_graph(nir_to_float_graph(nir_graph)), target).graph
    t3 = time.perf_counter()
    pack(graph, target.systems)
    t4 = time.perf_counter()
    whole = pack(graph, target.systems, partition=False)
    p = check.drc.packing
    counts = describe_lava_network(graph)["counts"]
    return {"arch": arch, "input_size": size, "neurons": int(sum(x.size for x in graph.populations.values())),
            "nir_export_s": round(t1 - t0, 2), "architecture_check_s": round(t2 - t1, 2), "pack_s": round(t4 - t3, 2),
            "passed": check.passed, "cores": p.num_cores, "chips": p.chips, "system": p.smallest_system,
            "lower_bound": round(p.lower_bound, 1), "ratio": round(p.bound_ratio, 3),
            "rule_minimum": p.rule_minimum_cores, "rule_ratio": round(p.rule_ratio, 3),
            "cores_unpartitioned": whole.num_cores, "ratio_unpartitioned": round(whole.bound_ratio, 3),
            "cut_populations": p.plan.cut_populations, "populations": len(graph.populations),
            "depthwise_identities": len(p.plan.depthwise),
            "identities": sum(s.kind == "identity" for s in graph.synapses),
            "lava_processes": counts["processes"], "population_processes": counts["population_processes"],
            "fan_in_splits": [{"layer": s.layer, "parts": len(s.parts), "cores": s.cores, "built": s.built}
                              for s in p.splits]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=",".join(PRESETS))
    ap.add_argument("--sizes", default="28,32,84")
    ap.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = ap.parse_args()
    machine = machine_info()
    if not args.json:
        print(machine_line(machine))
        print(f"load at start: {machine['uptime_start']}")
        print("| model | input | neurons | NIR export | architecture check | packing | cores | chips | system | "
              "lower bound | ratio | tile-rule minimum, / bound | cores / rule minimum | unpartitioned: cores, ratio | cut populations | identities as depthwise conv | "
              "Lava processes | fan-in splits |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for arch in args.archs.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(arch, size)
            rows.append(r)
            if not args.json:
                splits = "; ".join(f"{s['layer']}: {s['parts']} parts, {s['cores']} cores"
                                   + ("" if s["built"] else " (not built)") for s in r["fan_in_splits"])
                print(f"| {arch} | {size} px | {r['neurons']:,} | {r['nir_export_s']:.1f} s | "
                      f"{r['architecture_check_s']:.1f} s | {r['pack_s']:.2f} s | {r['cores']:,} | {r['chips']} | "
                      f"{r['system']} | {r['lower_bound']:,.1f} | {r['ratio']:.2f} | {r['rule_minimum']:,}, "
                      f"{r['rule_minimum'] / r['lower_bound']:.2f} | {r['rule_ratio']:.3f} | {r['cores_unpartitioned']:,}, "
                      f"{r['ratio_unpartitioned']:.2f} | {r['cut_populations']} of {r['populations']} | "
                      f"{r['depthwise_identities']} of {r['identities']} | "
                      f"{r['lava_processes']:,} | {splits or '-'} |", flush=True)
    emit_json({"machine": finish_machine_info(machine), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
