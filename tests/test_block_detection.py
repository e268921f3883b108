"""Block detection (:func:`hw_targets.stats.find_blocks`) on every block variant: which populations carry a
block's input, its XOR-selected previous input, its backbone, its shortcut and its output.

The network is :func:`conftest.small_config` (stages of 2 and 1 blocks): ``layer1.0`` and ``layer1.1`` have
identity shortcuts, ``layer2.0`` a non-identity one (stride 2, 4 -> 8 channels). The expected signals follow the
block equations (``xoresnet-block.md``): an identity shortcut merges spikes in a gate (``{block}.merge``), a
non-identity ``add_current`` shortcut adds currents before the block's last neuron, SEW ADD's output is the sum
of both branches' spikes, and a ``spike`` shortcut fires its own neuron (``{block}.shortcut_neuron``).
"""

from __future__ import annotations

import pytest

from calibration.quantize import calibrate_nir
from calibration.schedule import schedule
from conftest import firing_model, random_pixels, small_config
from hw_targets.stats import find_blocks
from xoresnet.config import BLOCK_PRESETS, BlockSpec
from xoresnet.nir.export import export_nir

STEM = "stem.sn"
N = "layer{}.neurons.1"
M = "layer{}.merge"
SC = "layer2.0.shortcut_neuron"

#: variant -> per block (merge, XOR selection, backbone, shortcut, output); None: no such signal.
EXPECTED = {
    "xor-or": [("or", False, [N.format("1.0")], [STEM], [M.format("1.0")]),
               ("or", True, [N.format("1.1")], [M.format("1.0")], [M.format("1.1")]),
               ("add_current", False, None, None, [N.format("2.0")])],
    "xor-xor": [("xor", False, [N.format("1.0")], [STEM], [M.format("1.0")]),
                ("xor", True, [N.format("1.1")], [M.format("1.0")], [M.format("1.1")]),
                ("add_current", False, None, None, [N.format("2.0")])],
    "or-only": [("or", False, [N.format("1.0")], [STEM], [M.format("1.0")]),
                ("or", False, [N.format("1.1")], [M.format("1.0")], [M.format("1.1")]),
                ("add_current", False, None, None, [N.format("2.0")])],
    "sew-add": [("add", False, [N.format("1.0")], [STEM], [N.format("1.0"), STEM]),
                ("add", False, [N.format("1.1")], [N.format("1.0"), STEM], [N.format("1.1"), N.format("1.0"), STEM]),
                ("add", False, [N.format("2.0")], [SC], [N.format("2.0"), SC])],
    "sew-iand": [("iand", False, [N.format("1.0")], [STEM], [M.format("1.0")]),
                 ("iand", False, [N.format("1.1")], [M.format("1.0")], [M.format("1.1")]),
                 ("iand", False, [N.format("2.0")], [SC], [M.format("2.0")])],
    "spiking-resnet": [("add_current", False, None, [STEM], [N.format("1.0")]),
                       ("add_current", False, None, [N.format("1.0")], [N.format("1.1")]),
                       ("add_current", False, None, None, [N.format("2.0")])],
    "xor-or-spike-shortcut": [("or", False, [N.format("1.0")], [STEM], [M.format("1.0")]),
                              ("or", True, [N.format("1.1")], [M.format("1.0")], [M.format("1.1")]),
                              ("or", False, [N.format("2.0")], [SC], [M.format("2.0")])],
}
SPECS = {**BLOCK_PRESETS, "xor-or-spike-shortcut": BlockSpec(shortcut="spike")}


def test_every_preset_has_expected_signals():
    assert set(BLOCK_PRESETS) <= set(EXPECTED)


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_find_blocks_names_each_signal(variant):
    cfg = small_config(block=SPECS[variant])
    graph = schedule(calibrate_nir(export_nir(firing_model(cfg)), random_pixels(4, cfg, 0), candidates=1).graph)
    blocks = find_blocks(graph)
    assert [b.name for b in blocks] == ["layer1.0", "layer1.1", "layer2.0"]
    got = [(b.merge, b.prev_input is not None, b.backbone, b.shortcut, b.output) for b in blocks]
    assert got == EXPECTED[variant]
    # each block's input is the output of the one before it (the stem's for the first)
    assert [b.block_input for b in blocks] == [[STEM], blocks[0].output, blocks[1].output]
    for b in blocks:  # the XOR selection reads the input of the block before
        if b.prev_input is not None:
            assert b.prev_input == blocks[blocks.index(b) - 1].block_input
