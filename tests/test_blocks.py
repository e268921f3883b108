"""Every block variant's shapes and semantics, the network presets and their layer counts."""

import dataclasses
import itertools

import pytest
import torch

from xoresnet.blocks import XORResidualBlock, or_pool2x2
from xoresnet.config import BLOCK_PRESETS, MERGES, SELECTIONS, SHORTCUTS, BlockSpec, NetworkConfig
from xoresnet.errors import ConfigError
from xoresnet.network import build_network, weight_layer_count
from xoresnet.neuron import CubaLIF, Current, NeuronSpec
from xoresnet.stats import recording

VARIANTS = [BlockSpec(sel, merge, sc) for sel, merge, sc in itertools.product(SELECTIONS, MERGES, SHORTCUTS)
            if not (merge == "add" and sel != "none")]
# 'mid' is undefined in a Bottleneck (its first layer is 4x narrower than S): refused, tested below.
BLOCK_CASES = [(kind, spec) for kind in ("basic", "bottleneck") for spec in VARIANTS
               if not (kind == "bottleneck" and spec.selection == "mid")]


def spikes(*shape, seed=0, p=0.3):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).float()


@pytest.mark.parametrize("kind,spec", BLOCK_CASES, ids=[f"{k}-{s.selection}-{s.merge}-{s.shortcut}"
                                                         for k, s in BLOCK_CASES])
@pytest.mark.parametrize("stride,cin", [(1, None), (2, None), (1, "wide")])
def test_block_shapes_and_binary_outputs(kind, spec, stride, cin):
    planes = 4
    exp = 4 if kind == "bottleneck" else 1
    cin = planes * exp if cin is None else planes * exp * 2
    block = XORResidualBlock(kind, cin, planes, stride, spec, NeuronSpec(), use_prev=True)
    with torch.no_grad():  # undo the identity init (last BN scale 0), which blocks the backbone's gradients
        block.convs[-1].bn.weight.fill_(1.0)
    S = spikes(3, 2, cin, 8, 8)
    P = spikes(3, 2, cin, 8, 8, seed=1)
    O = block(S, P if block.identity else None)
    assert O.shape == (3, 2, planes * exp, 8 // stride, 8 // stride)
    values = set(O.unique().tolist())
    if spec.merge == "add" and not block.merges_currents:
        assert values <= {0.0, 1.0, 2.0}
    else:
        assert values <= {0.0, 1.0}
    (O * torch.randn(O.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
    # every trainable tensor (convs, batch norms, the spike shortcut's) lies on a path to O
    no_grad = [n for n, p in block.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not no_grad


def test_mid_selection_xors_the_first_backbone_layer_with_the_block_input():
    """Selection 'mid' in a BasicBlock: the second conv sees SN(BN(conv1(S))) XOR S.

    The first conv is set to copy each channel from its right-hand neighbour pixel with weight 2
    (BN in eval mode: scale ~1, shift 0): with du = 1 and vth = 1 its neuron fires exactly where
    the shifted S has a spike and is silent elsewhere, so the expected input is known by hand.
    """
    block = XORResidualBlock("basic", 3, 3, 1, BlockSpec(selection="mid"), NeuronSpec(), use_prev=True).eval()
    with torch.no_grad():
        block.convs[0].conv.weight.zero_()
        for c in range(3):
            block.convs[0].conv.weight[c, c, 1, 2] = 2.0
    seen = {}
    block.convs[1].register_forward_pre_hook(lambda m, a: seen.__setitem__("input", a[0].clone()))
    S = spikes(4, 2, 3, 5, 5, seed=4, p=0.5)
    block(S)
    shifted = torch.zeros_like(S)
    shifted[..., :-1] = S[..., 1:]  # the first layer's spikes: S moved one pixel left, zero padded
    expected = (shifted + S) % 2
    assert torch.equal(seen["input"], expected)
    assert not torch.equal(expected, shifted) and not torch.equal(expected, torch.maximum(shifted, S))


def test_mid_selection_is_refused_for_bottleneck_blocks():
    with pytest.raises(ConfigError, match="'mid' is not defined for Bottleneck blocks \\(architecture 'xoresnet50'\\)"):
        NetworkConfig.preset("xoresnet50", block=BlockSpec(selection="mid"))
    with pytest.raises(ConfigError, match="Bottleneck"):
        XORResidualBlock("bottleneck", 16, 4, 1, BlockSpec(selection="mid"), NeuronSpec(), use_prev=True)
    assert NetworkConfig.preset("xoresnet18", block=BlockSpec(selection="mid")).block.selection == "mid"


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
    """SEW-ResNet (ADD): O = A + S on identity blocks and A + SN(BN(conv1x1(S))) otherwise, the
    backbone fed S itself; Spiking ResNet: O = SN(U_A + S), S entering the last neuron as a current."""
    sew = BLOCK_PRESETS["sew-add"]
    assert (sew.selection, sew.merge, sew.shortcut) == ("none", "add", "spike")
    S, P = spikes(3, 2, 4, 5, 5, p=0.5), spikes(3, 2, 4, 5, 5, seed=1, p=0.5)
    seen = {}
    block = XORResidualBlock("basic", 4, 4, 1, sew, NeuronSpec(), use_prev=True).eval()
    block.convs[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("backbone", a[0].clone()))
    with torch.no_grad():
        block.convs[-1].bn.bias.fill_(10.0)  # A fires at every step
    assert torch.equal(block(S, P), S + 1)  # spike counts 1 and 2: ADD, not OR
    assert torch.equal(seen["backbone"], S)  # no XOR selection
    down = XORResidualBlock("basic", 4, 8, 2, sew, NeuronSpec(), use_prev=False).eval()
    with torch.no_grad():
        down.convs[-1].bn.bias.fill_(10.0)
        down.shortcut.bn.bias.fill_(0.5)
    O = down(S)
    shortcut_spikes = down.shortcut_neuron(down.shortcut(S))  # SN(BN(conv1x1_stride(S))), binary
    assert shortcut_spikes.any() and not shortcut_spikes.all()
    assert torch.equal(O, 1 + shortcut_spikes)

    spk = BLOCK_PRESETS["spiking-resnet"]
    assert (spk.selection, spk.merge, spk.shortcut) == ("none", "add_current", "add_current")
    block = XORResidualBlock("basic", 1, 1, 1, spk, NeuronSpec(), use_prev=True).eval()
    # Identity init: U_A = 0, so O = SN(S) with du = 1, dv = 0.5, vth = 1 (strict, hard reset):
    # a lone spike (v = 1) does not fire, a second one right after it does (v = 0.5 + 1).
    S = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 1]], dtype=torch.float32).T.reshape(4, 1, 1, 1, 2)
    expected = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.float32).T.reshape(4, 1, 1, 1, 2)
    assert torch.equal(block(S, S), expected)
    with torch.no_grad():
        block.convs[-1].bn.weight.fill_(1.0)
    h = block.neurons[0](block.convs[0](S))
    assert torch.equal(block(S), CubaLIF(NeuronSpec())(block.convs[1](h) + Current(S)))


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
