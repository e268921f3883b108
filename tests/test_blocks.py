"""Every block variant's shapes and semantics, the network presets and their layer counts."""

import dataclasses
import itertools

import pytest
import torch

from xoresnet.blocks import XORResidualBlock, or_pool2x2
from xoresnet.config import BLOCK_PRESETS, MERGES, SELECTIONS, SHORTCUTS, BlockSpec, NetworkConfig
from xoresnet.errors import ConfigError
from xoresnet.network import build_network, weight_layer_count
from xoresnet.neuron import NeuronSpec
from xoresnet.stats import recording

VARIANTS = [BlockSpec(sel, merge, sc) for sel, merge, sc in itertools.product(SELECTIONS, MERGES, SHORTCUTS)
            if not (merge == "add" and sel != "none")]


def spikes(*shape, seed=0, p=0.3):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).float()


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
@pytest.mark.parametrize("spec", VARIANTS, ids=lambda s: f"{s.selection}-{s.merge}-{s.shortcut}")
@pytest.mark.parametrize("stride,cin", [(1, None), (2, None), (1, "wide")])
def test_block_shapes_and_binary_outputs(kind, spec, stride, cin):
    planes = 4
    exp = 4 if kind == "bottleneck" else 1
    cin = planes * exp if cin is None else planes * exp * 2
    block = XORResidualBlock(kind, cin, planes, stride, spec, NeuronSpec(), use_prev=True)
    S = spikes(3, 2, cin, 8, 8)
    P = spikes(3, 2, cin, 8, 8, seed=1)
    O = block(S, P if block.identity else None)
    assert O.shape == (3, 2, planes * exp, 8 // stride, 8 // stride)
    values = set(O.unique().tolist())
    if spec.merge == "add" and not block.merges_currents:
        assert values <= {0.0, 1.0, 2.0}
    else:
        assert values <= {0.0, 1.0}
    O.sum().backward()
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad and p.dim() == 4)


@pytest.mark.parametrize("merge", ["or", "xor", "add", "iand"])
def test_identity_block_starts_as_identity(merge):
    """Zero-initialised last BN scale: A never spikes, so O = merge(0, S) = S."""
    spec = BlockSpec(selection="none" if merge == "add" else "prev_input", merge=merge)
    block = XORResidualBlock("basic", 8, 8, 1, spec, NeuronSpec(), use_prev=True)
    S = spikes(4, 2, 8, 6, 6)
    assert torch.equal(block(S, spikes(4, 2, 8, 6, 6, seed=2)), S)


def test_xor_selection_feeds_the_backbone_the_previous_residual():
    """With selection prev_input the backbone sees S XOR P; with none it sees S."""
    seen = {}
    for sel in ("prev_input", "none"):
        block = XORResidualBlock("basic", 4, 4, 1, BlockSpec(selection=sel), NeuronSpec(), use_prev=True)
        block.convs[0].register_forward_pre_hook(lambda m, a, sel=sel: seen.__setitem__(sel, a[0].clone()))
        S, P = spikes(2, 1, 4, 5, 5), spikes(2, 1, 4, 5, 5, seed=3)
        block(S, P)
    assert torch.equal(seen["prev_input"], (S + P) % 2)
    assert torch.equal(seen["none"], S)


def test_block_counts_on_a_known_example():
    block = XORResidualBlock("basic", 2, 2, 1, BlockSpec(), NeuronSpec(), use_prev=True)
    with torch.no_grad():
        block.convs[1].bn.bias.fill_(10.0)  # the backbone's last neuron fires at every step
    S = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, 2, 2).expand(1, 1, 2, 2, 2).contiguous()
    P = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 2, 2).expand(1, 1, 2, 2, 2).contiguous()
    rec_model = torch.nn.Sequential(block)
    with recording(rec_model) as rec:
        O = block(S, P)
    counts = rec.blocks[""]
    assert torch.equal(O, torch.ones_like(O))
    assert counts["output_spikes"] == 8 and counts["shortcut_spikes"] == 4
    assert counts["redundant"] == 4          # every shortcut spike was already an output spike
    assert counts["merge_absorbed"] == 4     # A fired everywhere, so OR absorbed each S spike
    assert counts["xor_removed"] == 2 and counts["xor_added"] == 2


def test_or_pool_is_spike_max_pool():
    s = spikes(2, 1, 3, 4, 4)
    out = or_pool2x2(s)
    manual = s.unfold(3, 2, 2).unfold(4, 2, 2).amax(dim=(-1, -2))
    assert torch.equal(out, manual)


@pytest.mark.parametrize("arch,layers", [("xoresnet18", 18), ("xoresnet34", 34), ("xoresnet50", 50),
                                         ("xoresnet101", 101)])
def test_preset_layer_counts(arch, layers):
    model = build_network(NetworkConfig.preset(arch, width_factor=0.125))
    assert weight_layer_count(model) == layers


@pytest.mark.parametrize("size,stem", [(28, "conv"), (32, "conv"), (84, "conv_s2_orpool"), (8, "conv")])
def test_stems_and_forward(size, stem):
    cfg = NetworkConfig.preset("xoresnet18", width_factor=0.0625, input_size=size, in_channels=1 if size == 28 else 3,
                               timesteps=2)
    assert cfg.stem == stem
    model = build_network(cfg)
    x = torch.rand(2, cfg.in_channels, size, size)
    assert model(x).shape == (2, 10)
    assert model.forward_timesteps(x).shape == (2, 2, 10)


def test_baselines_are_configurations_of_the_same_block():
    sew = BLOCK_PRESETS["sew-add"]
    assert (sew.selection, sew.merge, sew.shortcut) == ("none", "add", "spike")
    spk = BLOCK_PRESETS["spiking-resnet"]
    assert (spk.merge, spk.shortcut) == ("add_current", "add_current")


def test_config_round_trip_and_validation():
    cfg = NetworkConfig.preset("xoresnet-digits", block="sew-iand", input_size=8, in_channels=1, input_levels=16)
    assert NetworkConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="selection 'none'"):
        NetworkConfig(block=BlockSpec(selection="prev_input", merge="add"))
    with pytest.raises(ConfigError, match="12-bit grid"):
        NetworkConfig(neuron=NeuronSpec(dv=0.3))
    with pytest.raises(ConfigError, match="unknown network config key"):
        NetworkConfig.from_dict({**cfg.to_dict(), "colour": "blue"})
    with pytest.raises(ConfigError, match="unknown architecture"):
        NetworkConfig.preset("resnet9000")
    with pytest.raises(ConfigError, match="input_levels"):
        NetworkConfig(input_levels=1000)
    assert dataclasses.replace(cfg, timesteps=8).timesteps == 8
