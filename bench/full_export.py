"""The whole ``xoresnet-export --target loihi2`` of a paper-scale network, end to end: seconds, peak memory,
verdict.

What it runs: the real command (a child process) on an XOResNet preset at width 1.0 with every stage
(checkpoint load, NIR export and the architecture's design rules, float evaluation and the NIR
interpreter check, calibration, design rules on the calibrated weights, integer-reference statistics,
Lava parity, report, manifest).

What it runs on (no dataset can be downloaded here): an **untrained** network whose batch norms are set so
that its neurons fire at trained-like rates (``tests/conftest.py: firing_model``, on the same images), and
real photographs: 32x32 (or 84x84) crops of scikit-learn's two bundled sample images
(``sklearn.datasets.load_sample_images``), written as a CIFAR-10 test batch (or miniImageNet folders) in
torchvision's on-disk layout, with calibration crops as ``--calib-data``. The labels are arbitrary, so the
accuracy it prints means nothing; the figures are the export's cost and its parity verdict.
28x28 networks run on the bundled MNIST subset instead (real digits, real labels, one input channel).

    .venv/bin/python bench/full_export.py                         # XOResNet-18, 32x32, 1 parity image
    .venv/bin/python bench/full_export.py --arch xoresnet101 --input-size 84 --eval-samples 32
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import benchlib

EXE = Path(sys.executable).parent / "xoresnet-export"


def photo_crops(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` random ``size`` x ``size`` crops (uint8 ``[n, 3, size, size]``) of scikit-learn's sample photos,
    at a random scale between the crop size and a quarter of the photo's height."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two RGB photos, 427 x 640
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size, max(size + 1, photo.shape[0] // 4)))
        y, x = (int(rng.integers(0, photo.shape[k] - side)) for k in (0, 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(crop).transpose(2, 0, 1)
    return out


def write_dataset(root: Path, size: int, test_images: int, seed: int) -> str:
    """Write ``test_images`` photo crops as a test split in torchvision's layout; returns the dataset name."""
    pixels = photo_crops(test_images, size, seed)
    labels = [i % 10 for i in range(test_images)]
    if size == 32:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({b"data": pixels.reshape(test_images, -1), b"labels": labels}, f)
        return "cifar10"
    from PIL import Image

    for i, (img, label) in enumerate(zip(pixels, labels)):
        d = root / "miniImageNet" / "test" / f"class{label:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i:05d}.png")
    return "miniimagenet"


def make_checkpoint(path: Path, arch: str, size: int, timesteps: int, calib: np.ndarray, seed: int) -> dict:
    import torch

    from xoresnet.checkpoint import save_checkpoint
    from xoresnet.config import NetworkConfig

    firing_model, _ = benchlib.import_test_helpers()
    mnist = size == 28
    cfg = NetworkConfig.preset(arch, width_factor=1.0, input_size=size, in_channels=1 if mnist else 3,
                               num_classes=10, timesteps=timesteps)
    model = firing_model(cfg, seed, calib_pixels=torch.as_tensor(calib[:32]))
    save_checkpoint(path, model, {"dataset": "mnist" if mnist else None,
                                  "note": "bench/full_export.py: untrained firing_model, batch norms set on photo crops"})
    return {"parameters": sum(p.numel() for p in model.parameters()), "bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="xoresnet18", choices=["xoresnet18", "xoresnet34", "xoresnet50", "xoresnet101"])
    p.add_argument("--input-size", type=int, default=32, choices=[28, 32, 84])
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--eval-samples", type=int, default=64, help="test images for the statistics (default 64)")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--parity-samples", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600, help="Lava's --timeout (s)")
    p.add_argument("--keep", type=Path, help="keep the export folder here (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    machine = benchlib.machine_info()
    with tempfile.TemporaryDirectory(prefix="xoresnet-full-export-") as tmp:
        tmp = Path(tmp)
        ckpt = tmp / f"{args.arch}-w1.pt"
        if args.input_size == 28:
            from xoresnet.data import load_dataset

            dataset, data_dir = "mnist", None
            calib = load_dataset("mnist", "train", limit=args.calib_samples).pixels.numpy()
        else:
            data_dir = tmp / "data"
            dataset = write_dataset(data_dir, args.input_size, max(args.eval_samples, args.parity_samples), args.seed)
            calib = photo_crops(args.calib_samples, args.input_size, args.seed + 1)
        np.save(tmp / "calib.npy", calib)
        made = make_checkpoint(ckpt, args.arch, args.input_size, args.timesteps, calib, args.seed)
        out = args.keep or tmp / "export"
        cmd = [str(EXE), str(ckpt), "--target", "loihi2", "--out", str(out), "--dataset", dataset,
               "--calib-data", str(tmp / "calib.npy"), "--eval-samples", str(args.eval_samples),
               "--parity-samples", str(args.parity_samples), "--timeout", str(args.timeout), "--no-progress"]
        if data_dir is not None:
            cmd += ["--data-dir", str(data_dir)]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        manifest = json.loads((out / "manifest.json").read_text()) if run.returncode == 0 else {}
    stages = [ln for ln in run.stderr.splitlines() if re.match(r"\s*\[\d/\d\]|\s{6}\S", ln)]
    result = {
        "network": f"{args.arch} width 1.0, {args.input_size}x{args.input_size}, T={args.timesteps}",
        "data": dataset if dataset == "mnist" else f"{dataset} layout, photo crops (arbitrary labels)",
        "checkpoint": made, "exit_code": run.returncode, "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_gib, 2), "stdout": run.stdout.strip().splitlines(),
        "error": run.stderr.strip().splitlines()[-1:] if run.returncode else [], "stages": stages,
        "verdict": manifest.get("verdict"), "machine": benchlib.finish_machine_info(machine),
    }
    if not benchlib.emit_json(result, args.json):
        print(benchlib.machine_line(result["machine"]))
        print(f"{result['network']} on {result['data']}: {made['parameters']:,} parameters")
        print(f"xoresnet-export exit {run.returncode} in {seconds:.1f} s, largest process {peak_gib:.2f} GiB (peak RSS)")
        for line in stages + result["stdout"] + result["error"]:
            print("  " + line)
        if manifest:
            print("  core plan (manifest): " + json.dumps(manifest["verdict"]["core_plan"]))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["exit_code"] == 0 else 1)
