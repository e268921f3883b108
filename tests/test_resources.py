"""The Loihi 2 resource model against Intel's compiler logs, the presets' packing against the lower
bound, and the design rules checked before calibration (``docs/resources.md``)."""

from __future__ import annotations

import functools
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.architecture import architecture_graph
from calibration.float_graph import nir_to_float_graph
from xoresnet.nir.export import export_nir
from calibration.schedule import schedule
from hw_targets import get_target
from hw_targets.design_rules import check_design_rules
from hw_targets.packing import ConvInput, LayerSpec, PointInput, pack, sparse_synapse_bits, tile_layer
from xoresnet.config import NetworkConfig
from xoresnet.network import build_network

REPO = Path(__file__).resolve().parents[1]

# YOLO-KP on Kapoho Point, lava-dl tutorials/lava/lib/dl/netx/yolo_kp/run.ipynb: the network table
# (output W, H, C, kernel; c_in from the layer before) and the compiler's per-core table (tile,
# cores, 'Synapses' = SynMem % of 12,000 units). 8-bit weights (slayer quantize_8bit).
YOLO_KP = [  # (W, H, C, k, c_in, Intel's tile (x, y, c), cores, SynMem %)
    (224, 224, 16, 3, 3, (8, 28, 16), 224, 0.34),
    (112, 112, 32, 3, 16, (8, 14, 32), 112, 3.60),
    (56, 56, 64, 3, 32, (4, 14, 64), 56, 10.80),
    (28, 28, 128, 3, 64, (4, 7, 128), 28, 39.60),
    (28, 28, 256, 3, 128, (4, 7, 128), 56, 79.20),
    (14, 14, 256, 3, 256, (8, 7, 64), 16, 72.00),
    (14, 14, 512, 3, 256, (8, 7, 64), 32, 86.40),
    (14, 14, 256, 1, 512, (2, 7, 256), 14, 67.20),
    (14, 14, 512, 3, 256, (8, 7, 64), 32, 86.40),
    (14, 14, 48, 1, 512, (4, 14, 48), 4, 19.20),
]
#: The refitted cost model (6 bits per 8-bit weight in rows of fewer than 64 channels on a core, 4.125
#: at 64 or more, no row header) lands every layer within 10 % (docs/resources.md): layers 3, 7, 9
#: log 4.5 bits per weight (-8.3 %), layer 6 3.75 (+10.0 %), layer 8 3.94 (+4.8 %).
YOLO_SYNMEM_WITHIN = 0.10

# PilotNet SNN, lava-dl tutorials/lava/lib/dl/netx/pilotnet_snn/benchmark.ipynb: not used to fit
# the model, a check of the tiling rule on other shapes (SynMem in units, logged directly).
PILOTNET = [  # (W, H, C, k, c_in, Intel's tile, cores, SynMem units)
    (99, 32, 24, 3, 3, (4, 32, 24), 25, 81),
    (49, 15, 36, 3, 24, (4, 15, 36), 13, 864),
    (24, 7, 48, 3, 36, (8, 7, 48), 3, 1620),
    (22, 4, 64, 3, 48, (8, 4, 64), 3, 2160),
    (20, 2, 64, 3, 64, (16, 2, 64), 2, 2880),
]


def conv_layer(W, H, C, k, c_in) -> LayerSpec:
    return LayerSpec("layer", "neuron", (C, H, W), [ConvInput("conv", c_in, 1, C, k * k, 8)])


@pytest.mark.parametrize("i", range(1, 11))
def test_yolo_kp_core_counts_and_synmem(i):
    W, H, C, k, c_in, tile, cores, pct = YOLO_KP[i - 1]
    t = tile_layer(conv_layer(W, H, C, k, c_in))
    assert t.cores == cores  # every layer exactly
    # Intel's tile too, but for layers 6, 7, 9: 4x14x64 where Intel has 8x7x64, the same cores and SynMem
    assert t.tile_shape == tile or (i in (6, 7, 9) and t.tile_shape == (4, 14, 64))
    synmem, logged = max(x.synmem_units for x in t.tiles), pct / 100 * 12000
    assert abs(synmem / logged - 1) <= YOLO_SYNMEM_WITHIN + 1e-9, (synmem, logged)


def test_yolo_kp_total_and_exact_layers():
    tilings = [tile_layer(conv_layer(*row[:5])) for row in YOLO_KP]
    assert sum(t.cores for t in tilings) == 574  # the log's total
    exact = [i for i, (t, row) in enumerate(zip(tilings, YOLO_KP), 1)
             if round(max(x.synmem_units for x in t.tiles)) == round(row[7] * 120)]
    assert exact == [2, 4, 5, 10]  # a narrow (2, 10) and a wide (4, 5) rate each read off two layers, to the unit


