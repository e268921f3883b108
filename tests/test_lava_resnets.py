"""The ResNet presets on Lava: XOResNet-18 parity on 2 samples; XOResNet-34/50/101 lower to Lava processes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest

from calibration.integer_graph import save_integer_graph
from calibration.quantize import calibrate_nir
from conftest import REPO, firing_model, random_pixels
from deploy.lava_graph import describe_lava_network
from deploy.lava_run import run_lava
from xoresnet.nir.export import export_nir
from deploy.parity import check_parity
from calibration.reference import ReferenceSimulator
from calibration.schedule import schedule
from xoresnet.config import NetworkConfig

pytestmark = pytest.mark.lava


def resnet_graph(arch: str, width: float, samples: int = 4):
    cfg = NetworkConfig.preset(arch, width_factor=width, input_size=32, in_channels=3, num_classes=10, timesteps=4)
    model = firing_model(cfg, seed=0)
    pixels = random_pixels(samples, cfg, 0)
    return schedule(calibrate_nir(export_nir(model), pixels, candidates=1).graph), pixels


def test_xoresnet18_with_128_channels_parity():
    """XOResNet-18 at width 0.25 (convolutions of 128 channels, which Intel's Conv model cannot run
    on numpy 2) passes parity on one image, with our process models, and says what it covered."""
    graph, pixels = resnet_graph("xoresnet18", 0.25)
    assert max(s.weight.shape[0] for s in graph.synapses if s.kind == "conv") == 128
    reference = ReferenceSimulator(graph).run_stream(pixels[:1].unsqueeze(0))
    lava = run_lava(graph, pixels[:1].numpy(), timeout=600)
    report = check_parity(graph, reference, lava)
    assert report.passed, report.summary()
    neurons = sum(math.prod(pop.shape) for pop in graph.populations.values())
    assert report.samples == 1 and report.populations == len(graph.populations)
    assert report.neuron_steps_compared == neurons * report.steps  # every neuron of every population, every step
    c = report.coverage
    assert c["spikes_compared"] > 10_000 and c["populations_spiked"] >= c["populations"] - 2  # not silent
    assert c["spikes_compared"] == sum(c["spikes_by_population"].values()) <= \
        sum(int(s.sum()) for s in reference.spikes.values())  # the image's window: a part of the stream
    assert "coverage:" in report.summary()
    assert lava.process_models["Conv"] == {"model": "deploy.lava_models.conv.PyConvModelExact", "origin": "xoresnet",
                                           "processes": sum(s.kind == "conv" for s in graph.synapses)}
    print(f"xoresnet18 w0.25: {lava.steps} steps, Lava {lava.seconds:.1f} s, phases {lava.phases}")


@pytest.mark.parametrize("arch", ["xoresnet34", "xoresnet50", "xoresnet101"])
def test_deep_resnets_lower_to_lava_processes(arch, tmp_path):
    """Instantiate (not run) every Lava process and connection of the deep presets, in a child process."""
    graph, _ = resnet_graph(arch, 0.0625, samples=2)
    path = tmp_path / "g.h5"
    save_integer_graph(graph, path)
    expected = describe_lava_network(graph)
    code = textwrap.dedent(f"""
        import json, numpy as np
        from calibration.integer_graph import load_integer_graph
        from deploy.lava_graph import build_lava_network
        g = load_integer_graph({str(path)!r})
        net = build_lava_network(g, np.zeros((1,) + tuple(g.input_shape), dtype=np.int64))
        print(json.dumps({{"processes": len(net.processes()), "neurons": len(net.neurons), "synapses": len(net.synapses)}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    built = json.loads(r.stdout.strip().splitlines()[-1])
    assert built["neurons"] == len(graph.populations)
    assert built["synapses"] == len(graph.synapses)
    assert built["processes"] == expected["counts"]["processes"]
