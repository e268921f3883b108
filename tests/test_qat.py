"""Quantization-aware training computes exactly what the integer reference computes."""

import pytest
import torch

from calibration.qat import enable_qat, project_to_ranges, synapse_targets
from calibration.quantize import QuantSpec, calibrate_nir, quantize_weight
from xoresnet.nir.export import export_nir
from calibration.reference import ReferenceSimulator
from xoresnet.config import BLOCK_PRESETS, BlockSpec
from xoresnet.network import build_network
from xoresnet.neuron import NeuronSpec
from xoresnet.stats import recording

from conftest import firing_model, random_pixels, small_config


NEURONS = {"lif": NeuronSpec(), "cuba": NeuronSpec(du=0.5, dv=0.25)}
BOTTLENECK = dict(block_type="bottleneck", blocks_per_stage=(2, 1), base_width=2)
# Beyond the presets: the `mid` selection (BasicBlock only) and Bottleneck networks, each with both
# non-identity shortcuts. small_config's stage 2 opens with a stride-2 block; the Bottleneck's first
# block also changes the channels (expansion 4) and its second block is an identity block.
EXTRA_CONFIGS = {
    "mid-or-add_current": small_config(block=BlockSpec("mid", "or", "add_current")),
    "mid-xor-spike": small_config(block=BlockSpec("mid", "xor", "spike")),
    "mid-iand-spike": small_config(block=BlockSpec("mid", "iand", "spike")),
    "bottleneck-xor-or": small_config(**BOTTLENECK, block=BlockSpec()),
    "bottleneck-xor-xor-spike": small_config(**BOTTLENECK, block=BlockSpec("prev_input", "xor", "spike")),
    "bottleneck-sew-add": small_config(**BOTTLENECK, block=BLOCK_PRESETS["sew-add"]),
    "bottleneck-spiking-resnet": small_config(**BOTTLENECK, block=BLOCK_PRESETS["spiking-resnet"]),
}


@pytest.mark.parametrize("variant", sorted(BLOCK_PRESETS))
@pytest.mark.parametrize("neuron", sorted(NEURONS))
def test_qat_forward_equals_integer_reference(variant, neuron):
    assert_qat_equals_reference(small_config().replace(block=BLOCK_PRESETS[variant], neuron=NEURONS[neuron]))


@pytest.mark.parametrize("neuron", sorted(NEURONS))
@pytest.mark.parametrize("name", sorted(EXTRA_CONFIGS))
def test_qat_forward_equals_integer_reference_mid_and_bottleneck(name, neuron):
    cfg = EXTRA_CONFIGS[name].replace(neuron=NEURONS[neuron])
    kinds = {type(blk.shortcut).__name__ for stage in build_network(cfg).stages() for blk in stage}
    assert "NoneType" in kinds and len(kinds) == 2  # identity and non-identity blocks both present
    assert_qat_equals_reference(cfg)


def assert_qat_equals_reference(cfg):
    """The QAT forward of a firing model of ``cfg`` gives exactly the integer reference's spikes
    (every neuron), predictions and logits on the integer graph calibrated for it."""
    model = firing_model(cfg, seed=3)
    pixels = random_pixels(8, cfg, 1)
    cal = calibrate_nir(export_nir(model), pixels)
    entries = [e for e in cal.report["populations"].values() if e["kind"] == "neuron"]
    assert any(e["vth_mant"] < e["max_vth_mant"] for e in entries)  # searched scales, not only range-limited ones
    enable_qat(model, cal.spec)
    with torch.no_grad(), recording(model, membrane=True) as rec:
        logits = model(pixels.float() / cfg.input_levels)
    ref = ReferenceSimulator(cal.graph).run_zero_delay(pixels)
    assert set(rec.traces) <= set(ref.spikes)
    fired = 0
    for name, (s, _h) in rec.traces.items():
        assert torch.equal(s.bool(), ref.spikes[name]), name
        fired += int(s.sum())
    assert fired > 0
    assert torch.equal(logits.argmax(1), ref.predictions)
    torch.testing.assert_close(logits.double(), ref.logits.double().mean(0) / cal.graph.readout_scale)


def test_export_with_the_spec_reproduces_the_trained_integers():
    """After QAT steps, calibrating with the checkpoint's spec gives the integer graph QAT used."""
    cfg = small_config()
    model = firing_model(cfg, seed=5)
    pixels = random_pixels(8, cfg, 2)
    spec = calibrate_nir(export_nir(model), pixels, candidates=1).spec
    enable_qat(model, spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        loss = model(pixels.float() / cfg.input_levels).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        project_to_ranges(model)
    qat_weights = {name: cb.quant.integer_weight(cb).detach().long() for name, (cb, _) in synapse_targets(model).items()}
    graph = calibrate_nir(export_nir(model), pixels[:0], spec=QuantSpec.from_dict(spec.to_dict())).graph
    for syn in graph.synapses:
        if syn.name in qat_weights:
            assert torch.equal(torch.as_tensor(syn.weight), qat_weights[syn.name]), syn.name


def test_projection_keeps_weights_inside_loihi_ranges():
    cfg = small_config()
    model = firing_model(cfg, seed=6)
    pixels = random_pixels(4, cfg, 3)
    spec = calibrate_nir(export_nir(model), pixels, candidates=1).spec
    enable_qat(model, spec)
    with torch.no_grad():
        for cb, _ in synapse_targets(model).values():
            cb.conv.weight.mul_(50.0)  # far outside any 8-bit range at the fixed scales
    project_to_ranges(model)
    for name, (cb, _) in synapse_targets(model).items():
        w = cb.quant.integer_weight(cb).detach()
        quantize_weight(w, allow_exp=False, what=name)  # raises RangeError if outside
    calibrate_nir(export_nir(model), pixels[:0], spec=spec)  # the export accepts it


def test_projection_leaves_channels_with_zero_batch_norm_scale_finite():
    """A zero-initialised batch-norm scale (an identity block's last BN, untrained) folds every weight
    of its channel to 0: the projection must leave those weights alone, not clamp them to -inf."""
    cfg = small_config()
    model = firing_model(cfg, seed=7)
    pixels = random_pixels(4, cfg, 4)
    cb, _ = next(iter(v for k, v in synapse_targets(model).items() if k.endswith("convs.1")))
    with torch.no_grad():
        cb.bn.weight[0] = 0.0
    enable_qat(model, calibrate_nir(export_nir(model), pixels, candidates=1).spec)
    before = cb.conv.weight.detach().clone()
    project_to_ranges(model)
    assert torch.isfinite(cb.conv.weight).all()
    assert torch.equal(cb.conv.weight[0], before[0])
    assert torch.equal(cb.quant.integer_weight(cb).detach()[0], torch.zeros_like(before[0], dtype=torch.float64))