@pytest.mark.parametrize("row", PILOTNET, ids=lambda r: f"{r[0]}x{r[1]}x{r[2]}")
def test_pilotnet_tiles_out_of_sample(row):
    W, H, C, k, c_in, tile, cores, units = row
    t = tile_layer(conv_layer(W, H, C, k, c_in))
    assert t.cores == cores and t.tile_shape == tile
    # its weights log 5.0-8.0 bits per 8-bit weight where YOLO-KP's log 3.75-6.0: the model
    # underestimates here, by 10.0-25.0 %
    assert -0.25 - 1e-9 <= max(x.synmem_units for x in t.tiles) / units - 1 <= -0.10 + 1e-9


def test_dense_layers_of_the_oxford_log():
    """netx/oxford/run.ipynb: 200 inputs -> 85 neurons per core logs 5,400 units, 256 -> 100 logs 8,064
    (8-bit weights + 12 index bits per synapse, rows rounded to 64-bit units)."""
    bits = sparse_synapse_bits(8, False)
    assert PointInput("d", np.ones((85, 200), bool), bits, False).range_cost(0, 85) == (5400.0, 200)
    units, axons = PointInput("d", np.ones((100, 256), bool), bits, False).range_cost(0, 100)
    assert axons == 256 and abs(units / 8064 - 1) < 0.02
    # one synapse per row still takes a whole unit (PilotNet's 10-input, 1-neuron layer logs 10 units)
    assert PointInput("d", np.ones((1, 10), bool), bits, False).range_cost(0, 1) == (10.0, 10)


# ---------------------------------------------------------------------- presets at width 1.0

PRESETS = ("xoresnet18", "xoresnet34", "xoresnet50", "xoresnet101")
SIZES = (28, 32, 84)
#: Cores / lower bound measured for each preset (bench/packing.py, docs/resources.md): every
#: population cut into the channel parts that need the fewest cores under lava-loihi's tile rule.
#: What is left above 1.3x is the rule itself: power-of-two tile widths at most W (7-, 3- and 21-wide
#: layers take two or more x-tiles, each storing the layer's kernel again) and SynMem-bound 512-channel
#: layers whose cores hold fewer than 64 channels (6 bits per weight instead of the bound's 4.125).
RATIO_RECORDED = {
    ("xoresnet18", 28): 1.29, ("xoresnet18", 32): 1.26, ("xoresnet18", 84): 1.91,
    ("xoresnet34", 28): 1.35, ("xoresnet34", 32): 1.27, ("xoresnet34", 84): 1.99,
    ("xoresnet50", 28): 1.19, ("xoresnet50", 32): 1.19, ("xoresnet50", 84): 1.48,
    ("xoresnet101", 28): 1.22, ("xoresnet101", 32): 1.19, ("xoresnet101", 84): 1.44,
}
#: The issue's target: packed cores within 1.3x of the lower bound.
RATIO_TARGET = 1.3


