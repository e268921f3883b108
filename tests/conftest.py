"""Shared helpers for the deployment tests: small networks that fire like trained ones.

A freshly initialised XOResNet barely fires (zero-initialised last batch norms, running stats
that do not match the data), so tests that compare spike trains would compare silence. The
helper :func:`firing_model` sets every batch norm to the statistics of random inputs (one
forward pass in training mode with momentum 1) and then draws its affine part so that roughly
10-40 % of the neurons fire, like a trained network.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import io
from pathlib import Path
from typing import Any

import pytest
import torch

from xoresnet.config import NetworkConfig
from xoresnet.network import XOResNet, build_network

REPO = Path(__file__).resolve().parents[1]
DIGITS_MODEL = REPO / "models" / "xoresnet-digits.pt"  # committed with the repository
QAT_DIGITS_MODEL = REPO / "models" / "xoresnet-digits-qat.pt"  # its quantization-aware fine-tuning, committed too
#: The flags of the shared export (:func:`digits_export`) after ``QAT_DIGITS_MODEL --out DIR``.
DIGITS_EXPORT_FLAGS = ("--target", "loihi2", "--parity-samples", "3", "--eval-samples", "200", "--no-progress")

# The tensors here are tiny: intra-op threads only add contention on a shared 2-core machine
# (a 8x8 conv measured 1 ms on one thread, 48 ms on two under load).
torch.set_num_threads(1)


def random_pixels(n: int, cfg: NetworkConfig, seed: int) -> torch.Tensor:
    """Integer pixels ``[n, C, H, W]`` in ``0..input_levels`` (int64)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.input_levels + 1, (n, cfg.in_channels, cfg.input_size, cfg.input_size), generator=g)


@torch.no_grad()
def firing_model(cfg: NetworkConfig, seed: int = 0, *, bias_lo: float = -0.2, bias_hi: float = 0.6,
                 calib_pixels: torch.Tensor | None = None) -> XOResNet:
    """A model of ``cfg`` in eval mode whose neurons fire at trained-like rates.

    Batch-norm running statistics are those of the batch-norm inputs on random pixels (so the
    normalised currents are ~N(0, 1)); the scales are drawn in [0.6, 1.4] and the shifts in
    ``[bias_lo, bias_hi]`` (units of ``vth``), which makes the spikes neither silent nor saturated.
    """
    torch.manual_seed(seed)
    model = build_network(cfg)
    g = torch.Generator().manual_seed(seed + 1000)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        n = bn.num_features
        bn.weight.copy_(0.6 + 0.8 * torch.rand(n, generator=g))
        bn.bias.copy_(bias_lo + (bias_hi - bias_lo) * torch.rand(n, generator=g))
        bn.momentum = 1.0
    x = calib_pixels if calib_pixels is not None else random_pixels(16, cfg, seed + 7)
    model.train()
    model(x.to(torch.float32) / cfg.input_levels)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


@pytest.fixture(scope="session")
def digits_model_path() -> Path:
    """The bundled trained digits model; a checkout without it is broken, so its tests fail."""
    if not DIGITS_MODEL.is_file():
        pytest.fail(f"the bundled digits model {DIGITS_MODEL} is missing (it is committed: restore it with git, "
                    "or retrain it with scripts/train_bundled_models.sh)")
    return DIGITS_MODEL


@dataclasses.dataclass(frozen=True)
class DigitsExport:
    """One ``xoresnet-export QAT_DIGITS_MODEL --out out DIGITS_EXPORT_FLAGS``, run in this process
    (:func:`digits_export`). ``out``: the artifact folder, shared by every test of the session (copy it with
    ``shutil.copytree`` before changing anything in it); ``code``, ``stdout``, ``stderr``: the command's exit
    code and output; ``lava_calls``: each :func:`deploy.lava_run.run_lava` call it made, as
    ``{"graph", "pixels", "result", **keyword arguments}`` (one: the parity run)."""

    out: Path
    code: int
    stdout: str
    stderr: str
    lava_calls: tuple[dict[str, Any], ...]

    @property
    def lava(self):
        """The :class:`~deploy.lava_run.LavaRunResult` of the parity run (3 images, ``fixed_pt``)."""
        (call,) = self.lava_calls
        return call["result"]

    @property
    def parity_graph(self):
        """The scheduled, mapped integer graph the parity run simulated (the one saved as integer_graph.h5)."""
        (call,) = self.lava_calls
        return call["graph"]


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory) -> DigitsExport:
    """The bundled QAT digits model exported once per test session (every stage, Lava parity on 3 test images,
    the integer reference on 200); tests that change the folder copy it first."""
    import numpy as np

    from deploy import cli, lava_run

    out = tmp_path_factory.mktemp("digits-export") / "digits"
    real = lava_run.run_lava
    calls: list[dict[str, Any]] = []

    def recording(graph, pixels, **kw):
        calls.append({"graph": graph, "pixels": np.asarray(pixels).copy(), **kw})
        calls[-1]["result"] = real(graph, pixels, **kw)
        return calls[-1]["result"]

    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lava_run, "run_lava", recording)
        mp.chdir(REPO)  # as the console script runs from the repository root in the subprocess tests
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as e:
            cli.export_main([str(QAT_DIGITS_MODEL), "--out", str(out), *DIGITS_EXPORT_FLAGS])
    export = DigitsExport(out, e.value.code, stdout.getvalue(), stderr.getvalue(), tuple(calls))
    assert export.code == 0, export.stderr[-3000:]
    return export


