"""Training and evaluation loops (single process, CUDA when present, or data-parallel under torchrun).

Data parallelism is PyTorch's own DistributedDataParallel: launched by ``torchrun``
(``WORLD_SIZE`` > 1) it uses NCCL on GPUs and Gloo on CPUs, shards the training data with
``DistributedSampler``, evaluates every held-out sample exactly once (:func:`eval_shard`), and
only rank 0 writes checkpoints and prints.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__
from .checkpoint import Checkpoint, load_checkpoint, load_model, model_from_checkpoint, save_checkpoint
from .config import NetworkConfig
from .data import DATASETS, IntImageDataset, load_dataset, make_loader
from .errors import CheckpointError, UsageError
from .network import XOResNet, build_network
from .stats import recording

#: Default augmentation per dataset: random translation by up to ``pad`` pixels, optional flips.
AUGMENT = {"digits": None, "mnist": ("translate", 2), "fashion-mnist": ("translate", 2), "cifar10": ("flip", 4),
           "cifar100": ("flip", 4), "miniimagenet": ("flip", 8)}


@dataclass
class TrainOptions:
    dataset: str = "digits"
    data_dir: Optional[str] = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # "adamw" | "sgd" (momentum 0.9)
    seed: int = 0
    out: str = "runs/model.pt"
    resume: bool = False
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    device: Optional[str] = None
    augment: bool = True
    progress: bool = True
    qat: bool = False  # quantization-aware fine-tuning of the float checkpoint `init`
    init: Optional[str] = None
    calib_samples: int = 64
    extra_meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: Optional[str]) -> DistContext:
    """Initialise torch.distributed from torchrun's environment, or a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        dev = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        return DistContext(dist.get_rank(), world, dev)
    return DistContext(0, 1, torch.device(device or ("cuda" if cuda else "cpu")))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def augment_batch(x: torch.Tensor, kind: Optional[tuple[str, int]], gen: torch.Generator) -> torch.Tensor:
    """Random translation (zero padding, so pixels stay integers / levels) and optional flips."""
    if kind is None:
        return x
    mode, pad = kind
    B, _, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])
    if mode == "flip":
        flip = torch.rand(B, generator=gen) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def eval_shard(samples: int, ctx: DistContext) -> range:
    """Indices of the held-out samples that rank ``ctx.rank`` evaluates: every ``world_size``-th one.

    The shards of all ranks partition ``range(samples)``: each sample is counted exactly once
    (``DistributedSampler`` would pad the last shard with duplicates).
    """
    return range(ctx.rank, samples, ctx.world_size)


@torch.no_grad()
def evaluate(model: XOResNet, ds: IntImageDataset, *, batch_size: int = 256, device: torch.device | str = "cpu",
             stats: bool = False, ctx: Optional[DistContext] = None, progress: bool = False) -> dict[str, Any]:
    """Accuracy and mean cross-entropy on ``ds``; with ``stats``, firing rates and block counts.

    Data-parallel (``ctx.world_size`` > 1): every rank first takes rank 0's batch-norm statistics
    (DDP leaves each rank with those of its own last batch), so all ranks evaluate the model rank 0
    saves, each on its :func:`eval_shard`, and the totals are summed over the ranks.
    """
    ctx = ctx or DistContext(device=torch.device(device))
    net = model.module if hasattr(model, "module") else model
    sampler = None
    if ctx.world_size > 1:
        for buffer in net.buffers():
            dist.broadcast(buffer, 0)
        sampler = eval_shard(len(ds), ctx)
    loader = make_loader(ds, batch_size, shuffle=False, sampler=sampler)
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # correct, loss sum, count
    summary = None
    with recording(net) if stats else contextlib.nullcontext() as rec:
        for x, y in tqdm(loader, desc="eval", disable=not progress, leave=False):
            x, y = x.to(ctx.device), y.to(ctx.device)
            logits = net(x)
            totals += torch.stack([(logits.argmax(1) == y).sum().double(),
                                   F.cross_entropy(logits, y, reduction="sum").double(),
                                   torch.tensor(float(len(y)), dtype=torch.float64, device=ctx.device)])
        if stats:
            summary = rec.summary()
    if ctx.world_size > 1:
        dist.all_reduce(totals)
    model.train(was_training)
    correct, loss, n = totals.tolist()
    out = {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "samples": int(n)}
    if summary is not None:
        out["spikes"] = summary
    return out


def dataset_mismatch(config: NetworkConfig, dataset: str) -> Optional[str]:
    """Why the network of ``config`` cannot take the images of the dataset named ``dataset``; None if it can."""
    if dataset not in DATASETS:
        return f"{dataset!r} is not a known dataset ({', '.join(DATASETS)})"
    info = DATASETS[dataset]
    want = (config.input_size, config.in_channels, config.input_levels, config.num_classes)
    have = (info.input_size, info.in_channels, info.input_levels, info.num_classes)
    if want == have:
        return None
    text = "{0}x{0}x{1} images with pixels 0..{2} in {3} classes"
    return f"the network takes {text.format(*want)}, {dataset} has {text.format(*have)}"


