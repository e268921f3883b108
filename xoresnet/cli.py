"""Command-line entry points ``xoresnet-train`` and ``xoresnet-eval`` (exit codes: :mod:`xoresnet.errors`).

Every bad flag value is a usage error (exit 2, one line): argparse's own checks, the value types
below, and the network config's refusals of the architecture, block and neuron flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from .config import ARCH_PRESETS, BLOCK_PRESETS, MERGES, SELECTIONS, SHORTCUTS, NetworkConfig
from .errors import ConfigError, OneLineArgumentParser, UsageError, number, run_cli
from .neuron import decay_problem


POSITIVE_INT = number(int)
#: The largest --seed: the per-epoch generators are seeded with seed + 1000 * epoch + rank, which must stay a
#: 64-bit seed; every 32-bit seed is allowed.
MAX_SEED = 2**32 - 1
POSITIVE = number(float)
NON_NEGATIVE = number(float, inclusive=True)


def device_name(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda`` or ``cuda:N``, a device this machine has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"no device {text} on this machine ({torch.cuda.device_count()} CUDA devices)")
    return text


def _add_data_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    from .data import DATASETS

    p.add_argument("--dataset", choices=sorted(DATASETS), required=required,
                   help="dataset (digits and mnist are bundled; the others read --data-dir)")
    p.add_argument("--data-dir", help="folder holding FashionMNIST/, cifar-10-batches-py/, cifar-100-python/ "
                                      "or miniImageNet/ in torchvision's on-disk layout")


def network_config_from_args(args: argparse.Namespace) -> NetworkConfig:
    """The config that ``xoresnet-train``'s architecture and block flags describe.

    A config the flags make invalid or unsupported is the user's usage error (:class:`UsageError`), and so is
    a neuron that trains but cannot be deployed for its decays (:func:`xoresnet.neuron.decay_problem`).
    """
    from .data import DATASETS

    info = DATASETS[args.dataset]
    block = BLOCK_PRESETS[args.block]
    block = dataclasses.replace(block, **{k: v for k, v in (("selection", args.selection), ("merge", args.merge),
                                                            ("shortcut", args.shortcut)) if v is not None})
    overrides = dict(input_size=info.input_size, in_channels=info.in_channels, num_classes=info.num_classes,
                     input_levels=info.input_levels, timesteps=args.timesteps)
    if args.width_factor is not None:
        overrides["width_factor"] = args.width_factor
    neuron = {k: v for k, v in (("du", args.du), ("dv", args.dv), ("vth", args.vth), ("reset", args.reset))
              if v is not None}
    try:
        base = NetworkConfig.preset(args.arch, block=block)
        config = base.replace(neuron=dataclasses.replace(base.neuron, **neuron), **overrides)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    problem = decay_problem(config.neuron.du, config.neuron.dv)
    if problem:  # it would train, and then export, eval --integer and QAT would all refuse it
        raise UsageError(f"--du {config.neuron.du:g} --dv {config.neuron.dv:g}: {problem}")
    return config


def train_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="xoresnet-train",
        description="Train an XOResNet; evaluates on the held-out split every epoch and writes a resumable "
                    "checkpoint after each one. Runs on CUDA when present; under torchrun it trains data-parallel.")
    _add_data_args(p, required=True)
    a = p.add_argument_group("architecture")
    a.add_argument("--arch", choices=sorted(ARCH_PRESETS), default="xoresnet18")
    a.add_argument("--width-factor", type=float, help="scale the stage widths 64/128/256/512")
    a.add_argument("--block", choices=sorted(BLOCK_PRESETS), default="xor-or",
                   help="block variant preset (xor-or is the XOR residual block)")
    a.add_argument("--selection", choices=SELECTIONS, help="override the preset's XOR selection")
    a.add_argument("--merge", choices=MERGES, help="override the preset's merge")
    a.add_argument("--shortcut", choices=SHORTCUTS, help="override the preset's non-identity shortcut")
    a.add_argument("--timesteps", "-T", type=int, default=4)
    n = p.add_argument_group("neuron")
    n.add_argument("--du", type=float, help="current decay on the Loihi grid, (k+1)/4096 (default 1: current-free)")
    n.add_argument("--dv", type=float, help="voltage decay on the Loihi grid, k/4096 (default 0.5)")
    n.add_argument("--vth", type=float, help="threshold (default 1.0)")
    n.add_argument("--reset", choices=("hard", "soft"), help="soft reset trains but cannot be deployed")
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=POSITIVE_INT, default=30, help="total epochs (a resumed run trains up to it)")
    t.add_argument("--batch-size", type=POSITIVE_INT, default=64)
    t.add_argument("--lr", type=POSITIVE, default=1e-3, help="initial learning rate (cosine annealing to 0)")
    t.add_argument("--weight-decay", type=NON_NEGATIVE, default=1e-4)
    t.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    t.add_argument("--seed", type=number(int, inclusive=True, maximum=MAX_SEED), default=0,
                   help=f"random seed, 0..{MAX_SEED} (default 0)")
    t.add_argument("--no-augment", action="store_true", help="no random translation/flips")
    o = p.add_argument_group("run")
    o.add_argument("--out", default="runs/model.pt", help="checkpoint path (written after every epoch)")
    o.add_argument("--resume", action="store_true", help="continue from the checkpoint at --out")
    o.add_argument("--limit-train", type=POSITIVE_INT, help="use only the first N training samples")
    o.add_argument("--limit-test", type=POSITIVE_INT, help="use only the first N test samples")
    o.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when available)")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    q = p.add_argument_group("quantization-aware training")
    q.add_argument("--qat", action="store_true",
                   help="fine-tune the float model --init through the exact Loihi integer forward "
                        "(architecture flags are taken from --init)")
    q.add_argument("--init", help="float checkpoint to start quantization-aware training from")
    q.add_argument("--calib-samples", type=POSITIVE_INT, default=64,
                   help="training images used to choose the Loihi scales (default 64)")
    return p


def check_checkpoint_path(out: str) -> None:
    """``--out`` of ``xoresnet-train``: a file path whose folder can hold it. Raises
    :class:`~xoresnet.errors.UsageError` (exit 2), before any training, for a folder, a non-regular file
    (a FIFO, a device) or a parent that is a file."""
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out}: is a folder; give the checkpoint's file path (e.g. {path / 'model.pt'})")
    if path.exists() and not path.is_file():
        raise UsageError(f"--out {out}: exists and is not a regular file")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is not a folder")


def train_main(argv: list[str] | None = None) -> None:
    def main() -> int:
        from .training import TrainOptions, train

        args = train_parser().parse_args(argv)
        if args.qat != bool(args.init):
            raise UsageError("--qat fine-tunes the float model of --init: give both or neither")
        check_checkpoint_path(args.out)
        config = None if args.qat else network_config_from_args(args)
        opts = TrainOptions(
            dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer, seed=args.seed, out=args.out,
            resume=args.resume, limit_train=args.limit_train, limit_test=args.limit_test, device=args.device,
            augment=not args.no_augment, progress=not args.no_progress, qat=args.qat, init=args.init,
            calib_samples=args.calib_samples,
        )
        qat = None
        if args.qat:  # the CLI composes: Loihi 2's integer forward comes from calibration
            from calibration.qat import LOIHI2_QAT as qat
        final = train(config, opts, qat)
        if final:
            print(f"wrote {args.out}: test accuracy {100 * final['test_accuracy']:.2f}% after {final['epoch']} epochs")
        return 0

    run_cli("xoresnet-train", main)


def eval_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="xoresnet-eval",
                              description="Accuracy and firing rates of a checkpoint on a dataset split.")
    p.add_argument("checkpoint")
    _add_data_args(p, required=False)
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--limit", type=POSITIVE_INT, help="evaluate only the first N samples")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=256)
    p.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--integer", action="store_true",
                   help="also run the Loihi integer model (calibrated on --calib-samples training images, or the "
                        "scales a quantization-aware trained checkpoint carries) on the integer reference")
    p.add_argument("--calib-samples", type=POSITIVE_INT, default=64,
                   help="training images for calibration (default 64)")
    return p


def eval_main(argv: list[str] | None = None) -> None:
    def main() -> int:
        from .checkpoint import load_model
        from .data import load_dataset
        from .errors import DataError
        from .training import evaluate, require_dataset_fits

        args = eval_parser().parse_args(argv)
        model, ckpt = load_model(args.checkpoint)
        dataset = args.dataset or ckpt.meta.get("dataset")
        if dataset is None:
            raise DataError("the checkpoint does not name its dataset: pass --dataset")
        require_dataset_fits(model.config, dataset, named_by_flag=bool(args.dataset), checkpoint=args.checkpoint)
        ds = load_dataset(dataset, args.split, args.data_dir, limit=args.limit)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        result = evaluate(model.to(device), ds, batch_size=args.batch_size, device=device, stats=True)
        report = {"checkpoint": str(args.checkpoint), "dataset": dataset, "split": args.split,
                  "timesteps": model.config.timesteps, "qat": ckpt.quant is not None, "float": result}
        parent = ckpt.meta.get("float_parent")
        if parent and parent.get("test_accuracy") is not None and args.split == "test" and args.limit is None:
            report["float_parent"] = parent
        if args.integer:
            from deploy.pipeline import analyse, calibrate_checkpoint, calibration_pixels

            pixels = calibration_pixels(dataset, args.data_dir, args.calib_samples)
            calibration = calibrate_checkpoint(model.cpu(), ckpt, pixels)
            stats = analyse(calibration.graph, None, ds.pixels, ds.labels, float_accuracy=result["accuracy"],
                            batch_size=args.batch_size, device=str(device)).stats
            layers = stats["layers"]
            report["integer"] = {
                "accuracy": stats["accuracy"]["integer"], "samples": stats["samples"],
                "accuracy_drop_pp": 100 * (result["accuracy"] - stats["accuracy"]["integer"]),
                "calibration_samples": 0 if ckpt.quant is not None else int(pixels.shape[0]),
                "spikes_per_sample": stats["totals"]["spikes_per_sample"]["mean"],
                "neuron_spikes_per_sample": sum(l["spikes_per_sample"]["mean"] for l in layers if l["kind"] == "neuron"),
                "layers": {l["name"]: {"kind": l["kind"], "firing_rate": l["firing_rate"]} for l in layers},
            }
        if args.json:
            print(json.dumps(report, indent=2, sort_keys=True))
        else:
            print(format_eval_report(report))
        return 0

    run_cli("xoresnet-eval", main)


def format_eval_report(report: dict) -> str:
    r = report["float"]
    lines = [f"{report['checkpoint']} on {report['dataset']}/{report['split']} "
             f"({r['samples']} samples, T={report['timesteps']})",
             f"  float model accuracy: {100 * r['accuracy']:.2f}%  (cross-entropy {r['loss']:.4f})"
             + ("  [quantization-aware trained: its deployed accuracy is the integer one]" if report["qat"] else "")]
    if "integer" in report:
        i = report["integer"]
        how = ("the scales it was trained with" if report["qat"]
               else f"calibrated on {i['calibration_samples']} training images")
        drop = i["accuracy_drop_pp"]
        lines.append(f"  integer (Loihi) accuracy: {100 * i['accuracy']:.2f}%  "
                     f"({abs(drop):.2f} pp {'below' if drop >= 0 else 'above'} float; {how})")
        if "float_parent" in report:
            parent = report["float_parent"]
            d = 100 * (parent["test_accuracy"] - i["accuracy"])
            lines.append(f"  vs the float model it was fine-tuned from ({parent['path']}, "
                         f"{100 * parent['test_accuracy']:.2f}%): {abs(d):.2f} pp {'below' if d >= 0 else 'above'}")
        lines.append(f"  integer spikes per sample: {i['neuron_spikes_per_sample']:.1f} in LIF neurons "
                     f"({i['spikes_per_sample']:.1f} with spike-logic gates)")
    lines += [f"  spikes per sample:    {r['spikes']['spikes_per_sample']:.1f}", "  firing rate per layer:"]
    width = max(len(k) for k in r["spikes"]["layers"])
    for name, v in r["spikes"]["layers"].items():
        lines.append(f"    {name:<{width}}  {100 * v['firing_rate']:6.2f}%  {v['spikes_per_sample']:9.1f} spikes/sample")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
