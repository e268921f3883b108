"""The ``onnx`` target: the float model exported per timestep, for conventional hardware (CPU/GPU).

This is the baseline a user compares Loihi against: the same float network (batch norm as in
PyTorch, float32 everywhere), run one timestep per ONNX Runtime call with the neuron state passed
in and out explicitly.

**Interface of** ``model.onnx`` (:func:`export_onnx`). Inputs, in this order:

* ``image`` ``[batch, C, H, W]`` float32: ``pixel / input_levels`` (in ``[0, 1]``), the same image
  at every step (direct encoding);
* for every neuron population, in :meth:`XOResNet.neurons` order (module paths: ``stem.sn``,
  ``layer1.0.neurons.0``, ... ``layer2.0.neurons.1``), ``u.<neuron>`` then ``v.<neuron>``, each
  ``[batch, C, H, W]`` float32: the synaptic current and the (post-reset) membrane after the
  previous step; zeros before the first step.

Outputs: ``logits`` ``[batch, num_classes]`` (this step's logits; the model's prediction is the
argmax of their mean over the ``T`` steps) and ``u_next.<neuron>``, ``v_next.<neuron>`` in the
same order, to feed back as ``u.<neuron>``, ``v.<neuron>`` at the next step. The batch axis is
dynamic. ``u`` is kept for every neuron even when ``du == 1`` (a current-free LIF): then ``u`` is
ignored on input and ``u_next`` is this step's synaptic current, so every population has the same
interface. The model's metadata (``metadata_props``) repeats the neuron order, ``T`` and the input
scale.

**Step model** (:class:`StepModel`): the network's own modules run with ``T = 1`` tensors
(``[1, B, ...]``) while every :class:`~xoresnet.neuron.CubaLIF` is switched, through its
``quant`` hook (``neuron_forward(module, current) -> (s, h)``, the hook quantization-aware
training uses), to one step of :func:`~xoresnet.neuron.cuba_lif_step` that reads the state passed
in and records the new one. The stem, the blocks (selection, merges, shortcuts), OR pooling and
the head are the same code as :meth:`XOResNet.forward_timesteps`: the spike logic between neurons
depends on the current step only (the XOR selection's ``P`` is the previous block's input at the
same step), so the neurons' ``u`` and ``v`` are the whole state. Each :class:`ConvBN` is switched
too (its ``quant`` hook ``synapse_forward``), to its own conv and :meth:`ConvBN.bn_affine` on the
single step: the same arithmetic without the ``[T, B]`` flatten/unflatten, which a dynamic batch
would export as ~25 shape-arithmetic nodes per synapse (539 nodes instead of 210 for the digits
model). Batch norm is not folded into the weights: it runs as in PyTorch (conv, then a per-channel
``Mul``; the exporter constant-folds the scale, and the shift is the neuron bias).

**Check** (:func:`check_onnx`): ONNX Runtime (CPUExecutionProvider) runs the file ``T`` times,
feeding the state back, and the per-step logits are compared with ``model.forward_timesteps``.
Both sides compute in float32, but ONNX Runtime orders (and fuses) the convolutions' and the head's
accumulations differently, which moves membranes by ~1e-6. The logits see membranes only through
spikes, so while the spikes agree they differ by the head's rounding alone (~1e-7; exactly 0 on
the digits models tried). Hence :data:`LOGIT_TOLERANCE` (``1e-3``) on the per-step logits: far
above rounding, far below what any real difference (a weight, a decay, the wiring, the state
feedback) does. Rounding has one more, discrete, effect: a membrane within rounding of the
threshold (seen: 6e-8 and 3.6e-7 on the trained digits model) spikes on one side only, and that
spike moves the sample's later logits by up to ~1 (seen: 0.85 at the last step, predictions
unchanged). Such a sample is a *threshold flip*: over the
tolerance, but explained when the PyTorch run had a membrane within :data:`FLIP_MARGIN` (``1e-5``)
of ``vth`` at or before that step. The check passes when every prediction (argmax of the
``T``-mean logits) is equal, every sample over the tolerance is an explained threshold flip, and
there are at most :data:`MAX_FLIP_FRACTION` (1 %, at least one sample) of them: a real
difference moves the logits of most samples, and is not excused.

**Energy** (:meth:`OnnxTarget.energy`): the 45 nm ANN convention (one forward pass, MACs x 4.6 pJ)
does not describe an SNN run step by step; the figure reported is the MACs of the step model run
``T`` times (every conv and linear MAC at every step) x 4.6 pJ, with its assumptions.

**Dispatch**: none; :func:`deploy.dispatch.run_on_hardware` raises :class:`~hw_targets.base.NoHardwareError` with the
target's ``no_dispatch`` line (run ``model.onnx`` with ONNX Runtime).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from xoresnet.blocks import ConvBN, SpikeCurrent, XORResidualBlock
from xoresnet.errors import UnsupportedModelError
from xoresnet.files import atomic_write
from xoresnet.network import XOResNet
from xoresnet.neuron import CubaLIF, Current, cuba_lif_step

from . import register_target
from .base import HwTarget

#: Largest |logit difference| (per step) between ONNX Runtime and PyTorch, threshold flips aside.
LOGIT_TOLERANCE = 1e-3
#: A sample over the tolerance is a threshold flip when a PyTorch membrane came this close to ``vth``.
FLIP_MARGIN = 1e-5
#: At most this fraction of the samples (and at least one) may be threshold flips.
MAX_FLIP_FRACTION = 0.01
TOLERANCE_NOTE = ("float32 on both sides, accumulated in a different order by ONNX Runtime (membranes differ by "
                  "~1e-6; logits, a function of the spikes, by the head's rounding only): per-step logits must agree "
                  "within the tolerance, except threshold flips (a membrane within "
                  "flip_margin of vth in the PyTorch run spikes on one side only), which may be at most "
                  "max(1, 1%) of the samples; predictions must all be equal")
MODEL_FILE = "model.onnx"
CHECK_FILE = "onnx_check.json"


# ---------------------------------------------------------------------- step mode of the network

class _NeuronStep:
    """The ``quant`` hook of every :class:`CubaLIF` in step mode: one step of :func:`cuba_lif_step`.

    ``state``: ``{neuron name: (u, v)}`` read; ``new_state``: the same, written.
    """

    def __init__(self, names: dict[int, str], params: dict[str, tuple[float, float, float, bool]],
                 state: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.names, self.params, self.state = names, params, state
        self.new_state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def neuron_forward(self, module: CubaLIF, current: Current):
        name = self.names[id(module)]
        du, dv, vth, soft = self.params[name]
        u, v = self.state[name]
        s, u_new, v_new = cuba_lif_step(current.x[0], u, v, current.bias, du, dv, vth, soft_reset=soft)
        self.new_state[name] = (u_new, v_new)
        return s.unsqueeze(0), None  # h only feeds observers, which are off in step mode

    def synapse_forward(self, module: ConvBN, s: torch.Tensor) -> Current:
        """:meth:`ConvBN.forward` on the single step ``s[0]`` (its conv and :meth:`ConvBN.bn_affine` with
        the running statistics), without the ``[T, B]`` flatten, which would export as shape arithmetic."""
        z = module.conv(s[0])
        scale, shift = module.bn_affine()  # running statistics, whatever the training flag
        return Current((z * scale.view(1, -1, 1, 1)).unsqueeze(0), shift)


class _ShapeProbe:
    """A ``quant`` hook that records each population's shape (without batch) and returns no spikes."""

    def __init__(self, names: dict[int, str]):
        self.names = names
        self.shapes: dict[str, tuple[int, ...]] = {}

    def neuron_forward(self, module: CubaLIF, current: Current):
        self.shapes[self.names[id(module)]] = tuple(current.x.shape[2:])
        return torch.zeros_like(current.x), None


