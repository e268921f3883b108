"""``xoresnet-export``: checkpoint -> NIR -> Loihi integers -> Lava, proved bit-exact before dispatch.

Stages (each a function of :mod:`deploy` / :mod:`calibration` / :mod:`hw_targets`):

1. load the checkpoint (weights-only) and the data (calibration images: the first N of the
   training split; evaluation and parity images: the first N of the test split);
2. export the float NIR graph and check the NIR interpreter against PyTorch;
3. calibrate to Loihi 2 integers (or keep a QAT checkpoint's scales) and balance the delays;
4. design-rule check and core packing for the target;
5. integer reference over the evaluation images: accuracy, spike statistics, energy;
6. Lava (``Loihi2SimCfg('fixed_pt')``) on the parity images against the reference in Loihi timing:
   every population, neuron and step must be equal, or the export fails (exit 5);
7. write the artifacts atomically into ``--out`` (``manifest.json`` is the parity certificate);
8. ``--dispatch``: run on Loihi 2 hardware, only after parity passed.

Exit codes: see :mod:`xoresnet.errors`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from xoresnet.errors import DataError, UnsupportedModelError, XoresnetError, run_cli

PROG = "xoresnet-export"
MANIFEST_FORMAT = "xoresnet-export"
MANIFEST_VERSION = 1
TARGET_CHOICES = ("loihi2", "lava-sim", "onnx")


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Export a trained XOResNet checkpoint for Loihi 2: NIR graph, Loihi integer graph, Lava process "
                    "graph, bit-exact parity certificate, resource/energy report; optionally dispatch to hardware.")
    p.add_argument("checkpoint", help="xoresnet checkpoint (.pt)")
    p.add_argument("--target", default="loihi2", help=f"deployment target: {', '.join(TARGET_CHOICES)} (default loihi2)")
    p.add_argument("--out", help="artifact folder (default: out/<checkpoint name>); replaced atomically")
    p.add_argument("--dataset", help="dataset for calibration, evaluation and parity images (default: the one the "
                                     "checkpoint was trained on)")
    p.add_argument("--data-dir", help="folder with the dataset files (not needed for digits)")
    p.add_argument("--calib-data", metavar="NPY",
                   help="calibration images as a .npy of integer pixels [N, C, H, W] (default: training split)")
    p.add_argument("--calib-samples", type=int, default=64, help="calibration images (default 64)")
    p.add_argument("--eval-samples", type=int, default=1000,
                   help="test images for the integer accuracy and the report statistics (default 1000; 0 = all)")
    p.add_argument("--parity-samples", type=int, default=4,
                   help="test images run on Lava and compared bit for bit with the reference (default 4)")
    p.add_argument("--timesteps", "-T", type=int, help="override the model's number of timesteps")
    p.add_argument("--timeout", type=float, default=900.0, help="wall-clock limit of the Lava run in seconds")
    p.add_argument("--system", choices=("oheo-gulch", "kapoho-point", "hala-point"),
                   help="Loihi 2 system to pack onto (default: the smallest that fits)")
    p.add_argument("--energy-table", help="JSON file overriding the energy-per-operation table")
    p.add_argument("--dispatch", action="store_true", help="after parity passes, run on Loihi 2 hardware (lava-loihi)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("xoresnet", "torch", "numpy", "scipy", "nir", "h5py", "lava-nc", "onnx", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def sha256(path: Path) -> str:
    from xoresnet.checkpoint import file_sha256

    return file_sha256(path)


def load_pixels_npy(path: str, shape: tuple[int, ...], levels: int) -> torch.Tensor:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"--calib-data {path}: not a readable .npy array ({e})") from None
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(shape) or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"--calib-data {path}: need integer pixels of shape [N, {', '.join(map(str, shape))}], "
                        f"got {arr.dtype} {arr.shape}")
    if arr.min() < 0 or arr.max() > levels:
        raise DataError(f"--calib-data {path}: pixel values must lie in 0..{levels}")
    return torch.as_tensor(arr.astype(np.int64))


class ArtifactDir:
    """Collects the artifacts in a temporary folder beside ``out`` and swaps it in at the end."""

    def __init__(self, out: Path):
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; the final folder follows the umask
        self.files: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        self.files[name] = self.tmp / name
        return self.files[name]

    def write_json(self, name: str, data: Any) -> Path:
        p = self.path(name)
        p.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")
        return p

    def hashes(self) -> dict[str, str]:
        return {name: sha256(p) for name, p in sorted(self.files.items())}

    def commit(self) -> None:
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-able: {type(x).__name__}")


def export(args: argparse.Namespace) -> int:
    from hw_targets import get_target

    target = get_target(args.target)
    t_start = time.time()
    from xoresnet.checkpoint import load_model

    say(f"[1/8] loading {args.checkpoint}")
    model, ckpt = load_model(args.checkpoint)
    if args.timesteps:
        if args.timesteps < 1:
            raise UnsupportedModelError("--timesteps must be >= 1")
        model.config = model.config.replace(timesteps=args.timesteps)
    cfg = model.config
    dataset = args.dataset or ckpt.meta.get("dataset")
    if dataset is None:
        raise DataError("the checkpoint does not name its dataset: pass --dataset")
    from xoresnet.data import DATASETS, load_dataset

    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    test = load_dataset(dataset, "test", args.data_dir)
    if tuple(test.pixels.shape[1:]) != (cfg.in_channels, cfg.input_size, cfg.input_size):
        raise DataError(f"dataset {dataset} has images {tuple(test.pixels.shape[1:])}, the model expects "
                        f"{(cfg.in_channels, cfg.input_size, cfg.input_size)}")
    n_eval = len(test) if args.eval_samples in (0, None) else min(args.eval_samples, len(test))
    eval_pixels, eval_labels = test.pixels[:n_eval], test.labels[:n_eval]
    out = Path(args.out or Path("out") / Path(args.checkpoint).stem)
    artifacts = ArtifactDir(out)
    try:
        if target.name == "onnx":
            summary = export_onnx_target(args, model, ckpt, target, eval_pixels, artifacts, dataset)
        else:
            summary = export_loihi(args, model, ckpt, target, dataset, test, eval_pixels, eval_labels, artifacts)
        summary["seconds"] = round(time.time() - t_start, 1)
        manifest = summary.pop("manifest")
        manifest["artifacts"] = artifacts.hashes()
        manifest["seconds"] = summary["seconds"]
        artifacts.write_json("manifest.json", manifest)
        artifacts.commit()
    except BaseException:
        artifacts.discard()
        raise
    print_summary(summary, out)
    if args.dispatch:
        say("[8/8] dispatching to Loihi 2")
        result = target.dispatch(out, pixels=eval_pixels[: args.parity_samples].numpy())
        print(f"dispatch: {result}")
    return 0


def base_manifest(args, ckpt, target, dataset: str) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([PROG] + sys.argv[1:]),
        "target": target.name,
        "checkpoint": {"path": str(args.checkpoint), "sha256": ckpt.sha256, "qat": ckpt.quant is not None,
                       "config": ckpt.config.to_dict()},
        "data": {"dataset": dataset, "calibration": (f"{args.calib_data}" if args.calib_data else
                                                     f"train split, first {args.calib_samples} images"),
                 "evaluation": f"test split, first {args.eval_samples or 'all'} images",
                 "parity": f"test split, first {args.parity_samples} images", "seed": None,
                 "note": "sample selection is deterministic (the first N images of each split); no randomness"},
        "versions": package_versions(),
    }


def export_loihi(args, model, ckpt, target, dataset, test, eval_pixels, eval_labels, artifacts: ArtifactDir) -> dict:
    from calibration.integer_graph import save_integer_graph
    from deploy.lava_graph import describe_lava_network
    from deploy.lava_run import run_lava
    from deploy.nir_check import compare_nir_to_model
    from deploy.nir_export import export_nir, write_nir
    from deploy.parity import check_parity
    from deploy.pipeline import calibrate_checkpoint, calibration_pixels
    from deploy.reference import ReferenceSimulator
    from deploy.schedule import schedule
    from hw_targets.energy import EnergyTable, estimate_energy
    from hw_targets.report import build_report, model_section, write_report
    from hw_targets.resources import check_design_rules, connectivity, require_design_rules
    from hw_targets.stats import collect_statistics
    from xoresnet.data import load_dataset
    from xoresnet.errors import ParityError
    from xoresnet.training import evaluate

    cfg = model.config
    progress = not args.no_progress
    say(f"[2/8] float model on {len(eval_pixels)} test images; NIR export and interpreter check")
    float_eval = evaluate(model, load_dataset(dataset, "test", args.data_dir, limit=len(eval_pixels)),
                          progress=progress)
    nir_graph = export_nir(model)
    write_nir(nir_graph, artifacts.path("model.nir"))
    nir_check = compare_nir_to_model(model, nir_graph, eval_pixels)
    if not nir_check["passed"]:
        raise UnsupportedModelError(
            f"the NIR interpreter disagrees with PyTorch on {nir_check['unexplained_mismatches']} neuron-steps not "
            "explained by near-threshold rounding (a bug: please report it)")
    say("[3/8] calibrating to Loihi 2 integers"
        + (" (scales from quantization-aware training)" if ckpt.quant else f" on {args.calib_samples} images"))
    if args.calib_data:
        pixels = load_pixels_npy(args.calib_data, (cfg.in_channels, cfg.input_size, cfg.input_size), cfg.input_levels)
    else:
        pixels = calibration_pixels(dataset, args.data_dir, args.calib_samples)
    calibration = calibrate_checkpoint(model, ckpt, pixels)
    graph = schedule(calibration.graph)
    save_integer_graph(graph, artifacts.path("integer_graph.h5"))
    artifacts.write_json("calibration.json", {"spec": calibration.spec.to_dict(), "report": calibration.report})
    artifacts.write_json("lava_graph.json", describe_lava_network(graph))
    say(f"[4/8] design rules and packing for {target.name}")
    conns = connectivity(graph)
    drc = require_design_rules(check_design_rules(graph, target, system=args.system, conns=conns))
    say(f"[5/8] integer reference on {len(eval_pixels)} test images (accuracy, spike statistics, energy)")
    stats, accumulator = collect_statistics(graph, eval_pixels, eval_labels, float_accuracy=float_eval["accuracy"],
                                            conns=conns)
    energy = estimate_energy(stats, graph, EnergyTable.from_json(args.energy_table) if args.energy_table else None)
    parity_pixels = test.pixels[: args.parity_samples]
    say(f"[6/8] Lava fixed-point simulation of {len(parity_pixels)} test images vs the integer reference "
        "(Loihi timing, every neuron and step)")
    reference = ReferenceSimulator(graph).run_stream(parity_pixels.unsqueeze(0))
    lava = run_lava(graph, parity_pixels.numpy(), timeout=args.timeout, progress=progress)
    parity = check_parity(graph, reference, lava)
    parity_dict = {**parity.to_dict(), "summary": parity.summary(), "lava_seconds": round(lava.seconds, 2)}
    if not parity.passed:
        failure = artifacts.out.with_name(f"{artifacts.out.name}.parity-failure.json")
        failure.write_text(json.dumps(parity_dict, indent=2, default=_json_default) + "\n")
        raise ParityError(f"{parity.summary()} (details: {failure}); nothing was written to {artifacts.out} and "
                          "dispatch is blocked")
    artifacts.write_json("parity.json", parity_dict)
    say("[7/8] writing the report and the manifest")
    report = build_report(graph=graph, target=target, drc=drc, stats=stats, energy=energy,
                          raster=accumulator.raster, model=model_section(graph, checkpoint=ckpt),
                          dataset={"name": dataset, "split": "test", "samples": stats["samples"]},
                          parity=parity_dict)
    report["nir_check"] = nir_check
    json_path, html_path = write_report(artifacts.tmp, report)
    artifacts.files["report.json"], artifacts.files["report.html"] = json_path, html_path
    manifest = base_manifest(args, ckpt, target, dataset)
    manifest["verdict"] = {
        "parity": "passed", "parity_samples": parity.samples, "neuron_steps_compared": parity.neuron_steps_compared,
        "predictions_equal": parity.predictions_equal, "nir_check": "passed", "design_rules": "passed",
        "dispatch_allowed": True,
        "statement": "Lava's Loihi2SimCfg('fixed_pt') run of integer_graph.h5 equals the xoresnet integer reference "
                     "bit for bit on every population, neuron and timestep of the parity images",
    }
    return {
        "manifest": manifest, "target": target.name, "parity": parity.summary(),
        "float_accuracy": float_eval["accuracy"], "integer_accuracy": stats["accuracy"]["integer"],
        "eval_samples": len(eval_pixels), "energy_uj": energy["loihi"]["total_pj"] / 1e6,
        "cores": drc.packing.num_cores, "chips": drc.packing.chips,
        "latency_steps": stats["latency"]["latency_steps"], "qat": ckpt.quant is not None,
        "float_parent": ckpt.meta.get("float_parent"), "report": "report.html",
    }


def export_onnx_target(args, model, ckpt, target, eval_pixels, artifacts: ArtifactDir, dataset: str) -> dict:
    from hw_targets.onnx import export_onnx_artifacts

    say(f"[2/3] exporting the float model per timestep to ONNX and checking it with onnxruntime")
    check = export_onnx_artifacts(model, artifacts.tmp, eval_pixels[: max(args.parity_samples, 1) * 8],
                                  model.config.timesteps)
    for name in ("model.onnx", "onnx_check.json"):
        artifacts.files[name] = artifacts.tmp / name
    if not check["passed"]:
        raise UnsupportedModelError(f"the ONNX model disagrees with PyTorch: {check.get('summary', check)}")
    manifest = base_manifest(args, ckpt, target, dataset)
    manifest["verdict"] = {"onnx_check": "passed", "dispatch_allowed": False}
    return {"manifest": manifest, "target": target.name, "onnx": check}


def print_summary(s: dict, out: Path) -> None:
    if s["target"] == "onnx":
        c = s["onnx"]
        print(f"ONNX export checked against PyTorch with onnxruntime: {c.get('summary', 'passed')}")
    else:
        print(f"verdict: {s['parity']}")
        fa, ia = s["float_accuracy"], s["integer_accuracy"]
        parent = s.get("float_parent") or {}
        if s["qat"] and parent.get("test_accuracy") is not None and s["eval_samples"] == parent.get("test_samples",
                                                                                                  s["eval_samples"]):
            fa, what = parent["test_accuracy"], f"the float model it was fine-tuned from ({parent['path']})"
        else:
            what = "the float model"
        drop = 100 * (fa - ia)
        print(f"accuracy on {s['eval_samples']} test images: Loihi integer {100 * ia:.2f}%, {what} {100 * fa:.2f}% "
              f"({abs(drop):.2f} pp {'below' if drop >= 0 else 'above'})")
        print(f"Loihi 2: {s['cores']} neuro-cores on {s['chips']} chip(s), latency {s['latency_steps']} timesteps"
              + (f", ~{s['energy_uj']:.2f} uJ/inference (Loihi-1-calibrated estimate)" if s["energy_uj"] else ""))
    if s["target"] != "onnx":
        print(f"report: {out / s['report']}")
    what = "manifest.json, onnx_check.json" if s["target"] == "onnx" else "manifest.json is the parity certificate"
    print(f"artifacts: {out}/ ({what}) [{s['seconds']} s]")


def export_main(argv: Optional[list[str]] = None) -> None:
    def main() -> int:
        args = export_parser().parse_args(argv)
        return export(args)

    run_cli(PROG, main)


if __name__ == "__main__":  # pragma: no cover
    export_main()