@functools.lru_cache(maxsize=1)
def _architecture(arch: str, size: int):
    """The widest architecture graph of a preset at width 1.0 (weights as an untrained network's,
    batch-norm scales 1 so that no kernel is all zero), scheduled."""
    model = build_network(NetworkConfig.preset(arch, input_size=size)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
    return schedule(architecture_graph(nir_to_float_graph(export_nir(model))))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("arch", PRESETS)
def test_preset_packing_against_its_lower_bound(arch, size):
    graph = _architecture(arch, size)
    p = pack(graph, get_target("loihi2").systems)
    # the bound is a bound: every layer takes at least max(neurons / 4096, SynMem / 12000) cores, and
    # at least the tile rule's minimum for it alone, which is itself at least the bound
    for name, ts in p.tilings.items():
        packed = sum(t.cores for t in ts)
        assert packed >= p.rule_minimum[name] >= math.ceil(p.bounds[name] - 1e-9), name
    assert 1.0 <= p.bound_ratio and abs(p.bound_ratio - RATIO_RECORDED[(arch, size)]) <= 0.02, p.bound_ratio
    # the packing loses at most 2 % to keeping the lowering exact (cut rules), and misses 1.3x only where
    # lava-loihi's tile rule itself allows no packing within 1.3x of the bound
    assert p.rule_ratio <= 1.02, p.rule_ratio
    assert p.bound_ratio <= RATIO_TARGET or p.rule_minimum_cores > RATIO_TARGET * p.lower_bound
    if RATIO_RECORDED[(arch, size)] <= RATIO_TARGET:
        assert p.bound_ratio <= RATIO_TARGET
    assert p.chips == math.ceil(p.num_cores / 120)
    splits = {s.layer: s for s in p.splits}
    if arch in ("xoresnet50", "xoresnet101"):  # the readout over 2048 x H x W inputs (32768 at 28/32 px)
        s = splits.pop("readout")
        inputs = [r for part in s.parts for r in part.inputs]
        assert inputs[0].start == 0 and inputs[-1].stop == 2048  # source channels (of 2048 x H x W)
        assert all(a.stop == b.start for a, b in zip(inputs, inputs[1:]))  # contiguous, exact cover
        assert s.payload_bits <= 24 and len(s.parts) == (2 if size == 84 else 3)
    assert not splits  # no other layer of any preset needs its fan-in split
    if (arch, size) == ("xoresnet18", 32):
        assert p.smallest_system == "Kapoho Point"


@pytest.mark.xfail(strict=True, reason="not met for 5 of the 12 presets (cores / bound: XOResNet-18 1.91 and -34 "
                                       "1.99 at 84 px, XOResNet-34 1.35 at 28 px, XOResNet-50 1.48 and -101 1.44 at "
                                       "84 px): lava-loihi's logged tile rule on 3-, 6-, 7-, 11- and 21-wide maps "
                                       "allows no packing within 1.3x there (its per-layer minimum is 1.34-1.96x the "
                                       "bound), docs/resources.md; the parametrized test above checks both")
def test_preset_packing_within_1_3x_of_the_bound():
    assert max(RATIO_RECORDED.values()) <= RATIO_TARGET


# ---------------------------------------------------------------------- check first, calibrate after

def test_architecture_graph_extremes_bound_every_calibration():
    graph = _architecture("xoresnet18", 28)
    relays = {p.name for p in graph.populations.values() if p.kind == "relay"}
    assert {int(np.abs(s.weight).max()) for s in graph.synapses if s.dst not in relays} == {254, 255}
    model = build_network(NetworkConfig.preset("xoresnet-digits", input_size=8, in_channels=1, input_levels=16))
    fg = nir_to_float_graph(export_nir(model.eval()))
    wide, narrow = architecture_graph(fg, "widest"), architecture_graph(fg, "narrowest")
    for s, w in zip(fg.synapses, wide.synapses):
        assert np.array_equal(np.asarray(s.weight) != 0, w.weight != 0)
    assert {int(np.abs(s.weight).max(initial=0)) for s in narrow.synapses} <= {0, 1, 2}
    wide.validate()
    narrow.validate()


def test_export_refuses_a_network_that_cannot_fit_before_calibrating(tmp_path):
    """XOResNet-101 (width 1/16, 8x8 digits) on one chip (--system oheo-gulch): its 159 layers take a
    core each, more than the chip's 120 at any weight precision, so the export stops with exit 4
    and one line naming the limit and its source, before calibration ([3/8]) starts. (XOResNet-50 at
    width 1.0 is refused the same way: docs/resources.md.)"""
    from xoresnet.checkpoint import save_checkpoint

    cfg = NetworkConfig.preset("xoresnet101", input_size=8, in_channels=1, input_levels=16, width_factor=0.0625)
    ckpt = tmp_path / "r101.pt"
    save_checkpoint(ckpt, build_network(cfg), {"dataset": "digits"})
    exe = Path(sys.executable).parent / "xoresnet-export"
    started = time.perf_counter()
    r = subprocess.run([str(exe), str(ckpt), "--system", "oheo-gulch", "--out", str(tmp_path / "out"),
                        "--no-progress"], capture_output=True, text=True, timeout=300, cwd=REPO)
    seconds = time.perf_counter() - started
    err = r.stderr.strip().splitlines()
    assert r.returncode == 4, r.stderr
    assert "[3/8]" not in r.stderr and "Traceback" not in r.stderr
    line = err[-1]
    assert line.startswith("xoresnet-export: error:") and "before calibration" in line
    assert "network: needs 159 cores" in line and "cores_of_oheo-gulch" in line and "NUM_VIRTUAL_CORES_L3" in line
    assert not (tmp_path / "out").exists()
    print(f"refused in {seconds:.1f} s")


def test_design_rules_after_calibration_read_the_real_weights():
    """The same architecture at 1-bit weights needs fewer SynMem units than at 8 bits (the check
    after calibration is not the architecture check repeated)."""
    model = build_network(NetworkConfig.preset("xoresnet-digits", input_size=8, in_channels=1, input_levels=16))
    fg = nir_to_float_graph(export_nir(model.eval()))
    wide = check_design_rules(schedule(architecture_graph(fg, "widest")))
    narrow = check_design_rules(schedule(architecture_graph(fg, "narrowest")))
    assert wide.passed and narrow.passed
    conv_layers = [l for l in wide.layers if l.tile]
    assert all(narrow.layer(l.name).synmem_units_max < l.synmem_units_max for l in conv_layers
               if any(s.dst == l.name and s.kind == "conv" and s.weight_bits == 8 for s in wide.synapses))