@contextlib.contextmanager
def _step_mode(model: XOResNet, hook) -> Iterator[None]:
    """Every neuron runs ``hook``; observers and recorders are off; everything is restored on exit."""
    saved = []
    for m in model.modules():
        if isinstance(m, CubaLIF):
            saved.append((m, "quant", m.quant))
            saved.append((m, "observer", m.observer))
            m.quant, m.observer = hook, None
        elif isinstance(m, ConvBN) and hasattr(hook, "synapse_forward"):
            saved.append((m, "quant", m.quant))
            m.quant = hook
        elif isinstance(m, (XORResidualBlock, XOResNet)):
            saved.append((m, "recorder", m.recorder))
            m.recorder = None
    try:
        yield
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)


def _refuse_quantized(model: XOResNet) -> None:
    hooked = [n for n, m in model.named_modules()
              if isinstance(m, (ConvBN, SpikeCurrent, CubaLIF, XOResNet)) and getattr(m, "quant", None) is not None]
    if hooked:
        raise UnsupportedModelError(
            f"the onnx target exports the float model, but {hooked[0] or 'the model'} runs a quantization-aware "
            "(integer) forward; export the float model (xoresnet.checkpoint.load_model gives it)")


class StepModel(nn.Module):
    """One timestep of an :class:`XOResNet` with explicit state: ``forward(x, *state) -> (logits, *new_state)``.

    ``x``: the image ``[B, C, H, W]`` (``pixel / input_levels``; the same at every step).
    ``state``: ``u, v`` of every neuron population in :attr:`names` order (= ``model.neurons()``),
    flattened: ``(u_0, v_0, u_1, v_1, ...)``, each ``[B, *shapes[name]]``. Returns this step's
    logits ``[B, num_classes]`` and the new state in the same order. ``u`` is kept when ``du == 1``
    (ignored on input; the output is this step's current). Running it ``T`` times from
    :meth:`initial_state` reproduces ``model.forward_timesteps(x)`` step by step.

    The network's own modules compute the step (module docstring): each :class:`CubaLIF` and
    :class:`ConvBN` is switched to a single-step version through its ``quant`` hook for the
    duration of a call only, so the model is unchanged in between (hooks, observers and recorders
    are restored; they are off during a step).

    The model is put in eval mode (batch norm uses its running statistics). The decays, thresholds
    and resets are read once here (the grid values of :meth:`CubaLIF.decays`): rebuild the step
    model after changing them. Weights and batch norm are read live. A model with
    quantization-aware hooks is refused (this target is the float model).
    """

    def __init__(self, model: XOResNet):
        super().__init__()
        _refuse_quantized(model)
        self.model = model
        self.eval()  # the model too; and torch.onnx.export restores this mode when it is done
        neurons = model.neurons()
        self.names: list[str] = list(neurons)
        self._ids = {id(m): n for n, m in neurons.items()}
        self._params: dict[str, tuple[float, float, float, bool]] = {}
        with torch.no_grad():
            for n, m in neurons.items():
                du, dv = m.decays()
                self._params[n] = (float(du), float(dv), float(m.spec.vth), m.spec.reset == "soft")
        self.shapes, self.macs_per_step = self._probe()

    @torch.no_grad()
    def _probe(self) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
        """Population shapes and conv/linear MACs of one step (batch 1), from one dry run."""
        cfg = self.model.config
        probe = _ShapeProbe(self._ids)
        macs: dict[str, int] = {}
        handles = []
        for name, m in self.model.named_modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups

                def conv_hook(mod, inp, out, name=name, k=k):
                    macs[name] = int(out[0].numel()) * k  # per sample: C_out H_out W_out x C_in/g kH kW
                handles.append(m.register_forward_hook(conv_hook))
            elif isinstance(m, nn.Linear):
                def lin_hook(mod, inp, out, name=name):
                    macs[name] = int(out.numel()) * mod.in_features  # batch 1, T 1: K x C
                handles.append(m.register_forward_hook(lin_hook))
        try:
            x = torch.zeros(1, cfg.in_channels, cfg.input_size, cfg.input_size)
            with _step_mode(self.model, probe):
                self.model.forward_timesteps(x, 1)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.names if n not in probe.shapes]
        if missing:  # pragma: no cover - every neuron of an XOResNet runs in its forward
            raise UnsupportedModelError(f"neuron {missing[0]} does not run in the forward pass")
        return {n: probe.shapes[n] for n in self.names}, macs

    def initial_state(self, batch: int, *, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """Zeros ``(u_0, v_0, u_1, v_1, ...)``, each ``[batch, *shapes[name]]``."""
        out = []
        for n in self.names:
            out += [torch.zeros((batch, *self.shapes[n]), dtype=dtype, device=device) for _ in range(2)]
        return tuple(out)

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(state) != 2 * len(self.names):
            raise ValueError(f"StepModel needs {2 * len(self.names)} state tensors (u, v of "
                             f"{len(self.names)} neurons), got {len(state)}")
        st = {n: (state[2 * i], state[2 * i + 1]) for i, n in enumerate(self.names)}
        hook = _NeuronStep(self._ids, self._params, st)
        with _step_mode(self.model, hook):
            logits = self.model.forward_timesteps(x, 1)[0]
        out: list[torch.Tensor] = [logits]
        for n in self.names:
            out += list(hook.new_state[n])
        return tuple(out)

    def run(self, x: torch.Tensor, timesteps: Optional[int] = None) -> torch.Tensor:
        """Step ``timesteps`` times from zero state: per-step logits ``[T, B, num_classes]``."""
        T = timesteps or self.model.config.timesteps
        state = self.initial_state(x.shape[0], dtype=x.dtype, device=x.device)
        logits = []
        for _ in range(T):
            out = self(x, *state)
            logits.append(out[0])
            state = out[1:]
        return torch.stack(logits)


def io_names(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """ONNX ``(input names, output names)`` for neurons ``names`` (see the module docstring)."""
    inputs, outputs = ["image"], ["logits"]
    for n in names:
        inputs += [f"u.{n}", f"v.{n}"]
        outputs += [f"u_next.{n}", f"v_next.{n}"]
    return inputs, outputs


# ---------------------------------------------------------------------- export

def _value_infos(values) -> list[dict[str, Any]]:
    out = []
    for vi in values:
        dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in vi.type.tensor_type.shape.dim]
        out.append({"name": vi.name, "shape": dims})
    return out


def _set_io(proto, in_names: list[str], out_names: list[str], shapes: dict[str, tuple[int, ...]],
            image_shape: tuple[int, ...], num_classes: int) -> None:
    """Give the graph exactly the named inputs, in order, and static shapes after the batch axis.

    The exporter drops inputs no node reads (``u.<neuron>`` when ``du == 1``); ONNX allows graph
    inputs that are unused, and keeping them gives every population the same ``u``/``v`` interface
    (ONNX Runtime accepts and ignores them). It also names the outputs' dimensions after internal
    nodes; they are set to ``["batch", C, H, W]`` (``["batch", num_classes]`` for the logits).
    """
    from onnx import TensorProto, helper

    def shape_of(name: str) -> list:
        if name == "image":
            return ["batch", *image_shape]
        if name == "logits":
            return ["batch", num_classes]
        return ["batch", *shapes[name.split(".", 1)[1]]]

    present = {vi.name for vi in proto.graph.input}
    extra = [n for n in present if n not in set(in_names)]
    if extra:  # pragma: no cover - initializers are not exported as inputs
        raise UnsupportedModelError(f"ONNX export has unexpected input(s) {', '.join(sorted(extra))}")
    outs = [o.name for o in proto.graph.output]
    if outs != out_names:  # pragma: no cover - the exporter keeps the outputs it is given
        raise UnsupportedModelError(f"ONNX export outputs {outs}, expected {out_names}")
    del proto.graph.input[:]
    proto.graph.input.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, shape_of(n)) for n in in_names)
    del proto.graph.output[:]
    proto.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, shape_of(n)) for n in out_names)