def require_dataset_fits(config: NetworkConfig, dataset: str, *, named_by_flag: bool, checkpoint) -> None:
    """Refuse, before any data is read, a dataset whose images the network of ``config`` cannot take: a usage
    error (exit 2) when ``--dataset`` named it (``named_by_flag``), else a bad checkpoint (exit 3: its meta
    named it)."""
    mismatch = dataset_mismatch(config, dataset)
    if mismatch and named_by_flag:
        raise UsageError(f"--dataset {dataset}: {mismatch}")
    if mismatch:
        raise CheckpointError(f"{checkpoint}: its meta names dataset {dataset!r}, but {mismatch}")


class QuantizationAwareTraining(Protocol):
    """What quantization-aware training plugs into :func:`train` (Loihi 2's: :data:`calibration.qat.LOIHI2_QAT`).

    ``spec``: the quantization spec as saved in a checkpoint (JSON-able: scales and exponents per population)."""

    def calibrate(self, model: XOResNet, pixels: torch.Tensor) -> dict[str, Any]:
        """Calibrate the float ``model`` on integer ``pixels [N, C, H, W]`` and attach its integer forward;
        returns the spec."""

    def attach(self, model: XOResNet, spec: dict[str, Any]) -> None:
        """Switch ``model`` to the integer forward of ``spec`` (a resumed run)."""

    def project(self, model: XOResNet) -> None:
        """After an optimiser step: keep every weight inside the integer ranges of its fixed scale."""


def prepare_qat(opts: TrainOptions, train_ds: IntImageDataset, qat: QuantizationAwareTraining
                ) -> tuple[XOResNet, dict[str, Any]]:
    """The float model of ``opts.init``, calibrated on the first ``calib_samples`` training samples and
    switched to its exact integer forward; returns it with the quantization spec (JSON-able)."""
    if not opts.init:
        raise UsageError("--qat fine-tunes a trained float model: pass it with --init model.pt")
    model, ckpt = load_model(opts.init)
    if ckpt.quant is not None:
        raise CheckpointError(f"{opts.init} is already quantization-aware trained; start from its float parent")
    if ckpt.meta.get("dataset") not in (None, opts.dataset):
        raise CheckpointError(f"{opts.init} was trained on {ckpt.meta['dataset']}, not {opts.dataset}")
    mismatch = dataset_mismatch(model.config, opts.dataset)
    if mismatch:
        raise CheckpointError(f"{opts.init} cannot be fine-tuned on {opts.dataset}: {mismatch}")
    spec = qat.calibrate(model, train_ds.pixels[: opts.calib_samples])
    opts.extra_meta["float_parent"] = {"path": str(opts.init), "sha256": ckpt.sha256,
                                       "test_accuracy": ckpt.meta.get("test_accuracy"),
                                       "test_samples": ckpt.meta.get("test_samples")}
    return model, spec


def make_optimizer(model: XOResNet, opts: TrainOptions) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum 0.9, over the trainable parameters, at ``opts.lr``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if opts.optimizer == "sgd":
        return torch.optim.SGD(params, lr=opts.lr, momentum=0.9, weight_decay=opts.weight_decay)
    return torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, opts: TrainOptions, start_epoch: int
                   ) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """Cosine annealing from ``opts.lr`` to 0 over ``opts.epochs`` epochs, advanced to ``start_epoch``.

    A resumed run rebuilds the schedule for its own ``--epochs`` (a run extended beyond the
    epochs it was started with keeps learning) and replays its first ``start_epoch`` steps, with
    the floating-point operations of an uninterrupted run: resuming with the same ``--epochs``
    gives bit for bit the learning rates of a run that was never stopped.
    """
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = opts.lr
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opts.epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "step() before optimizer.step()": replaying epochs already trained
        for _ in range(start_epoch):
            scheduler.step()
    return scheduler


