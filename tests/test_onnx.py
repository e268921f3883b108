"""The onnx target: the one-step neuron, the step model, the ONNX export checked with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from conftest import firing_model, random_pixels
from deploy.dispatch import run_on_hardware
from xoresnet.config import BlockSpec, NetworkConfig
from xoresnet.errors import UnsupportedModelError
from xoresnet.neuron import NeuronSpec, cuba_lif_sequence, cuba_lif_step

# ---------------------------------------------------------------------- cuba_lif_step


@pytest.mark.parametrize("du,dv,soft,shape", [
    (1.0, 0.5, False, (3, 4, 5, 5)),          # current-free (Python float branch), conv population
    (0.25, 0.125, False, (3, 4, 5, 5)),       # with current state
    (0.25, 0.0, True, (3, 4, 5, 5)),          # soft reset
    (1.0, 0.25, False, (6, 7)),               # dense [B, N]
])
@pytest.mark.parametrize("with_bias", [True, False])
def test_cuba_lif_step_equals_sequence(du, dv, soft, shape, with_bias):
    g = torch.Generator().manual_seed(3)
    T = 6
    x = torch.randn((T, *shape), generator=g) * 0.8 + 0.2
    bias = torch.randn(shape[1], generator=g) * 0.3 if with_bias else None
    s_ref, h_ref = cuba_lif_sequence(x, bias, torch.tensor(du), torch.tensor(dv), 1.0, soft_reset=soft)
    assert 0.05 < float(s_ref.mean()) < 0.7  # the test compares real spike trains
    u = torch.zeros(shape)
    v = torch.zeros(shape)
    for t in range(T):
        s, u, v = cuba_lif_step(x[t], u, v, bias, du, dv, 1.0, soft_reset=soft)
        near = (h_ref[t] - 1.0).abs() < 1e-5  # float rounding may flip a spike only here
        assert torch.equal(s[~near], s_ref[t][~near])
        # h within 1e-6, seen through v_new: h where no spike; h - vth (soft) or 0 (hard) where one
        v_ref = h_ref[t] - s if soft else torch.where(s.bool(), 0.0, h_ref[t])
        torch.testing.assert_close(v, v_ref, atol=1e-6, rtol=0)


def test_cuba_lif_step_tensor_du_one_equals_float_branch():
    x, u, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = cuba_lif_step(x, u, v, None, 1.0, 0.5, 1.0)
    b = cuba_lif_step(x, u, v, None, torch.tensor(1.0), torch.tensor(0.5), 1.0)
    for p, q in zip(a, b):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------- step model and ONNX

def digits_cfg(**overrides) -> NetworkConfig:
    block = overrides.pop("block", "xor-or")
    return NetworkConfig.preset("xoresnet-digits", block=block, input_size=8, in_channels=1, num_classes=10,
                                input_levels=16, timesteps=4, **overrides)


VARIANTS = {
    "xor-or": dict(),
    "sew-add": dict(block="sew-add"),
    "spiking-resnet": dict(block="spiking-resnet"),
    "mid-selection": dict(block=BlockSpec(selection="mid")),
    "bottleneck": dict(block_type="bottleneck", blocks_per_stage=(1, 2)),
    "du0.5": dict(neuron=NeuronSpec(du=0.5, dv=0.25)),
}


def firing_rates(model, x) -> dict[str, float]:
    rates = {}

    def observe(m, s, h):
        rates[m.name] = float(s.mean())

    for m in model.neurons().values():
        m.observer = observe
    try:
        with torch.no_grad():
            model.forward_timesteps(x)
    finally:
        for m in model.neurons().values():
            m.observer = None
    return rates


@pytest.fixture(scope="module")
def xor_or():
    cfg = digits_cfg()
    return cfg, firing_model(cfg, seed=1), random_pixels(24, cfg, 5)


def test_step_model_reproduces_forward_timesteps(xor_or):
    from hw_targets.onnx import StepModel

    cfg, model, px = xor_or
    x = px.float() / cfg.input_levels
    step = StepModel(model)
    assert step.names == list(model.neurons())
    state = step.initial_state(3)
    assert len(state) == 2 * len(step.names) and all(float(t.abs().sum()) == 0 for t in state)
    assert tuple(state[0].shape) == (3, 16, 8, 8)
    with torch.no_grad():
        ref = model.forward_timesteps(x)
        got = step.run(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # step mode is undone: the model runs its own multi-step neurons again, hooks restored
    assert all(m.quant is None for m in model.modules() if hasattr(m, "quant"))
    with torch.no_grad():
        assert torch.equal(model.forward_timesteps(x), ref)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_onnx_export_matches_pytorch(variant, tmp_path):
    from hw_targets.onnx import check_onnx, export_onnx

    cfg = digits_cfg(**VARIANTS[variant])
    model = firing_model(cfg, seed=2)
    px = random_pixels(24, cfg, 9)
    rates = firing_rates(model, px.float() / cfg.input_levels)
    assert all(0.02 < r < 0.6 for r in rates.values()), rates
    desc = export_onnx(model, tmp_path / "model.onnx")
    names = list(model.neurons())
    assert desc["neurons"] == names
    assert [i["name"] for i in desc["inputs"]] == ["image"] + [f"{k}.{n}" for n in names for k in ("u", "v")]
    assert [o["name"] for o in desc["outputs"]] == ["logits"] + [f"{k}_next.{n}" for n in names
                                                                 for k in ("u", "v")]
    assert desc["inputs"][0]["shape"] == ["batch", 1, 8, 8] and desc["outputs"][0]["shape"] == ["batch", 10]
    assert desc["opset"] == 17 and desc["nodes"] > 0 and desc["file_bytes"] == (tmp_path / "model.onnx").stat().st_size
    res = check_onnx(model, tmp_path / "model.onnx", px)  # batch 24 through a graph traced at batch 1
    assert res["passed"], res["summary"]
    # logits agree to rounding; at most one sample may see a spike flip where a membrane is within
    # rounding of the threshold (ONNX Runtime sums the convolutions in another order)
    assert res["predictions_equal"] == 24 and res["max_abs_logit_diff_excluding_flips"] < 1e-3
    assert res["threshold_flip_count"] <= 1 and res["unexplained_count"] == 0
    assert len(res["max_abs_logit_diff_per_step"]) == 4


def test_check_can_fail(xor_or, tmp_path):
    from hw_targets.onnx import check_onnx, export_onnx

    cfg, model, px = xor_or
    path = tmp_path / "model.onnx"
    export_onnx(model, path)
    assert check_onnx(model, path, px)["passed"]
    # a PyTorch weight changed after the export: every sample's logits move by 0.01
    with torch.no_grad():
        model.head.bias[0] += 0.01
    try:
        res = check_onnx(model, path, px)
    finally:
        with torch.no_grad():
            model.head.bias[0] -= 0.01
    assert not res["passed"] and res["unexplained_count"] > 0 and "FAILED" in res["summary"]
    assert res["max_abs_logit_diff"] == pytest.approx(0.01, abs=1e-5)
    # an ONNX initializer changed: the first backbone conv's weights
    proto = onnx.load(str(path))
    init = next(t for t in proto.graph.initializer if t.name == "model.layer1.0.convs.0.conv.weight")
    w = onnx.numpy_helper.to_array(init).copy()
    w[0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(proto, str(path))
    res = check_onnx(model, path, px)
    assert not res["passed"] and res["unexplained_count"] > 0


def test_onnx_state_io_by_hand(xor_or, tmp_path):
    """Drive the file with onnxruntime directly, as a user would: feed u_next/v_next back."""
    import onnxruntime as ort

    from hw_targets.onnx import export_onnx

    cfg, model, px = xor_or
    export_onnx(model, tmp_path / "model.onnx", batch_size=2)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(meta["xoresnet.neurons"]) == list(model.neurons())
    assert meta["xoresnet.timesteps"] == "4"
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = (px[:5].float() / cfg.input_levels).numpy()
    state = {i.name: np.zeros([5, *i.shape[1:]], np.float32) for i in sess.get_inputs() if i.name != "image"}
    logits = []
    for _ in range(cfg.timesteps):
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x, **state})))
        logits.append(out["logits"])
        state = {k: out[k.replace(".", "_next.", 1)] for k in state}
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    np.testing.assert_allclose(np.mean(logits, axis=0), ref.numpy(), atol=1e-5)


def test_refuses_quantization_aware_hooks():
    from hw_targets.onnx import StepModel

    model = firing_model(digits_cfg(), seed=4)
    model.layer1[0].convs[0].quant = object()
    with pytest.raises(UnsupportedModelError, match="float model"):
        StepModel(model)


# ---------------------------------------------------------------------- the target

def test_onnx_target_registered_and_energy(xor_or):
    from hw_targets import NoHardwareError, get_target
    from hw_targets.onnx import ONNX

    cfg, model, _ = xor_or
    target = get_target("onnx")
    assert target is ONNX and target.limits == {} and not target.has_hardware
    d = target.describe()
    assert d["dispatch_available"] is False and "onnxruntime" in d["dispatch_note"]
    with pytest.raises(NoHardwareError, match="onnxruntime"):
        run_on_hardware(target, "out")
    e = target.energy(model)
    per = e["macs_per_layer_per_step"]
    assert per["stem.cb.conv"] == 16 * 8 * 8 * 1 * 9  # C_out H W x C_in k k
    assert per["layer2.0.convs.0.conv"] == 32 * 4 * 4 * 16 * 9  # stride 2
    assert per["layer2.0.shortcut.conv"] == 32 * 4 * 4 * 16
    assert per["head"] == 10 * 32
    assert e["macs_per_inference"] == 4 * e["macs_per_step"] == 4 * sum(per.values())
    assert e["total_pj"] == pytest.approx(4.6 * e["macs_per_inference"])
    assert any("T = 4" in a for a in e["assumptions"])


def test_export_onnx_artifacts(xor_or, tmp_path):
    from hw_targets.onnx import export_onnx_artifacts

    cfg, model, px = xor_or
    res = export_onnx_artifacts(model, tmp_path / "out", px.to(torch.uint8), cfg.timesteps)
    assert res["passed"] and (tmp_path / "out" / "model.onnx").is_file()
    saved = json.loads((tmp_path / "out" / "onnx_check.json").read_text())
    assert saved["passed"] and saved["summary"] == res["summary"]
    assert saved["export"]["file"] == "model.onnx" and saved["energy"]["timesteps"] == 4