def same_graph(a, b) -> None:
    """Assert that integer graphs ``a`` and ``b`` are equal: structure, schedule, every weight and delay."""
    import numpy as np

    assert a.describe() == b.describe() and a.scheduled == b.scheduled
    for x, y in zip(a.synapses, b.synapses, strict=True):
        assert x.name == y.name and np.array_equal(x.weight, y.weight) and x.delay == y.delay


@functools.cache
def _digits_report() -> dict:
    from deploy.pipeline import analyse, calibrate_checkpoint, map_to_cores, report_of
    from hw_targets import get_target
    from xoresnet.checkpoint import load_model
    from xoresnet.data import load_dataset

    model, ckpt = load_model(DIGITS_MODEL)
    train = load_dataset("digits", "train", limit=16)
    test = load_dataset("digits", "test", limit=40)
    target = get_target("loihi2")
    mapping = map_to_cores(calibrate_checkpoint(model, ckpt, train.pixels[:16], candidates=1).graph, target)
    graph = mapping.graph
    analysis = analyse(graph, mapping, test.pixels, test.labels, float_accuracy=0.99, batch_size=40)
    parity = {"passed": True, "samples": 4, "summary": "bit-exact (test fixture)"}
    return report_of(graph, target, analysis, checkpoint=ckpt, dataset={"name": "digits", "split": "test"},
                     parity=parity)


def digits_report() -> dict:
    """A real report of the bundled digits model (the pipeline's stages: design rules, packing, 40 test images
    through the integer reference; no Lava), built once per test process; each call returns a fresh copy."""
    return copy.deepcopy(_digits_report())


def small_config(**overrides) -> NetworkConfig:
    """An 8x8, 1-channel network with two stages of width 4/8 (fast to run)."""
    base = dict(arch="test", block_type="basic", blocks_per_stage=(2, 1), base_width=4, width_factor=1.0,
                input_size=8, in_channels=1, num_classes=3, timesteps=2, input_levels=16)
    base.update(overrides)
    return NetworkConfig(**base)



def run_in_own_session(argv: list[str], timeout: float, env: dict | None = None) -> str:
    """Run ``argv`` from the repository root in its own session; on timeout kill the whole session
    (a hung Lava forks many processes) and fail. Returns stdout; a non-zero exit fails with stderr."""
    import subprocess

    from deploy.lava_run import stop_session

    p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_session(p.pid)
        p.communicate()
        pytest.fail(f"{' '.join(argv[:2])} did not finish within {timeout} s")
    assert p.returncode == 0, err[-3000:]
    return out


def random_core_plan(graph, rng, depthwise=frozenset()):
    """A random :class:`~calibration.core_plan.CorePlan` of ``graph`` that keeps the lowering exact
    (every :func:`~calibration.core_plan.cut_rules` rule met): up to three random cuts per
    population where it may be cut, the required ones, grouped-conv destinations cut as their
    sources, the identity synapses named in ``depthwise`` lowered as depthwise convolutions. The
    lowering must be exact for any such plan, not only the packer's."""
    from calibration.core_plan import CorePlan, PopulationPlan, cut_rules, followed_parts

    rules = cut_rules(graph, depthwise)
    plan = CorePlan(method="random (tests)", depthwise=frozenset(depthwise))
    for name, p in graph.populations.items():
        n = p.shape[0]
        if name in rules.whole:
            continue
        if name in rules.follows:
            src, ipg, opg = rules.follows[name]
            parts = followed_parts(plan.populations[src].parts, ipg, opg) if src in plan.populations else None
        else:
            m = rules.multiple.get(name, 1)
            free = list(range(m, n, m))
            pick = rng.choice(free, size=min(len(free), int(rng.integers(0, 4))), replace=False).tolist() if free else []
            edges = [0] + sorted(set(pick) | set(rules.cuts.get(name, ()))) + [n]
            parts = tuple(b - a for a, b in zip(edges, edges[1:]))
        if parts and len(parts) > 1:
            plan.populations[name] = PopulationPlan(name, tuple(parts), (None,) * len(parts), (0,) * len(parts))
    return plan
