"""Quantization-aware training computes exactly what the integer reference computes."""

import pytest
import torch

from calibration.qat import enable_qat, project_to_ranges, synapse_targets
from calibration.quantize import QuantSpec, calibrate_nir, quantize_weight
from deploy.nir_export import export_nir
from deploy.reference import ReferenceSimulator
from xoresnet.config import BLOCK_PRESETS
from xoresnet.neuron import NeuronSpec
from xoresnet.stats import recording

from conftest import firing_model, random_pixels, small_config


@pytest.mark.parametrize("variant", sorted(BLOCK_PRESETS))
@pytest.mark.parametrize("neuron", [NeuronSpec(), NeuronSpec(du=0.5, dv=0.25)], ids=["lif", "cuba"])
def test_qat_forward_equals_integer_reference(variant, neuron):
    cfg = small_config().replace(block=BLOCK_PRESETS[variant], neuron=neuron)
    model = firing_model(cfg, seed=3)
    pixels = random_pixels(8, cfg, 1)
    cal = calibrate_nir(export_nir(model), pixels, candidates=1)
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