def restore_train_state(ckpt: Checkpoint, optimizer: torch.optim.Optimizer) -> int:
    """Load the optimizer and RNG state of ``ckpt`` for a resume; returns the epochs it has trained."""
    try:
        optimizer.load_state_dict(ckpt.train_state["optimizer"])
        torch.set_rng_state(ckpt.train_state["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot resume {ckpt.path}: its training state does not fit the model ({first})"
                              ) from None
    return ckpt.train_state["epoch"]


def train(config: Optional[NetworkConfig], opts: TrainOptions,
          qat: Optional[QuantizationAwareTraining] = None) -> dict[str, Any]:
    """Train ``config`` on ``opts.dataset``, evaluating on the held-out split every epoch.

    Writes a resumable checkpoint to ``opts.out`` after every epoch (rank 0, atomically) and
    returns the final metrics. With ``opts.resume`` it continues from the checkpoint at ``out``.
    With ``opts.qat`` it fine-tunes the float model ``opts.init`` through the exact Loihi integer
    forward that ``qat`` attaches (:data:`calibration.qat.LOIHI2_QAT`); ``config`` is then that model's and may be
    ``None``.
    """
    if opts.qat and qat is None:
        raise ValueError("opts.qat needs the quantization-aware training hooks (qat=calibration.qat.LOIHI2_QAT)")
    ctx = setup_distributed(opts.device)
    seed_everything(opts.seed)
    train_ds = load_dataset(opts.dataset, "train", opts.data_dir, limit=opts.limit_train)
    test_ds = load_dataset(opts.dataset, "test", opts.data_dir, limit=opts.limit_test)
    out = Path(opts.out)
    ckpt = load_checkpoint(out) if opts.resume and out.exists() else None
    quant = None
    if ckpt is not None:
        if not ckpt.train_state:
            raise CheckpointError(f"cannot resume {out}: it holds no training state (a released model?)")
        if opts.qat != (ckpt.quant is not None):
            raise CheckpointError(f"cannot resume {out}: it was{'' if ckpt.quant else ' not'} quantization-aware "
                                  f"trained, but --qat was{'' if opts.qat else ' not'} given")
        if not opts.qat and ckpt.config != config:
            raise CheckpointError(f"cannot resume {out}: its network config differs from the requested one")
        model = model_from_checkpoint(ckpt).train()
        quant = ckpt.quant
        if quant is not None:
            qat.attach(model, quant)
    elif opts.qat:
        model, quant = prepare_qat(opts, train_ds, qat)
    else:
        model = build_network(config)
    model = model.to(ctx.device)
    optimizer = make_optimizer(model, opts)
    start_epoch, history = 0, []
    if ckpt is not None:
        start_epoch = restore_train_state(ckpt, optimizer)
        history = list(ckpt.meta.get("history", []))
    if start_epoch >= opts.epochs:
        raise UsageError(f"nothing to train: --epochs {opts.epochs}"
                         + (f", and {out} has already trained {start_epoch} epoch(s)" if ckpt is not None else ""))
    scheduler = make_scheduler(optimizer, opts, start_epoch)
    net = model
    if ctx.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    aug = AUGMENT.get(opts.dataset) if opts.augment else None
    started = time.time()
    for epoch in range(start_epoch, opts.epochs):
        gen = torch.Generator().manual_seed(opts.seed + 1000 * epoch + ctx.rank)  # per epoch: resumable
        lr = optimizer.param_groups[0]["lr"]
        sampler = None
        if ctx.world_size > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(train_ds, shuffle=True, seed=opts.seed)
            sampler.set_epoch(epoch)
        loader = make_loader(train_ds, opts.batch_size, shuffle=sampler is None, seed=opts.seed + epoch,
                             sampler=sampler)
        net.train()
        seen, loss_sum, correct = 0, 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{opts.epochs}", disable=not (opts.progress and ctx.is_main),
                   leave=False, file=sys.stderr)
        for x, y in bar:
            x = augment_batch(x, aug, gen).to(ctx.device)
            y = y.to(ctx.device)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if quant is not None:
                qat.project(model)
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        scheduler.step()
        if ctx.world_size > 1:  # report the training figures of all ranks, not rank 0's shard
            sums = torch.tensor([seen, loss_sum, correct], dtype=torch.float64, device=ctx.device)
            dist.all_reduce(sums)
            seen, loss_sum, correct = int(sums[0]), float(sums[1]), int(sums[2])
        metrics = evaluate(model, test_ds, device=ctx.device, ctx=ctx, batch_size=max(opts.batch_size, 128))
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / max(seen, 1),
                  "train_accuracy": correct / max(seen, 1), "test_loss": metrics["loss"],
                  "test_accuracy": metrics["accuracy"], "test_samples": metrics["samples"]}
        if quant is not None:
            record["integer"] = True  # the QAT forward is the Loihi integer forward
        history.append(record)
        if ctx.is_main:
            print(f"epoch {epoch + 1}/{opts.epochs}  loss {record['train_loss']:.4f}  "
                  f"train {100 * record['train_accuracy']:.2f}%  test {100 * record['test_accuracy']:.2f}%",
                  flush=True)
            meta = training_meta(opts, ctx, train_ds, test_ds, history, time.time() - started)
            train_state = {"epoch": epoch + 1, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
            save_checkpoint(out, model, meta, quant=quant, train_state=train_state)
    if ctx.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return history[-1] if history and ctx.is_main else {}


def training_meta(opts: TrainOptions, ctx: DistContext, train_ds, test_ds, history, seconds: float) -> dict[str, Any]:
    meta = {
        "dataset": opts.dataset,
        "qat": opts.qat,
        "init": opts.init,
        "train_samples": len(train_ds),
        "test_samples": len(test_ds),
        "options": {k: v for k, v in asdict(opts).items() if k != "extra_meta"},
        "history": history,
        "test_accuracy": history[-1]["test_accuracy"] if history else None,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "seconds": round(seconds, 1),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "torch": torch.__version__,
        "xoresnet": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(opts.extra_meta)
    return meta