def _export(step: StepModel, path: Path, batch_size: int, opset: int):
    """Trace ``step`` into ``path`` (TorchScript-based exporter), fix its interface, add metadata, check it."""
    import onnx

    cfg = step.model.config
    x = torch.zeros(batch_size, cfg.in_channels, cfg.input_size, cfg.input_size)
    state = step.initial_state(batch_size)
    in_names, out_names = io_names(step.names)
    dynamic = {n: {0: "batch"} for n in in_names + out_names}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter is chosen on purpose (the dynamo one needs onnxscript)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"hw_targets\.onnx")
        torch.onnx.export(step, (x, *state), str(path), input_names=in_names, output_names=out_names,
                          dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False)
    proto = onnx.load(str(path))
    _set_io(proto, in_names, out_names, step.shapes, (cfg.in_channels, cfg.input_size, cfg.input_size),
            cfg.num_classes)
    meta = {
        "xoresnet.interface": "one timestep; feed u_next.*/v_next.* back as u.*/v.*; zeros before the first step; "
                              "prediction = argmax of the mean of logits over the timesteps",
        "xoresnet.neurons": json.dumps(step.names),
        "xoresnet.timesteps": str(cfg.timesteps),
        "xoresnet.input_scale": f"image = pixel / {cfg.input_levels}",
        "xoresnet.config": cfg.to_json(),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return proto


def export_onnx(model: XOResNet, path: str | os.PathLike, *, batch_size: int = 1, opset: int = 17) -> dict[str, Any]:
    """Write the step model of ``model`` to ``path`` (ONNX, dynamic batch) and describe it.

    Inputs ``image``, ``u.<neuron>``, ``v.<neuron>``; outputs ``logits``, ``u_next.<neuron>``,
    ``v_next.<neuron>`` (module docstring). ``batch_size`` is the example batch traced (the batch
    axis is dynamic anyway). The file passes ``onnx.checker.check_model`` (full check). The model's
    training mode is restored afterwards. Returns a JSON-able description: input/output names and
    shapes, neurons, opset, node count (and per op type), parameters, file size, timesteps and
    input scale.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    try:
        step = StepModel(model)
        proto = _export(step, path, batch_size, opset)
    finally:
        model.train(was_training)  # the exporter leaves the whole tree in its wrapper's mode
    cfg = model.config
    op_types: dict[str, int] = {}
    for node in proto.graph.node:
        op_types[node.op_type] = op_types.get(node.op_type, 0) + 1
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "opset": opset,
        "ir_version": int(proto.ir_version),
        "nodes": len(proto.graph.node),
        "op_types": dict(sorted(op_types.items())),
        "initializers": len(proto.graph.initializer),
        "parameters": int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer)),
        "inputs": _value_infos(proto.graph.input),
        "outputs": _value_infos(proto.graph.output),
        "neurons": list(step.names),
        "timesteps": cfg.timesteps,
        "input_scale": 1.0 / cfg.input_levels,
        "input_levels": cfg.input_levels,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }


# ---------------------------------------------------------------------- check with ONNX Runtime

def _session(path: str | os.PathLike):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(path: str | os.PathLike, images: np.ndarray, timesteps: int, *, session=None) -> np.ndarray:
    """Run ``model.onnx`` ``timesteps`` times from zero state on ``images`` (float32 ``[N, C, H, W]``,
    ``pixel / input_levels``) with ONNX Runtime, feeding the state back: logits ``[T, N, K]``."""
    sess = session or _session(path)
    n = images.shape[0]
    feeds: dict[str, np.ndarray] = {}
    for vi in sess.get_inputs():
        if vi.name == "image":
            continue
        shape = [n if not isinstance(d, int) else d for d in vi.shape]
        feeds[vi.name] = np.zeros(shape, dtype=np.float32)
    out_names = [o.name for o in sess.get_outputs()]
    logits = []
    for _ in range(timesteps):
        res = sess.run(out_names, {"image": images, **feeds})
        out = dict(zip(out_names, res))
        logits.append(out["logits"])
        for name in feeds:
            feeds[name] = out[name.replace("u.", "u_next.", 1) if name.startswith("u.")
                              else name.replace("v.", "v_next.", 1)]
    return np.stack(logits)


@torch.no_grad()
def _reference(model: XOResNet, x: torch.Tensor, T: int) -> tuple[np.ndarray, np.ndarray]:
    """``model.forward_timesteps(x, T)`` ``[T, B, K]`` and, per ``[T, B]``, the smallest ``|h - vth|`` over
    every neuron at that step or before (how close the sample came to a rounding-sensitive spike)."""
    near: list[torch.Tensor] = []
    neurons = list(model.neurons().values())
    saved = [m.observer for m in neurons]

    def observe(m, s, h):
        if h is not None:
            near.append((h - m.vth).abs().flatten(2).amin(2))

    for m in neurons:
        m.observer = observe
    try:
        logits = model.forward_timesteps(x, T)
    finally:
        for m, o in zip(neurons, saved):
            m.observer = o
    margin = (torch.stack(near).amin(0) if near else torch.full((T, x.shape[0]), float("inf")))
    return logits.numpy(), margin.cummin(0).values.numpy()


def check_onnx(model: XOResNet, path: str | os.PathLike, pixels: torch.Tensor, timesteps: Optional[int] = None, *,
               labels: Optional[torch.Tensor] = None, batch_size: int = 512, tolerance: float = LOGIT_TOLERANCE,
               flip_margin: float = FLIP_MARGIN, max_flip_fraction: float = MAX_FLIP_FRACTION) -> dict[str, Any]:
    """Compare ``path`` run by ONNX Runtime step by step with ``model.forward_timesteps`` (PyTorch).

    ``pixels``: integer ``[N, C, H, W]`` in ``0..input_levels`` (uint8 or int); both sides see
    ``pixels / input_levels``. ``timesteps``: default the config's. The model is put in eval mode.
    Returns a JSON-able dict: ``max_abs_logit_diff`` (and per step, over all samples),
    ``max_abs_logit_diff_excluding_flips``, ``predictions_equal`` / ``predictions_differ`` (argmax
    of the ``T``-mean logits, counts of samples), ``step_predictions_differ`` (per-step argmax),
    ``samples_over_tolerance``, ``threshold_flips`` (explained ones, with the first step over the
    tolerance, 0-based, the difference
    and the PyTorch membrane's distance to ``vth``), ``unexplained_over_tolerance``, accuracies when
    ``labels`` are given, ``passed`` (module docstring: predictions all equal, every sample over
    ``tolerance`` an explained threshold flip, at most ``max(1, max_flip_fraction * N)`` of them)
    and a one-line ``summary``.
    """
    import onnxruntime as ort

    t0 = time.time()
    if pixels.dim() != 4 or pixels.dtype.is_floating_point:
        raise ValueError(f"pixels must be an integer tensor [N, C, H, W], got {pixels.dtype} {list(pixels.shape)}")
    model.eval()
    cfg = model.config
    T = int(timesteps or cfg.timesteps)
    sess = _session(path)
    n = int(pixels.shape[0])
    refs, margins, outs = [], [], []
    for i in range(0, n, batch_size):
        x = pixels[i:i + batch_size].to(torch.float32) / cfg.input_levels
        r, m = _reference(model, x, T)
        refs.append(r)
        margins.append(m)
        outs.append(run_onnx(path, x.numpy(), T, session=sess))
    ref = np.concatenate(refs, axis=1)  # [T, N, K]
    margin = np.concatenate(margins, axis=1)  # [T, N]
    got = np.concatenate(outs, axis=1)
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64)).max(axis=2)  # [T, N]
    diff[~np.isfinite(diff)] = np.inf
    per_step = [float(d.max()) if d.size else 0.0 for d in diff]
    max_diff = float(diff.max()) if diff.size else 0.0
    over = diff >= tolerance  # [T, N]
    over_samples = np.flatnonzero(over.any(axis=0))
    flips, unexplained = [], []
    for b in over_samples:
        steps = np.flatnonzero(over[:, b])
        explained = bool(np.all(margin[steps, b] < flip_margin) and np.all(np.isfinite(diff[:, b])))
        entry = {"sample": int(b), "first_step": int(steps[0]), "max_abs_logit_diff": float(diff[:, b].max()),
                 "min_membrane_distance_to_vth": float(margin[steps[-1], b])}
        (flips if explained else unexplained).append(entry)
    keep = np.ones(n, dtype=bool)
    keep[over_samples] = False
    max_other = float(diff[:, keep].max()) if keep.any() and diff.size else 0.0
    pred_ref, pred_onnx = ref.mean(0).argmax(-1), got.mean(0).argmax(-1)
    differ = int((pred_ref != pred_onnx).sum())
    step_differ = [int((r.argmax(-1) != g.argmax(-1)).sum()) for r, g in zip(ref, got)]
    max_flips = max(1, int(max_flip_fraction * n))
    passed = bool(differ == 0 and not unexplained and len(flips) <= max_flips)
    result: dict[str, Any] = {
        "passed": passed,
        "samples": n,
        "timesteps": T,
        "max_abs_logit_diff": max_diff,
        "max_abs_logit_diff_per_step": per_step,
        "max_abs_logit_diff_excluding_flips": max_other,
        "predictions_equal": n - differ,
        "predictions_differ": differ,
        "step_predictions_differ": step_differ,
        "samples_over_tolerance": int(len(over_samples)),
        "threshold_flips": flips[:50],
        "threshold_flip_count": len(flips),
        "unexplained_over_tolerance": unexplained[:50],
        "unexplained_count": len(unexplained),
        "tolerance": tolerance,
        "flip_margin": flip_margin,
        "max_threshold_flips": max_flips,
        "tolerance_note": TOLERANCE_NOTE,
        "prediction": "argmax of the logits averaged over the timesteps (XOResNet.forward)",
        "onnx_file": str(path),
        "onnxruntime_version": ort.__version__,
        "providers": sess.get_providers(),
    }
    if labels is not None:
        y = labels[:n].numpy()
        result["accuracy_torch"] = float((pred_ref == y).mean()) if n else None
        result["accuracy_onnx"] = float((pred_onnx == y).mean()) if n else None
    why = []
    if differ:
        why.append(f"{differ} predictions differ")
    if unexplained:
        why.append(f"{len(unexplained)} samples over the tolerance not explained by a threshold flip")
    if len(flips) > max_flips:
        why.append(f"{len(flips)} threshold flips (at most {max_flips})")
    result["summary"] = (
        f"{'passed' if passed else 'FAILED'}: {n - differ}/{n} predictions equal over T={T}; max |logit diff| "
        f"{max_other:.3g} (tolerance {tolerance:g})"
        + (f", {len(flips)} threshold flip(s) up to {max(f['max_abs_logit_diff'] for f in flips):.3g}" if flips else "")
        + (f" [{'; '.join(why)}]" if why else ""))
    result["seconds"] = round(time.time() - t0, 3)
    return result


def export_onnx_artifacts(model: XOResNet, out_dir: str | os.PathLike, pixels: torch.Tensor,
                          timesteps: Optional[int] = None) -> dict[str, Any]:
    """Write ``model.onnx`` and ``onnx_check.json`` into ``out_dir``; return the check dict.

    The check dict (also the JSON file) has :func:`check_onnx`'s keys plus ``export`` (the
    description of :func:`export_onnx`) and ``energy`` (:meth:`OnnxTarget.energy`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    T = int(timesteps or model.config.timesteps)
    desc = export_onnx(model, out_dir / MODEL_FILE)
    check = check_onnx(model, out_dir / MODEL_FILE, pixels, T)
    check["onnx_file"] = MODEL_FILE
    desc["file"] = MODEL_FILE
    check["export"] = desc
    check["energy"] = ONNX.energy(model, T)
    atomic_write(out_dir / CHECK_FILE, json.dumps(check, indent=2, sort_keys=True) + "\n")
    return check


# ---------------------------------------------------------------------- the target

def step_macs(model: XOResNet) -> dict[str, Any]:
    """MACs of one step of the step model (per sample): every conv (full kernel at every output
    position, padding and zero weights included) and the head; by layer and in total."""
    per = StepModel(model).macs_per_step
    return {"total": int(sum(per.values())), "per_layer": dict(per)}


class OnnxTarget(HwTarget):
    """The ONNX target: no Loihi limits, no systems, no dispatch; an energy estimate of its own."""

    def energy(self, model: XOResNet, timesteps: Optional[int] = None, table=None) -> dict[str, Any]:
        """MACs per inference of the step model run ``T`` times, and their 45 nm FP32 energy."""
        t = table or self.energy_table()  # an EnergyTable: its ann_mac figure (45 nm FP32 MAC)
        T = int(timesteps or model.config.timesteps)
        macs = step_macs(model)
        stem = sum(v for k, v in macs["per_layer"].items() if k.startswith("stem."))
        per_inf = macs["total"] * T
        total_pj = per_inf * t.ann_mac.pj
        return {
            "label": t.ann_mac.label,
            "macs_per_step": macs["total"],
            "macs_per_inference": per_inf,
            "macs_per_layer_per_step": macs["per_layer"],
            "timesteps": T,
            "pj_per_mac": t.ann_mac.pj,
            "total_pj": float(total_pj),
            "total_uj": float(total_pj) * 1e-6,
            "assumptions": [
                f"The step model run T = {T} times per inference (one sample): every conv and linear MAC at every "
                "step (full kernel at every output position, padding and zero weights included; the spikes' "
                "sparsity is not exploited, as dense float kernels on a CPU/GPU do not).",
                f"The image conv (stem, {stem} MACs per step) is recomputed every step as model.onnx does; a "
                f"runtime that cached it would save {stem * (T - 1)} MACs per inference.",
                f"{t.ann_mac.pj:g} pJ per FP32 MAC (3.7 pJ multiply + 0.9 pJ add, {t.ann_mac.label}); batch "
                "norm scaling, neuron updates, spike logic, pooling, memory access and data movement are not "
                "counted. Not comparable to a measured CPU/GPU figure; the ANN convention (one pass, no T) "
                "does not apply to an SNN run step by step.",
            ],
        }


ONNX = OnnxTarget(
    name="onnx",
    description="float model per timestep with state I/O for conventional hardware (CPU/GPU via ONNX Runtime)",
    limits={},
    systems=(),
    has_hardware=False,
    notes=("No Loihi limits apply: the float model runs on conventional hardware through ONNX Runtime.",
           "Energy: MACs of the step model run T times x 4.6 pJ (45 nm FP32 estimate), see OnnxTarget.energy."),
    no_dispatch="the onnx target has no hardware dispatch: run model.onnx with onnxruntime (CPU/GPU), feeding "
                "u_next.*/v_next.* back as u.*/v.* for T steps",
)

register_target(ONNX)
